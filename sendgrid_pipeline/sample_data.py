"""Synthetic unified customer profiles, so the pipeline can be run and tested without a warehouse.

The profiles look like the output of a customer data platform: names from several locales
(accents, non-Latin scripts), per-country addresses with leading-zero postal codes, and the
email noise a real export has to survive (mixed case, padding, case-only duplicates, invalid
addresses, nulls, first names longer than SendGrid accepts).

Everything is drawn with numpy/polars array operations (no per-row Python), so a million rows
take a few seconds, and a seed always gives the same frame.

    python -m sendgrid_pipeline.sample_data --rows 3000 --seed 42 --out data/profiles/profiles.csv
"""

from __future__ import annotations

import argparse
import datetime as dt
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "profiles" / "profiles.csv"
SAMPLE_ROWS = 3000
SAMPLE_SEED = 42

PROFILE_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "email": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "country_code": pl.String(),
    "country": pl.String(),
    "state_province_region": pl.String(),
    "city": pl.String(),
    "postal_code": pl.String(),
    "loyalty_tier": pl.String(),
    "lifetime_value": pl.Float64(),
    "orders_count": pl.Int64(),
    "last_purchase_date": pl.Date(),
    "email_opt_in": pl.Boolean(),
    "created_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
}

# Text columns a CSV reader must not type-infer (postal codes lose leading zeros otherwise).
CSV_SCHEMA_OVERRIDES: dict[str, pl.DataType] = {
    column: pl.String()
    for column in (
        "customer_id",
        "email",
        "first_name",
        "last_name",
        "country_code",
        "country",
        "state_province_region",
        "city",
        "postal_code",
        "loyalty_tier",
    )
}

# Noise rates (share of all rows).
EMAIL_NULL_SHARE = 0.01
EMAIL_INVALID_SHARE = 0.015
EMAIL_SHARED_SHARE = 0.02  # profiles whose address differs from another's only by case/padding
EMAIL_MIXED_CASE_SHARE = 0.10
EMAIL_PADDED_SHARE = 0.05
NAME_NULL_SHARE = 0.03
ROWS_PER_LONG_FIRST_NAME = 2000
OPT_IN_SHARE = 0.80

CREATED_START = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
PURCHASE_START = dt.date(2024, 1, 1)
DATA_END = dt.date(2026, 11, 15)

_US_PER_DAY = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)

# ----------------------------------------------------------------------------------------------
# Reference data. Names are "Display" or "Display=romanization" (for scripts that do not fold to
# ASCII); the email local part uses the ASCII-folded form.

