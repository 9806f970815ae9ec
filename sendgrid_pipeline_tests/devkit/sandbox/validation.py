"""Request validation for the sandbox, written to SendGrid's published limits
(the Marketing Contacts and Custom Fields API reference).

It lives apart from the store so the expensive part of an upsert (checking up to 30,000 contacts)
runs outside the store lock, and so the limits are written down in one place.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

MAX_UPSERT_BYTES = 6_000_000
MAX_UPSERT_CONTACTS = 30_000
MAX_SEARCH_EMAILS = 100
MAX_SEARCH_EMAIL_LENGTH = 100
MAX_CUSTOM_FIELDS = 500
MAX_ALTERNATE_EMAILS = 5
MAX_ERRORS_REPORTED = 100

_UNLIMITED = 1 << 62

# String fields PUT /v3/marketing/contacts accepts, with their maxLength (SPEC ContactRequest).
# The reserved fields _rf10-_rf14 are missing from that schema but writable per field_definitions;
# whether PUT takes them is not documented, so the sandbox accepts them.
STRING_FIELD_LIMITS: dict[str, int] = {
    "email": 254,
    "phone_number_id": _UNLIMITED,
    "external_id": 254,
    "anonymous_id": 254,
    "first_name": 50,
    "last_name": 50,
    "address_line_1": 100,
    "address_line_2": 100,
    "city": 60,
    "state_province_region": 50,
    "country": 50,
    "postal_code": _UNLIMITED,
    "phone_number": _UNLIMITED,
    "whatsapp": _UNLIMITED,
    "line": _UNLIMITED,
    "facebook": _UNLIMITED,
    "unique_name": _UNLIMITED,
}
IDENTIFIER_FIELDS = ("email", "phone_number_id", "external_id", "anonymous_id")
FIELD_TYPES = ("Text", "Number", "Date")

# (id, name, field_type, read_only) as GET /v3/marketing/field_definitions lists them (SPEC).
RESERVED_FIELDS: tuple[tuple[str, str, str, bool], ...] = (
    ("_rf0_T", "first_name", "Text", False),
    ("_rf1_T", "last_name", "Text", False),
    ("_rf2_T", "email", "Text", False),
    ("_rf3_T", "alternate_emails", "Text", False),
    ("_rf4_T", "address_line_1", "Text", False),
    ("_rf5_T", "address_line_2", "Text", False),
    ("_rf6_T", "city", "Text", False),
    ("_rf7_T", "state_province_region", "Text", False),
    ("_rf8_T", "postal_code", "Text", False),
    ("_rf9_T", "country", "Text", False),
    ("_rf10_T", "phone_number", "Text", False),
    ("_rf11_T", "whatsapp", "Text", False),
    ("_rf12_T", "line", "Text", False),
    ("_rf13_T", "facebook", "Text", False),
    ("_rf14_T", "unique_name", "Text", False),
    ("_rf15_T", "email_domains", "Text", True),
    ("_rf16_D", "last_clicked", "Date", True),
    ("_rf17_D", "last_opened", "Date", True),
    ("_rf18_D", "last_emailed", "Date", True),
    ("_rf19_T", "singlesend_id", "Text", True),
    ("_rf20_T", "automation_id", "Text", True),
    ("_rf21_D", "created_at", "Date", True),
    ("_rf22_D", "updated_at", "Date", True),
    ("_rf23_T", "contact_id", "Text", True),
)
RESERVED_NAMES = frozenset(name.lower() for _, name, _, _ in RESERVED_FIELDS)

# local@domain: no whitespace, no "..", no dot at either end of the local part, a dotted domain.
_EMAIL = re.compile(r"(?!.*\.\.)[^\s@.](?:[^\s@]*[^\s@.])?@[^\s@.]+(?:\.[^\s@.]+)+")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_US_DATE = re.compile(r"(\d{2})/(\d{2})/(\d{4})")

is_valid_email = _EMAIL.fullmatch


class ApiError(Exception):
    """An HTTP error answer in SendGrid's shape: {"errors":[{"field":..., "message":...}]}."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errors = [error(field, message)]


def error(field: str | None, message: str) -> dict[str, Any]:
    return {"field": field, "message": message}


