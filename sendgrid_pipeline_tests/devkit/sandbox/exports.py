"""File formats the sandbox serves for downloads: contact exports (gzip) and job error reports.

Kept apart from the store so the formats the pipeline parses are easy to find and to compare
with what SendGrid sends.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

# (CSV header, stored field) in SendGrid's export order; JSON uses the lower-case header names.
EXPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("CONTACT_ID", "id"),
    ("EMAIL", "email"),
    ("FIRST_NAME", "first_name"),
    ("LAST_NAME", "last_name"),
    ("ADDRESS_LINE_1", "address_line_1"),
    ("ADDRESS_LINE_2", "address_line_2"),
    ("CITY", "city"),
    ("STATE_PROVINCE_REGION", "state_province_region"),
    ("POSTAL_CODE", "postal_code"),
    ("COUNTRY", "country"),
)
ERRORS_CSV_HEADER = ("row_index", "email", "message")


ExportRow = tuple[Mapping[str, Any], list[str], Mapping[str, Any]]  # record, list ids, custom


def render_export(
    rows: Iterable[ExportRow], file_type: str, field_names: Mapping[str, str]
) -> bytes:
    """A gzip-compressed export file; `field_names` maps custom field id -> name, in order."""
    if file_type == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        headers = [header for header, _ in EXPORT_COLUMNS]
        writer.writerow([*headers, "LIST_IDS", *field_names.values()])
        for record, list_ids, custom in rows:
            writer.writerow(
                [record.get(field, "") for _, field in EXPORT_COLUMNS]
                + [",".join(list_ids)]
                + [custom.get(field_id, "") for field_id in field_names]
            )
        text = buffer.getvalue()
    else:
        lines = []
        for record, list_ids, custom in rows:
            item = {header.lower(): record.get(field, "") for header, field in EXPORT_COLUMNS}
            item["list_ids"] = list_ids
            item["custom_fields"] = {
                name: custom[field_id]
                for field_id, name in field_names.items()
                if field_id in custom
            }
            lines.append(json.dumps(item, separators=(",", ":")) + "\n")
        text = "".join(lines)
    return gzip.compress(text.encode("utf-8"), compresslevel=6)


def render_errors_csv(rows: Iterable[tuple[int, str, str]]) -> bytes:
    """The file an errored job's errors_url serves: one line per rejected row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ERRORS_CSV_HEADER)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