_LOCALE_NAMES: dict[str, tuple[str, str]] = {
    "fr": (
        "Jean, Marie, Pierre, Chloé, François, Hélène, Léa, Amélie, Camille, Théo, Louis, Inès, "
        "Océane, Jérôme, Anaïs, Benoît, Cécile, Gaëlle, Noël, Zoë, Élodie, Clément, Manon, "
        "Nicolas, Sophie, Thomas, Julie, Antoine, Margaux, Jean-Baptiste, Maëlys, Loïc",
        "Martin, Bernard, Dubois, Thomas, Robert, Richard, Petit, Durand, Leroy, Moreau, Simon, "
        "Laurent, Lefèvre, Michel, Garcia, David, Bertrand, Roux, Vincent, Fournier, Morel, "
        "Girard, André, Mercier, Dupont, Lambert, Bonnet, François, Fontaine, Chevalier, "
        "Rousseau, Gauthier, Perrin, Crépin, Bénard, Lemaître",
    ),
    "de": (
        "Jürgen, Lukas, Leon, Maximilian, Felix, Jonas, Paul, Anna, Lena, Hannah, Sophie, Jörg, "
        "Björn, Günter, Uwe, Sabine, Ursula, Katharina, Dörte, Käthe, Matthias, Stefan, "
        "Andreas, Claudia, Birgit, Sören, Tobias, Nele, Emma, Mia, Jürgen-Peter",
        "Müller, Schmidt, Schneider, Fischer, Weber, Meyer, Wagner, Becker, Schulz, Hoffmann, "
        "Schäfer, Koch, Bauer, Richter, Klein, Wolf, Schröder, Neumann, Schwarz, Zimmermann, "
        "Braun, Krüger, Hartmann, Lange, Schmitt, Werner, Krause, Köhler, Weiß, Groß, Vogel, "
        "Jäger, Böhm, von Bülow",
    ),
    "es": (
        "José, María, Carmen, Lucía, Martín, Sofía, Álvaro, Javier, Alejandro, Ana, Pablo, "
        "Isabel, Raúl, Inés, Íñigo, Nuria, Jesús, Mónica, Sergio, Elena, David, Laura, Marta, "
        "Andrés, Begoña, Ángel, María José",
        "García, Rodríguez, González, Fernández, López, Martínez, Sánchez, Pérez, Gómez, Martín, "
        "Jiménez, Ruiz, Hernández, Díaz, Moreno, Muñoz, Álvarez, Romero, Alonso, Gutiérrez, "
        "Navarro, Torres, Domínguez, Vázquez, Ramos, Gil, Ramírez, Serrano, Blanco, Molina, "
        "Castillo, Ortega, Núñez, de la Fuente, Iglesias",
    ),
    "it": (
        "Giuseppe, Giovanni, Francesco, Luca, Marco, Alessandro, Andrea, Matteo, Lorenzo, "
        "Giulia, Francesca, Chiara, Sara, Martina, Federica, Niccolò, Elena, Alessia, Valentina, "
        "Gabriele, Davide, Simone, Paola, Lucrezia",
        "Rossi, Russo, Ferrari, Esposito, Bianchi, Romano, Colombo, Ricci, Marino, Greco, "
        "Bruno, Gallo, Conti, De Luca, Mancini, Costa, Giordano, Rizzo, Lombardi, Moretti, "
        "Barbieri, Fontana, Santoro, Mariani, Rinaldi, Caruso, D'Angelo, Ferrara, Galli, "
        "Martinelli, Leone, Longo, Gentile, Fabbri, Cattaneo",
    ),
    "pl": (
        "Łukasz, Jakub, Kacper, Piotr, Krzysztof, Tomasz, Paweł, Michał, Marcin, Grzegorz, "
        "Wojciech, Anna, Katarzyna, Małgorzata, Agnieszka, Magdalena, Joanna, Zofia, Agata, "
        "Monika, Barbara, Ewa, Żaneta, Bożena, Jędrzej, Łucja",
        "Nowak, Kowalski, Kowalska, Wiśniewski, Wiśniewska, Wójcik, Kowalczyk, Kamiński, "
        "Lewandowski, Zieliński, Szymański, Woźniak, Dąbrowski, Kozłowski, Jankowski, Mazur, "
        "Kwiatkowski, Krawczyk, Piotrowski, Grabowski, Pawłowski, Michalski, Nowicki, Adamczyk, "
        "Dudek, Zając, Wieczorek, Jabłoński, Król, Majewski, Olszewski, Wróbel, Stępień, Górski",
    ),
    "pt": (
        "João, José, António, Francisco, Tiago, Gonçalo, Rodrigo, Duarte, Inês, Beatriz, "
        "Mariana, Leonor, Matilde, Conceição, Lúcia, Sebastião, Luís, Maria, Ana, Catarina, Rui",
        "Silva, Santos, Ferreira, Pereira, Oliveira, Costa, Rodrigues, Martins, Jesus, Sousa, "
        "Fernandes, Gonçalves, Gomes, Lopes, Marques, Alves, Almeida, Ribeiro, Pinto, Carvalho, "
        "Teixeira, Moreira, Correia, Mendes, Nunes, Soares, Vieira, Monteiro, Cardoso, Rocha, "
        "Magalhães, Guimarães, Simões, Brandão, Falcão",
    ),
    "br": (
        "Miguel, Arthur, Heitor, Théo, Davi, Gabriel, Bernardo, Samuel, Helena, Alice, Laura, "
        "Valentina, Heloísa, Lívia, Cecília, Maitê, Luíza, Thiago, João Pedro, Ana Clara, "
        "Vitória, Yasmin, Kauã, Enzo",
        "Silva, Santos, Oliveira, Souza, Rodrigues, Ferreira, Alves, Pereira, Lima, Gomes, "
        "Costa, Ribeiro, Martins, Carvalho, Araújo, Barbosa, Cavalcanti, Nascimento, Batista, "
        "Freitas, Dias, Castro, Campos, Magalhães",
    ),
    "ga": (
        "Seán, Siobhán, Niamh, Aoife, Ciarán, Oisín, Saoirse, Caoimhe, Pádraig, Róisín, Conor, "
        "Liam, Cian, Darragh, Aisling, Eimear, Fionnuala, Éanna, Orla, Sinéad, Dónal, Cathal",
        "Murphy, Kelly, O'Sullivan, Walsh, O'Brien, Byrne, Ryan, O'Connor, O'Neill, O'Reilly, "
        "Doyle, McCarthy, Gallagher, Ó Briain, Ó Súilleabháin, Mac Giolla Phádraig, Ní Bhriain, "
        "Kennedy, Lynch, Quinn, McLoughlin, Ó Ceallaigh, Fitzgerald, Brennan",
    ),
    "en": (
        "James, Oliver, Jack, Harry, George, Noah, Charlie, William, Olivia, Amelia, Isla, Ava, "
        "Emily, Grace, Chloe, Emma, Michael, Robert, John, Jennifer, Linda, Elizabeth, Sarah, "
        "Jessica, Daniel, Matthew, Ashley, Zoë, Renée, Chloë, Mary-Kate",
        "Smith, Jones, Williams, Taylor, Brown, Davies, Evans, Wilson, Johnson, Roberts, "
        "Robinson, Wright, Thompson, Walker, White, Edwards, Hughes, Green, Hall, Wood, Harris, "
        "Lewis, Jackson, Clarke, Miller, Davis, Anderson, Moore, Lee, Clark, McDonald, Campbell, "
        "Stewart, Ferguson-Smith, St. John",
    ),
    "nordic": (
        "Søren, Bjørn, Åsa, Astrid, Freja, Ingrid, Sigrid, Lars, Magnus, Mikkel, Jens, Kirsten, "
        "Mette, Øystein, Torbjörn, Linnéa, Henrik",
        "Jensen, Nielsen, Hansen, Pedersen, Andersen, Christensen, Larsen, Sørensen, Rasmussen, "
        "Mikkelsen, Ødegaard, Johansson, Andersson, Lindström, Åberg, Bergström, Halvorsen",
    ),
    "vi": (
        "Minh, Anh, Huy, Linh, Trang, Phương, Thảo, Tuấn, Dũng, Hương, Quang, Ngọc, Thu, Bảo, "
        "Hải, Long",
        "Nguyễn, Trần, Lê, Phạm, Hoàng, Huỳnh, Phan, Vũ, Võ, Đặng, Bùi, Đỗ, Hồ, Ngô, Dương",
    ),
    "ja": (
        "太郎=Taro, 花子=Hanako, 翔=Sho, 陽翔=Haruto, 結衣=Yui, 陽菜=Hina, 蓮=Ren, 美咲=Misaki, "
        "大輔=Daisuke, 健太=Kenta, Yuki, Haruka, Takumi, Sakura, Kenji, Aiko",
        "山田=Yamada, 佐藤=Sato, 鈴木=Suzuki, 高橋=Takahashi, 田中=Tanaka, 伊藤=Ito, "
        "渡辺=Watanabe, 中村=Nakamura, 小林=Kobayashi, 加藤=Kato, Yamamoto, Sasaki, Matsumoto, "
        "Inoue, Kimura",
    ),
}

# Over SendGrid's 50-character first_name limit: whole names typed into the first-name field.
_LONG_FIRST_NAMES = (
    "María de los Ángeles Guadalupe Concepción Inmaculada Esperanza",
    "Jean-Baptiste Marie Joseph Emmanuel Alexandre François-Xavier",
    "Wolfgang Amadeus Johann Chrysostomus Theophilus Maximilian Georg",
    "Pedro de Alcântara Francisco António João Carlos Xavier de Paula",
    "Anna Maria Katarzyna Małgorzata Aleksandra Zofia Bożena Helena",
    "Siobhán Máire Caitríona Bríd Treasa Nuala Gráinne Eibhlín Ní Bhriain",
)