def is_date_value(value: object) -> bool:
    """A Date custom field takes MM/DD/YYYY or an ISO 8601 date (or date-time)."""
    if type(value) is not str:
        return False
    us = _US_DATE.fullmatch(value)
    try:
        if us:
            date(int(us[3]), int(us[1]), int(us[2]))
        else:
            datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _custom_value_error(field_type: str, value: object) -> str | None:
    if value == "":  # an empty string clears the field, whatever its type
        return None
    if field_type == "Number":
        ok = type(value) in (int, float)
    elif field_type == "Date":
        ok = is_date_value(value)
    else:
        ok = type(value) is str
    if ok:
        return None
    if field_type == "Date":
        return "must be a Date: a string MM/DD/YYYY or an ISO 8601 date"
    return f"must be a {field_type} value"


def _check_custom_fields(
    where: str, values: object, field_types: dict[str, str], errors: list[dict[str, Any]]
) -> None:
    if type(values) is not dict:
        errors.append(error(f"{where}.custom_fields", "custom_fields must be an object"))
        return
    for field_id, value in values.items():
        field_type = field_types.get(field_id)
        if field_type is None:
            errors.append(
                error(
                    f"{where}.custom_fields.{field_id}",
                    f"invalid custom field ids supplied - {field_id} (use the field id from "
                    "GET /v3/marketing/field_definitions, not its name)",
                )
            )
            continue
        problem = _custom_value_error(field_type, value)
        if problem:
            errors.append(error(f"{where}.custom_fields.{field_id}", problem))


def _check_alternate_emails(where: str, values: object, errors: list[dict[str, Any]]) -> None:
    field = f"{where}.alternate_emails"
    if type(values) is not list:
        errors.append(error(field, "alternate_emails must be an array of strings"))
    elif len(values) > MAX_ALTERNATE_EMAILS:
        errors.append(error(field, f"at most {MAX_ALTERNATE_EMAILS} alternate emails"))
    else:
        for index, value in enumerate(values):
            if type(value) is not str or len(value) > STRING_FIELD_LIMITS["email"]:
                errors.append(error(f"{field}[{index}]", "must be a string of at most 254 chars"))


def validate_contacts(contacts: list[Any], field_types: dict[str, str]) -> list[dict[str, Any]]:
    """Request-time checks of an upsert's contacts; returns up to 100 errors (empty: valid).

    This loop runs once per contact on the hot path, so it only looks at the keys a contact has.
    """
    errors: list[dict[str, Any]] = []
    limits = STRING_FIELD_LIMITS
    for index, contact in enumerate(contacts):
        where = f"contacts[{index}]"
        if type(contact) is not dict:
            errors.append(error(where, "each contact must be an object"))
            continue
        if not (
            contact.get("email")
            or contact.get("phone_number_id")
            or contact.get("external_id")
            or contact.get("anonymous_id")
        ):
            errors.append(error(where, f"a contact needs one of {', '.join(IDENTIFIER_FIELDS)}"))
        for key, value in contact.items():
            limit = limits.get(key)
            if limit is not None:
                if type(value) is not str:
                    errors.append(error(f"{where}.{key}", "must be a string"))
                elif len(value) > limit:
                    errors.append(
                        error(f"{where}.{key}", f"length {len(value)} exceeds maxLength {limit}")
                    )
            elif key == "custom_fields":
                _check_custom_fields(where, value, field_types, errors)
            elif key == "alternate_emails":
                _check_alternate_emails(where, value, errors)
            else:
                errors.append(error(f"{where}.{key}", f"unknown contact field {key!r}"))
        if len(errors) >= MAX_ERRORS_REPORTED:
            return errors[:MAX_ERRORS_REPORTED]
    return errors


def field_definition_error(
    name: object, field_type: object, existing_names: set[str]
) -> ApiError | None:
    """Why POST /v3/marketing/field_definitions must refuse this field, or None."""
    if type(name) is not str or not _FIELD_NAME.fullmatch(name):
        return ApiError(
            400,
            "name",
            "name must be 1-100 letters, digits or underscores, starting with a letter or "
            "underscore",
        )
    if name.lower() in RESERVED_NAMES:
        return ApiError(400, "name", f"{name!r} clashes with a reserved field name")
    if name.lower() in existing_names:
        return ApiError(400, "name", f"a custom field named {name!r} already exists")
    if field_type not in FIELD_TYPES:
        return ApiError(400, "field_type", "field_type must be one of Text, Number, Date")
    if len(existing_names) >= MAX_CUSTOM_FIELDS:
        return ApiError(400, None, f"you can have at most {MAX_CUSTOM_FIELDS} custom fields")
    return None
