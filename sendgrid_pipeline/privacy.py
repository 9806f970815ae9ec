"""Masking for anything that leaves the pipeline as logs or metadata."""

from __future__ import annotations

import polars as pl


def mask_email_expr(column: str) -> pl.Expr:
    """`jane.doe@example.com` -> `j***@e***.com`: enough to recognise, not to contact."""
    text = pl.col(column).str.strip_chars()
    local = text.str.split_exact("@", 1).struct.field("field_0")
    domain = text.str.split_exact("@", 1).struct.field("field_1")
    tld = domain.str.extract(r"\.([^.]*)$", 1)
    masked_domain = (
        pl.when(tld.is_not_null())
        .then(domain.str.slice(0, 1) + pl.lit("***.") + tld)
        .otherwise(domain.str.slice(0, 1) + pl.lit("***"))
    )
    return (
        pl.when(text.is_null() | (text == ""))
        .then(pl.lit("(none)"))
        .when(domain.is_null())
        .then(local.str.slice(0, 1) + pl.lit("***"))
        .otherwise(local.str.slice(0, 1) + pl.lit("***@") + masked_domain)
        .alias(column)
    )