# code: (English name, weight, {locale: weight}, cities). A city is
# (name, state/province/region or None, "|"-separated postal templates, weight) where the
# templates use # = digit, @ = postcode letter, * = Eircode character.
_COUNTRIES: dict[str, tuple[str, float, dict[str, float], list[tuple]]] = {
    "FR": (
        "France",
        14,
        {"fr": 88, "es": 3, "pt": 3, "it": 2, "vi": 2, "en": 2},
        [
            ("Paris", "Île-de-France", "7500#|7501#|75020", 20),
            ("Marseille", "Provence-Alpes-Côte d'Azur", "1300#|1301#", 8),
            ("Lyon", "Auvergne-Rhône-Alpes", "6900#", 8),
            ("Toulouse", "Occitanie", "31000|31100|31200|31300|31400|31500", 6),
            ("Nice", "Provence-Alpes-Côte d'Azur", "06000|06100|06200|06300", 5),
            ("Nantes", "Pays de la Loire", "44000|44100|44200|44300", 5),
            ("Bordeaux", "Nouvelle-Aquitaine", "33000|33100|33200|33300|33800", 5),
            ("Strasbourg", "Grand Est", "67000|67100|67200", 4),
            ("Montpellier", "Occitanie", "34000|34070|34080|34090", 4),
            ("Lille", "Hauts-de-France", "59000|59160|59260|59800", 4),
            ("Rennes", "Bretagne", "35000|35200|35700", 3),
            ("Saint-Étienne", "Auvergne-Rhône-Alpes", "42000|42100", 2),
            ("Annecy", "Auvergne-Rhône-Alpes", "74000|74370|74600|74940", 2),
            ("Bourg-en-Bresse", "Auvergne-Rhône-Alpes", "01000", 1),
            ("Antibes", "Provence-Alpes-Côte d'Azur", "06600|06160", 1),
            ("Saint-Quentin", "Hauts-de-France", "02100", 1),
            ("Besançon", "Bourgogne-Franche-Comté", "25000", 1),
            ("Ajaccio", "Corse", "20000|20090", 1),
        ],
    ),
    "DE": (
        "Germany",
        11,
        {"de": 85, "pl": 6, "it": 3, "nordic": 3, "en": 3},
        [
            ("Berlin", "Berlin", "101##|104##|109##|120##|130##", 18),
            ("Hamburg", "Hamburg", "200##|203##|220##|227##", 9),
            ("München", "Bayern", "803##|804##|806##|807##|813##", 8),
            ("Köln", "Nordrhein-Westfalen", "506##|507##|508##|509##", 6),
            ("Frankfurt am Main", "Hessen", "603##|604##|605##", 5),
            ("Stuttgart", "Baden-Württemberg", "701##", 4),
            ("Düsseldorf", "Nordrhein-Westfalen", "402##", 4),
            ("Leipzig", "Sachsen", "041##|042##|043##", 4),
            ("Dresden", "Sachsen", "010##|011##|013##", 3),
            ("Nürnberg", "Bayern", "904##", 3),
            ("Hannover", "Niedersachsen", "301##", 3),
            ("Bremen", "Bremen", "281##|282##", 2),
            ("Chemnitz", "Sachsen", "091##", 1),
            ("Erfurt", "Thüringen", "990##", 1),
            ("Kiel", "Schleswig-Holstein", "241##", 1),
        ],
    ),
    "ES": (
        "Spain",
        6,
        {"es": 90, "fr": 3, "en": 3, "pt": 2, "it": 2},
        [
            ("Madrid", "Comunidad de Madrid", "280##", 20),
            ("Barcelona", "Cataluña", "080##", 15),
            ("Valencia", "Comunitat Valenciana", "460##", 7),
            ("Sevilla", "Andalucía", "410##", 6),
            ("Zaragoza", "Aragón", "500##", 4),
            ("Málaga", "Andalucía", "290##", 4),
            ("Bilbao", "País Vasco", "480##", 4),
            ("Alicante", "Comunitat Valenciana", "030##", 3),
            ("A Coruña", "Galicia", "150##", 2),
            ("Palma", "Illes Balears", "070##", 2),
            ("Las Palmas de Gran Canaria", "Canarias", "350##", 2),
            ("Valladolid", "Castilla y León", "470##", 2),
            ("Almería", "Andalucía", "040##", 1),
        ],
    ),
    "IT": (
        "Italy",
        5,
        {"it": 92, "es": 3, "fr": 2, "en": 3},
        [
            ("Roma", "Lazio", "001##", 18),
            ("Milano", "Lombardia", "201##", 16),
            ("Napoli", "Campania", "801##", 8),
            ("Torino", "Piemonte", "101##", 7),
            ("Palermo", "Sicilia", "901##", 5),
            ("Genova", "Liguria", "161##", 4),
            ("Bologna", "Emilia-Romagna", "401##", 4),
            ("Firenze", "Toscana", "501##", 4),
            ("Bari", "Puglia", "701##", 3),
            ("Venezia", "Veneto", "301##", 3),
            ("Verona", "Veneto", "371##", 2),
            ("Cagliari", "Sardegna", "091##", 1),
            ("Trieste", "Friuli-Venezia Giulia", "341##", 1),
            ("Aosta", "Valle d'Aosta", "11100", 1),
        ],
    ),
    "PL": (
        "Poland",
        3,
        {"pl": 95, "de": 3, "en": 2},
        [
            ("Warszawa", "mazowieckie", "00-###|01-###|02-###|03-###|04-###", 25),
            ("Kraków", "małopolskie", "30-###|31-###", 10),
            ("Łódź", "łódzkie", "90-###|91-###|93-###|94-###", 8),
            ("Wrocław", "dolnośląskie", "50-###|51-###|52-###|53-###|54-###", 8),
            ("Poznań", "wielkopolskie", "60-###|61-###", 7),
            ("Gdańsk", "pomorskie", "80-###", 6),
            ("Szczecin", "zachodniopomorskie", "70-###|71-###", 4),
            ("Bydgoszcz", "kujawsko-pomorskie", "85-###", 3),
            ("Lublin", "lubelskie", "20-###", 3),
            ("Katowice", "śląskie", "40-###", 3),
            ("Białystok", "podlaskie", "15-###", 2),
            ("Rzeszów", "podkarpackie", "35-###", 2),
        ],
    ),
    "PT": (
        "Portugal",
        3,
        {"pt": 90, "br": 5, "es": 3, "fr": 2},
        [
            ("Lisboa", "Lisboa", "1000-###|1050-###|1100-###|1200-###|1600-###|1700-###", 30),
            ("Porto", "Porto", "4000-###|4050-###|4100-###|4150-###|4200-###|4250-###", 18),
            ("Vila Nova de Gaia", "Porto", "4400-###|4430-###", 6),
            ("Braga", "Braga", "4700-###|4710-###|4715-###", 6),
            ("Coimbra", "Coimbra", "3000-###|3030-###", 5),
            ("Setúbal", "Setúbal", "2900-###|2910-###", 4),
            ("Faro", "Faro", "8000-###|8005-###", 3),
            ("Aveiro", "Aveiro", "3800-###|3810-###", 3),
            ("Funchal", "Madeira", "9000-###|9004-###|9020-###|9050-###", 3),
            ("Évora", "Évora", "7000-###|7005-###", 2),
        ],
    ),
    "IE": (
        "Ireland",
        3,
        {"ga": 75, "en": 15, "pl": 7, "pt": 3},
        [
            ("Dublin", None, "D01 ****|D02 ****|D04 ****|D08 ****|D15 ****|D24 ****|D6W ****", 45),
            ("Cork", None, "T12 ****|T23 ****", 15),
            ("Galway", None, "H91 ****", 8),
            ("Limerick", None, "V94 ****", 7),
            ("Waterford", None, "X91 ****", 4),
            ("Drogheda", None, "A92 ****", 3),
            ("Kilkenny", None, "R95 ****", 2),
            ("Sligo", None, "F91 ****", 2),
        ],
    ),
    "GB": (
        "United Kingdom",
        14,
        {"en": 80, "ga": 5, "pl": 5, "fr": 3, "it": 2, "nordic": 2, "vi": 3},
        [
            (
                "London",
                None,
                "SW1A #@@|SW1# #@@|SE1 #@@|EC1A #@@|EC2# #@@|W1D #@@|W1# #@@|N1 #@@|N7 #@@|"
                "E1 #@@|E14 #@@|NW1 #@@|SW11 #@@",
                35,
            ),
            ("Manchester", None, "M1 #@@|M4 #@@|M14 #@@|M20 #@@", 8),
            ("Birmingham", None, "B1 #@@|B5 #@@|B15 #@@", 8),
            ("Leeds", None, "LS1 #@@|LS6 #@@", 5),
            ("Glasgow", None, "G1 #@@|G2 #@@|G12 #@@", 5),
            ("Edinburgh", None, "EH1 #@@|EH3 #@@|EH8 #@@", 5),
            ("Bristol", None, "BS1 #@@|BS8 #@@", 4),
            ("Liverpool", None, "L1 #@@|L8 #@@|L17 #@@", 4),
            ("Cardiff", None, "CF10 #@@|CF24 #@@", 3),
            ("Belfast", None, "BT1 #@@|BT7 #@@|BT9 #@@", 3),
            ("Sheffield", None, "S1 #@@|S10 #@@", 3),
            ("Newcastle upon Tyne", None, "NE1 #@@|NE6 #@@", 3),
            ("Brighton", None, "BN1 #@@|BN2 #@@", 2),
            ("Oxford", None, "OX1 #@@|OX4 #@@", 2),
            ("Cambridge", None, "CB1 #@@|CB2 #@@", 2),
        ],
    ),
    "US": (
        "United States",
        24,
        {"en": 70, "es": 15, "vi": 5, "ga": 3, "it": 3, "de": 2, "ja": 2},
        [
            ("New York", "NY", "100##|101##|112##", 14),
            ("Los Angeles", "CA", "900##", 10),
            ("Chicago", "IL", "606##", 8),
            ("Houston", "TX", "770##", 6),
            ("San Francisco", "CA", "941##", 5),
            ("Seattle", "WA", "981##", 5),
            ("Boston", "MA", "021##", 5),
            ("Phoenix", "AZ", "850##", 4),
            ("Philadelphia", "PA", "191##", 4),
            ("Dallas", "TX", "752##", 4),
            ("Austin", "TX", "787##", 4),
            ("Miami", "FL", "331##", 4),
            ("Atlanta", "GA", "303##", 4),
            ("San Diego", "CA", "921##", 3),
            ("Denver", "CO", "802##", 3),
            ("Portland", "OR", "972##", 3),
            ("Newark", "NJ", "071##", 2),
            ("Hartford", "CT", "061##", 1),
            ("Providence", "RI", "029##", 1),
            ("Burlington", "VT", "054##", 1),
        ],
    ),
    "CA": (
        "Canada",
        7,
        {"en": 60, "fr": 30, "vi": 3, "ga": 3, "it": 2, "ja": 2},
        [
            ("Toronto", "ON", "M5V #@#|M4C #@#|M6G #@#|M5H #@#", 25),
            ("Montréal", "QC", "H2X #@#|H3A #@#|H2T #@#|H4A #@#", 18),
            ("Vancouver", "BC", "V6B #@#|V5K #@#|V6K #@#", 12),
            ("Calgary", "AB", "T2P #@#|T3A #@#", 8),
            ("Ottawa", "ON", "K1P #@#|K2P #@#|K1N #@#", 8),
            ("Edmonton", "AB", "T5J #@#|T6E #@#", 6),
            ("Québec", "QC", "G1R #@#|G1K #@#", 5),
            ("Winnipeg", "MB", "R3C #@#|R3T #@#", 4),
            ("Halifax", "NS", "B3H #@#|B3J #@#", 3),
            ("Saskatoon", "SK", "S7K #@#", 2),
            ("St. John's", "NL", "A1C #@#", 1),
        ],
    ),
    "BR": (
        "Brazil",
        6,
        {"br": 80, "pt": 10, "it": 5, "ja": 3, "de": 2},
        [
            ("São Paulo", "SP", "01###-###|02###-###|03###-###|04###-###|05###-###", 30),
            ("Rio de Janeiro", "RJ", "20###-###|21###-###|22###-###|23###-###", 18),
            ("Belo Horizonte", "MG", "30###-###|31###-###", 8),
            ("Brasília", "DF", "70###-###|71###-###|72###-###", 8),
            ("Salvador", "BA", "40###-###|41###-###", 6),
            ("Fortaleza", "CE", "60###-###", 5),
            ("Curitiba", "PR", "80###-###|81###-###", 5),
            ("Recife", "PE", "50###-###", 5),
            ("Porto Alegre", "RS", "90###-###|91###-###", 5),
            ("Manaus", "AM", "69###-###", 3),
            ("Florianópolis", "SC", "88###-###", 2),
        ],
    ),
    "JP": (
        "Japan",
        4,
        {"ja": 95, "en": 3, "vi": 2},
        [
            ("Tokyo", "Tokyo", "10#-####|11#-####|13#-####|15#-####|16#-####", 35),
            ("Osaka", "Osaka", "53#-####|54#-####|55#-####", 12),
            ("Yokohama", "Kanagawa", "22#-####|23#-####", 10),
            ("Nagoya", "Aichi", "45#-####|46#-####", 8),
            ("Sapporo", "Hokkaido", "060-####|062-####|064-####", 6),
            ("Fukuoka", "Fukuoka", "81#-####", 6),
            ("Kyoto", "Kyoto", "60#-####", 6),
            ("Kobe", "Hyogo", "65#-####", 5),
            ("Kawasaki", "Kanagawa", "21#-####", 4),
            ("Sendai", "Miyagi", "98#-####", 4),
            ("Hiroshima", "Hiroshima", "73#-####", 3),
            ("Aomori", "Aomori", "030-####|038-####", 1),
        ],
    ),
}

