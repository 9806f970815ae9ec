"""Masking for anything that leaves the pipeline as logs or metadata."""

from __future__ import annotations

import polars as pl


def mask_email(email: str | None) -> str:
    """`jane.doe@example.com` -> `j***@e***.com`: enough to recognise, not to contact."""
    if not email:
        return "(none)"
    local, at, domain = email.strip().partition("@")
    if not at:
        return (local[:1] or "?") + "***"
    host, dot, tld = domain.rpartition(".")
    masked_domain = f"{host[:1]}***.{tld}" if dot else f"{domain[:1]}***"
    return f"{local[:1]}***@{masked_domain}"


def mask_email_expr(column: str) -> pl.Expr:
    """The same masking as `mask_email`, vectorised."""
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