_GLOBAL_DOMAINS = {
    "gmail.com": 40,
    "outlook.com": 8,
    "hotmail.com": 7,
    "yahoo.com": 5,
    "icloud.com": 5,
    "proton.me": 1,
}
# Work addresses at (reserved, undeliverable) company domains.
_COMPANY_DOMAINS = {
    "example.com": 2,
    "example.org": 1,
    "acme.example": 1,
    "globex.example": 1,
    "initech.example": 1,
    "umbrella-corp.example": 1,
}
_LOCAL_DOMAINS: dict[str, dict[str, float]] = {
    "FR": {"orange.fr": 10, "free.fr": 7, "yahoo.fr": 5, "hotmail.fr": 5, "sfr.fr": 4,
           "laposte.net": 4, "wanadoo.fr": 2},
    "DE": {"web.de": 12, "gmx.de": 12, "t-online.de": 7, "gmx.net": 4, "freenet.de": 2,
           "posteo.de": 1},
    "ES": {"hotmail.es": 8, "yahoo.es": 5, "telefonica.net": 2},
    "IT": {"libero.it": 9, "virgilio.it": 4, "yahoo.it": 4, "alice.it": 3, "tiscali.it": 2},
    "PL": {"wp.pl": 9, "onet.pl": 7, "o2.pl": 5, "interia.pl": 5},
    "PT": {"sapo.pt": 10, "netcabo.pt": 2},
    "IE": {"eircom.net": 5, "yahoo.ie": 2},
    "GB": {"btinternet.com": 6, "yahoo.co.uk": 6, "hotmail.co.uk": 6, "sky.com": 4},
    "US": {"aol.com": 4, "comcast.net": 4, "verizon.net": 2, "att.net": 2},
    "CA": {"rogers.com": 4, "shaw.ca": 3, "sympatico.ca": 2, "videotron.ca": 2},
    "BR": {"uol.com.br": 6, "yahoo.com.br": 4, "bol.com.br": 4, "terra.com.br": 3},
    "JP": {"yahoo.co.jp": 10, "docomo.ne.jp": 5, "ezweb.ne.jp": 3},
}  # fmt: skip

# Local part patterns: first.last (the norm), firstlast, f.last, first_last, last.first.
_PATTERN_WEIGHTS = [70, 8, 8, 7, 7]
_SEPARATORS = (".", "", "_", " ", "..")  # the patterns' separators, then two invalid ones
_PATTERN_SEPARATOR = np.array([0, 1, 0, 2, 0])
# Invalid kinds: no @, a space inside, a double dot, a trailing dot, no domain.
_INVALID_KINDS = 5
# Case of (local part, domain): 0 lower, 1 Capitalized, 2 UPPER; combo = 3 * local + domain.
_MIXED_CASE_COMBOS = {3: 45, 8: 20, 1: 15, 6: 10, 4: 10}
_N_CASE_COMBOS = 9
# Padding: none, leading, trailing, both, two trailing spaces.
_LEADING = ("", " ", "", " ", "")
_TRAILING = ("", "", " ", " ", "  ")
_PADDING_WEIGHTS = [0, 40, 35, 15, 10]
_TIERS = ("bronze", "silver", "gold", "platinum")
_TIER_THRESHOLDS = [250.0, 650.0, 1600.0]  # noisy lifetime value needed for silver/gold/platinum

_CHAR_CLASSES = {
    ord("#"): np.frombuffer(b"0123456789", np.uint8),
    ord("@"): np.frombuffer(b"ABEGHJLNPRSTWXYZ", np.uint8),  # valid in UK and CA postcodes
    ord("*"): np.frombuffer(b"ACDEFHKNPRTVWXY0123456789", np.uint8),  # Eircode
}

_ASCII_FOLD = str.maketrans(
    {"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss", "æ": "ae", "Æ": "AE", "đ": "d", "Đ": "D",
     "œ": "oe", "Œ": "OE"}
)  # fmt: skip


def _ascii_fold(name: str) -> str:
    """Lowercase ASCII letters and digits only, as people write their name in an address."""
    decomposed = unicodedata.normalize("NFKD", name.translate(_ASCII_FOLD))
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def _split_names(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        display, _, romanized = item.strip().partition("=")
        ascii_name = _ascii_fold(romanized or display)
        if not ascii_name:
            raise ValueError(f"name {display!r} has no ASCII form: add '=romanization'")
        pairs.append((display, ascii_name))
    return pairs


def _weights_by_group(groups: list[dict[int, float]], width: int) -> np.ndarray:
    matrix = np.zeros((len(groups), width))
    for row, weights in enumerate(groups):
        for column, weight in weights.items():
            matrix[row, column] = weight
    return matrix


def _case_pools(pools: dict[str, list[str]]) -> tuple[pl.Series, dict[str, np.ndarray]]:
    """Concatenate each pool in lower, Capitalized and UPPER case, with the offsets to index it."""
    values: list[str] = []
    offsets: dict[str, np.ndarray] = {}
    for kind, pool in pools.items():
        starts = []
        for case in (str.lower, str.capitalize, str.upper):
            starts.append(len(values))
            values.extend(case(v) for v in pool)
        offsets[kind] = np.array(starts)
    return pl.Series(values, dtype=pl.String), offsets


class _Reference:
    """The reference tables flattened into arrays and Series, built once at import."""

    def __init__(self) -> None:
        self.codes = list(_COUNTRIES)
        self.country_names = [c[0] for c in _COUNTRIES.values()]
        self.country_weights = np.array([[c[1] for c in _COUNTRIES.values()]], float)

        locales = list(_LOCALE_NAMES)
        first: list[tuple[str, str]] = []
        last: list[tuple[str, str]] = []
        first_groups: list[dict[int, float]] = []
        last_groups: list[dict[int, float]] = []
        for first_text, last_text in _LOCALE_NAMES.values():
            for pool, groups, text in (
                (first, first_groups, first_text),
                (last, last_groups, last_text),
            ):
                names = _split_names(text)
                # Popular names are more common (a gentle Zipf-like curve).
                groups.append({len(pool) + i: 1 / (i + 4) for i in range(len(names))})
                pool.extend(names)
        self.first_weights = _weights_by_group(first_groups, len(first))
        self.last_weights = _weights_by_group(last_groups, len(last))
        self.first_display = pl.Series([d for d, _ in first], dtype=pl.String)
        self.last_display = pl.Series([d for d, _ in last], dtype=pl.String)
        # Email tokens in each case (lower, Capitalized, UPPER): first names, their initials,
        # last names. A token index is offset[kind][case] + name index.
        self.tokens, self.token_offset = _case_pools(
            {
                "first": [a for _, a in first],
                "initial": [a[0] for _, a in first],
                "last": [a for _, a in last],
            }
        )
        self.long_first = pl.Series(_LONG_FIRST_NAMES, dtype=pl.String)
        if min(len(name) for name in _LONG_FIRST_NAMES) <= 50:
            raise ValueError("every _LONG_FIRST_NAMES entry must exceed 50 characters")

        self.locale_weights = _weights_by_group(
            [{locales.index(k): w for k, w in c[2].items()} for c in _COUNTRIES.values()],
            len(locales),
        )

        cities = [(code, *city) for code, c in _COUNTRIES.items() for city in c[3]]
        self.city_weights = _weights_by_group(
            [
                {i: city[4] for i, city in enumerate(cities) if city[0] == code}
                for code in self.codes
            ],
            len(cities),
        )
        self.city_names = pl.Series([c[1] for c in cities], dtype=pl.String)
        self.city_regions = pl.Series([c[2] for c in cities], dtype=pl.String)
        templates = [t.split("|") for *_, t, _ in cities]
        self.template_count = np.array([len(t) for t in templates])
        self.template_offset = np.concatenate([[0], np.cumsum(self.template_count)[:-1]])
        flat = [t.encode() for group in templates for t in group]
        width = max(len(t) for t in flat)
        self.postal_width = width
        self.templates = np.zeros((len(flat), width), np.uint8)
        for i, template in enumerate(flat):
            self.templates[i, : len(template)] = np.frombuffer(template, np.uint8)

        domains = list(
            dict.fromkeys(
                [
                    *_GLOBAL_DOMAINS,
                    *_COMPANY_DOMAINS,
                    *(d for m in _LOCAL_DOMAINS.values() for d in m),
                ]
            )
        )
        self.domain_weights = _weights_by_group(
            [
                {
                    domains.index(d): w
                    for d, w in {
                        **_GLOBAL_DOMAINS,
                        **_COMPANY_DOMAINS,
                        **_LOCAL_DOMAINS[code],
                    }.items()
                }
                for code in self.codes
            ],
            len(domains),
        )
        self.domains, offsets = _case_pools({"domain": domains})
        self.domain_offset = offsets["domain"]


_REF = _Reference()


def _grouped_choice(
    rng: np.random.Generator, groups: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """For each row, an item index drawn with the weights of the row's group.

    Vectorized inverse-CDF: each group's CDF is shifted by the group number, so one
    searchsorted over the concatenated CDFs samples every group at once.
    """
    cdf = np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True)
    cdf[:, -1] = 1.0
    shifted = (cdf + np.arange(len(weights))[:, None]).ravel()
    position = np.searchsorted(shifted, groups + rng.random(len(groups)), side="right")
    return position % weights.shape[1]


def _choice(rng: np.random.Generator, n: int, weights: Sequence[float]) -> np.ndarray:
    return _grouped_choice(rng, np.zeros(n, np.int64), np.array([weights], float))


def _postal_codes(rng: np.random.Generator, city: np.ndarray) -> pl.Series:
    """Fill each city's postal template (kept as text: many codes start with 0)."""
    alternative = np.floor(rng.random(len(city)) * _REF.template_count[city]).astype(np.int64)
    chars = _REF.templates[_REF.template_offset[city] + alternative]
    draws = rng.integers(0, 40_000, size=chars.shape, dtype=np.uint16)  # 40,000 % 10/16/25 == 0
    for placeholder, alphabet in _CHAR_CLASSES.items():
        mask = chars == placeholder
        chars[mask] = alphabet[draws[mask] % len(alphabet)]
    return pl.Series(chars.view(f"S{_REF.postal_width}").ravel()).cast(pl.String)


def _us(moment: dt.datetime | dt.date) -> int:
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.combine(moment, dt.time(), tzinfo=dt.UTC)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def generate_profiles(rows: int, seed: int = 42) -> pl.DataFrame:
    """Deterministic synthetic unified profiles with `PROFILE_SCHEMA` columns (see module doc)."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    n = rows
    rng = np.random.default_rng(seed)
    index = np.arange(n)

    # Who and where. Names follow the country's locales, plus some diaspora.
    country = _grouped_choice(rng, np.zeros(n, np.int64), _REF.country_weights)
    locale = _grouped_choice(rng, country, _REF.locale_weights)
    first = _grouped_choice(rng, locale, _REF.first_weights)
    last = _grouped_choice(rng, locale, _REF.last_weights)
    city = _grouped_choice(rng, country, _REF.city_weights)
    domain = _grouped_choice(rng, country, _REF.domain_weights)
    pattern = _choice(rng, n, _PATTERN_WEIGHTS)
    # No number (40%), 1-99, a birth year, or 100-999.
    number_kind = _choice(rng, n, [40, 30, 20, 10])
    number = np.select(
        [number_kind == 1, number_kind == 2, number_kind == 3],
        [rng.integers(1, 100, n), rng.integers(1960, 2006, n), rng.integers(100, 1000, n)],
        0,
    )

    # Email noise on disjoint rows: missing, invalid, and copies of another profile's address.
    perm = rng.permutation(n)
    k_null, k_invalid = round(n * EMAIL_NULL_SHARE), round(n * EMAIL_INVALID_SHARE)
    k_copy = min(round(n * EMAIL_SHARED_SHARE / 2), (n - k_null - k_invalid) // 2)
    null_rows = perm[:k_null]
    invalid_rows = perm[k_null : k_null + k_invalid]
    copy_rows = perm[k_null + k_invalid : k_null + k_invalid + k_copy]
    source_rows = perm[k_null + k_invalid + k_copy : k_null + k_invalid + 2 * k_copy]
    # A copy is the same person signing up twice: same name, place and address.
    origin = index.copy()
    origin[copy_rows] = source_rows
    first, last, country, city, domain, pattern, number = (
        a[origin] for a in (first, last, country, city, domain, pattern, number)
    )
    is_copy = np.zeros(n, bool)
    is_copy[copy_rows] = True
    email_null = np.zeros(n, bool)
    email_null[null_rows] = True
    invalid_kind = np.full(n, -1)
    invalid_kind[invalid_rows] = rng.integers(0, _INVALID_KINDS, k_invalid)

    combos = np.array(list(_MIXED_CASE_COMBOS))
    case = np.where(
        rng.random(n) < EMAIL_MIXED_CASE_SHARE,
        combos[_choice(rng, n, list(_MIXED_CASE_COMBOS.values()))],
        0,
    )
    # A copy always differs from its source by case, so only case-insensitive dedup catches it.
    case[copy_rows] = (case[source_rows] + rng.integers(1, _N_CASE_COMBOS, k_copy)) % _N_CASE_COMBOS
    padding = np.where(rng.random(n) < EMAIL_PADDED_SHARE, _choice(rng, n, _PADDING_WEIGHTS), 0)

    first_null = rng.random(n) < NAME_NULL_SHARE
    last_null = rng.random(n) < NAME_NULL_SHARE
    long_first = np.zeros(n, bool)
    long_first[rng.choice(n, size=n // ROWS_PER_LONG_FIRST_NAME, replace=False)] = True
    long_pick = rng.integers(0, len(_LONG_FIRST_NAMES), n)
    postal = _postal_codes(rng, city)
    optional_null = {
        column: rng.random(n) < share
        for column, share in (
            ("country_code", 0.02),
            ("country", 0.03),
            ("state_province_region", 0.04),
            ("city", 0.03),
            ("postal_code", 0.04),
        )
    }

    # Activity. Customer numbers follow sign-up order; recent years signed up more people.
    end_us = _us(DATA_END + dt.timedelta(days=1)) - 1
    start_us = _us(CREATED_START)
    created = np.sort(start_us + (rng.random(n) ** 0.6 * (end_us - start_us)).astype(np.int64))
    tenure_days = (end_us - created) / _US_PER_DAY
    has_orders = rng.random(n) >= 0.07 + 0.6 * np.exp(-tenure_days / 45)
    order_scale = np.sqrt(np.clip(tenure_days / 365, 0.05, 4))
    orders = np.where(
        has_orders, 1 + np.floor(rng.lognormal(np.log(2.2), 0.9, n) * order_scale), 0
    ).astype(np.int64)
    basket = rng.lognormal(np.log(62), 0.5, n)
    lifetime_value = np.where(has_orders, np.round(orders * basket, 2), 0.0)
    # Tiers follow spend, loosely (they are computed on a rolling window, with bonuses).
    tier = np.searchsorted(_TIER_THRESHOLDS, lifetime_value * rng.lognormal(0, 0.3, n), "right")

    created_day = created // _US_PER_DAY
    first_day = np.maximum(created_day, (PURCHASE_START - _EPOCH).days)
    span = (DATA_END - _EPOCH).days - first_day + 1
    purchase_day = first_day + np.floor(rng.random(n) ** 0.5 * span).astype(np.int64)
    purchase_us = purchase_day * _US_PER_DAY + rng.integers(0, _US_PER_DAY, n)
    touched = np.where(has_orders, np.maximum(created, purchase_us), created)
    updated = touched + (rng.random(n) ** 2 * (end_us - touched)).astype(np.int64)
    opt_in = rng.random(n) < OPT_IN_SHARE

    email = _emails(
        index,
        origin,
        is_copy,
        first,
        last,
        domain,
        pattern,
        number,
        case,
        invalid_kind,
        email_null,
        padding,
    )
    width = max(7, len(str(n)))
    columns = {
        "customer_id": pl.Series(index + 1).cast(pl.String).str.zfill(width),
        "email": email,
        "first_name": _REF.first_display.gather(first),
        "last_name": _REF.last_display.gather(last),
        "country_code": pl.Series(_REF.codes).gather(country),
        "country": pl.Series(_REF.country_names).gather(country),
        "state_province_region": _REF.city_regions.gather(city),
        "city": _REF.city_names.gather(city),
        "postal_code": postal,
        "loyalty_tier": pl.Series(_TIERS).gather(tier),
        "lifetime_value": lifetime_value,
        "orders_count": orders,
        "last_purchase_date": pl.Series(purchase_day).cast(pl.Int32).cast(pl.Date),
        "email_opt_in": opt_in,
        "created_at": pl.Series(created).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "updated_at": pl.Series(updated).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
    }
    nulls = {
        "first_name": first_null,
        "last_name": last_null,
        "last_purchase_date": ~has_orders,
        **optional_null,
    }
    frame = pl.DataFrame(columns).with_columns(
        ("C" + pl.col("customer_id")).alias("customer_id"),
        *[
            pl.when(pl.Series(mask)).then(None).otherwise(pl.col(column)).alias(column)
            for column, mask in nulls.items()
        ],
    )
    # Long names go in after the nulls, so there are exactly n // 2000 of them.
    frame = frame.with_columns(
        pl.when(pl.Series(long_first))
        .then(_REF.long_first.gather(long_pick))
        .otherwise(pl.col("first_name"))
        .alias("first_name")
    )
    return frame.cast(PROFILE_SCHEMA)


def _emails(
    row: np.ndarray,
    origin: np.ndarray,
    is_copy: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    domain: np.ndarray,
    pattern: np.ndarray,
    number: np.ndarray,
    case: np.ndarray,
    invalid_kind: np.ndarray,
    email_null: np.ndarray,
    padding: np.ndarray,
) -> pl.Series:
    """The `email` column: unique base addresses, then case, invalidity and padding noise.

    Pieces are picked by index from small pre-cased pools (see `_case_pools`) and joined in a
    single `concat_str`, which keeps a million rows to a fraction of a second.
    """
    off = _REF.token_offset

    def pieces(local_case: np.ndarray) -> tuple[pl.Series, pl.Series]:
        head = np.select(
            [pattern == 2, pattern == 4],
            [off["initial"][local_case] + first, off["last"][local_case] + last],
            off["first"][local_case] + first,
        )
        tail = np.where(
            pattern == 4, off["first"][local_case] + first, off["last"][local_case] + last
        )
        return _REF.tokens.gather(head), _REF.tokens.gather(tail)

    lower = np.zeros_like(case)
    lower_head, lower_tail = pieces(lower)
    separator = _PATTERN_SEPARATOR[pattern]
    frame = pl.DataFrame(
        {
            "row": row,
            "origin": origin,
            "is_copy": is_copy,
            "number": pl.Series(number).cast(pl.String).replace("0", ""),
            "head": lower_head,
            "sep": pl.Series(_SEPARATORS).gather(separator),
            "tail": lower_tail,
            "domain": _REF.domains.gather(_REF.domain_offset[lower] + domain),
        }
    )
    # Two different people can draw the same address; the later ones get "_<customer number>".
    # Copies are kept out of the check (made unique by "#row") and then follow their source.
    key = pl.concat_str("head", "sep", "tail", "number", pl.lit("@"), "domain")
    clash = (
        pl.when(pl.col("is_copy"))
        .then(pl.concat_str(key, pl.lit("#"), pl.col("row").cast(pl.String)))
        .otherwise(key)
        .is_first_distinct()
        .not_()
    )
    suffix = (
        pl.when(pl.col("clash").gather(pl.col("origin")))
        .then(pl.concat_str(pl.lit("_"), (pl.col("origin") + 1).cast(pl.String)))
        .otherwise(pl.lit(""))
    )
    frame = frame.with_columns(clash.alias("clash")).with_columns(suffix.alias("suffix"))

    local_case, domain_case = case // 3, case % 3
    head, tail = pieces(local_case)
    # Invalid kinds: 0 "jose.sanchezgmail.com", 1 "jose sanchez@gmail.com",
    # 2 "jose..sanchez@gmail.com", 3 "jose.sanchez@gmail.com.", 4 "jose.sanchez@".
    separator = np.select([invalid_kind == 1, invalid_kind == 2], [3, 4], separator)
    at = pl.Series(["@", ""]).gather((invalid_kind == 0).astype(np.int8))
    host = _REF.domains.gather(_REF.domain_offset[domain_case] + domain)
    trailer = pl.Series(["", "."]).gather((invalid_kind == 3).astype(np.int8))
    return frame.select(
        pl.when(pl.Series(email_null))
        .then(pl.lit(None, pl.String))
        .otherwise(
            pl.concat_str(
                pl.Series(_LEADING).gather(padding),
                head,
                pl.Series(_SEPARATORS).gather(separator),
                tail,
                "number",
                "suffix",
                at,
                pl.when(pl.Series(invalid_kind == 4)).then(pl.lit("")).otherwise(host),
                trailer,
                pl.Series(_TRAILING).gather(padding),
            )
        )
        .alias("email")
    ).to_series()


def write_profiles(frame: pl.DataFrame, path: Path | str) -> Path:
    """Write profiles as CSV or Parquet (by extension), creating the parent directories."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: unsupported extension {path.suffix!r} (use .csv or .parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def read_profiles_csv(path: Path | str) -> pl.DataFrame:
    """Read a profiles CSV back with `PROFILE_SCHEMA` dtypes (text columns never inferred)."""
    return pl.read_csv(path, schema_overrides=CSV_SCHEMA_OVERRIDES, try_parse_dates=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate profiles and write them to --out."""
    parser = argparse.ArgumentParser(
        prog="python -m sendgrid_pipeline.sample_data",
        description="Generate synthetic unified customer profiles (CSV or Parquet).",
    )
    parser.add_argument(
        "--rows", type=int, default=SAMPLE_ROWS, help=f"number of profiles (default {SAMPLE_ROWS})"
    )
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help="random seed (default 42)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output file, .csv or .parquet (default: data/profiles/profiles.csv in the repo)",
    )
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be >= 0")
    if args.out.suffix.lower() not in (".csv", ".parquet"):
        parser.error(f"--out must end in .csv or .parquet, got {args.out}")
    path = write_profiles(generate_profiles(args.rows, args.seed), args.out)
    print(f"wrote {args.rows} profiles to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
