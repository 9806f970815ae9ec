"""The sandbox's endpoints as plain functions of (store, request) -> response, free of HTTP.

Routing and the rules for each payload live here; the HTTP layer (server.py) adds auth, rate
limits, faults and the request log around them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sendgrid_pipeline_tests.devkit.sandbox.faults import FaultPlan
from sendgrid_pipeline_tests.devkit.sandbox.store import Store, paused_gc
from sendgrid_pipeline_tests.devkit.sandbox.validation import (
    MAX_SEARCH_EMAIL_LENGTH,
    MAX_SEARCH_EMAILS,
    MAX_UPSERT_BYTES,
    MAX_UPSERT_CONTACTS,
    ApiError,
    error,
    is_valid_email,
    validate_contacts,
)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    faults: FaultPlan
    contacts: int = 0  # contacts in an upsert body, for the request log

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object (parsed once, with one json.loads); 400 otherwise."""
        try:
            payload = json.loads(self.body) if self.body else None
        except ValueError:
            raise ApiError(400, None, "request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(400, None, "request body must be a JSON object")
        return payload


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


def json_response(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"))


def error_response(status: int, errors: list[dict[str, Any]]) -> Response:
    return json_response(status, {"errors": errors})


def _string_list(value: object, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ApiError(400, field, f"{field} must be an array of strings")
    return value


# -- contacts --------------------------------------------------------------------------------------
def upsert_contacts(store: Store, request: Request) -> Response:
    size = len(request.body)
    if size > MAX_UPSERT_BYTES:
        raise ApiError(413, None, f"request body too large: {size} bytes, limit {MAX_UPSERT_BYTES}")
    with paused_gc():
        body = request.json_object()
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            raise ApiError(400, "contacts", "contacts must be a non-empty array")
        request.contacts = len(contacts)
        if len(contacts) > MAX_UPSERT_CONTACTS:
            raise ApiError(
                400, "contacts", f"{len(contacts)} contacts; at most {MAX_UPSERT_CONTACTS} allowed"
            )
        list_ids = _string_list(body.get("list_ids", []), "list_ids")
        errors = validate_contacts(contacts, store.field_types())
        if errors:
            return error_response(400, errors)
        plan = request.faults
        job_id = store.enqueue_upsert(list_ids, contacts, plan.reject_email_pattern, plan.fail_jobs)
    return json_response(202, {"job_id": job_id})


def get_import(store: Store, request: Request, job_id: str) -> Response:
    view = store.import_job(job_id)
    if view is None:
        raise ApiError(404, None, f"job {job_id} not found")
    return json_response(200, view)


def get_contact_count(store: Store, request: Request) -> Response:
    """The account's totals; no billable_breakdown (the sandbox has no subusers)."""
    return json_response(200, store.account_counts())


def search_emails(store: Store, request: Request) -> Response:
    emails = request.json_object().get("emails")
    if not isinstance(emails, list) or not emails:
        raise ApiError(400, "emails", "emails must be a non-empty array of email addresses")
    if len(emails) > MAX_SEARCH_EMAILS:
        raise ApiError(
            400, "emails", f"{len(emails)} emails; at most {MAX_SEARCH_EMAILS} per request"
        )
    wanted: list[str] = []
    errors = []
    for index, email in enumerate(emails):
        if email == "":  # "Empty strings are excluded from the search"
            continue
        if not isinstance(email, str) or len(email) > MAX_SEARCH_EMAIL_LENGTH:
            errors.append(error(f"emails[{index}]", "must be a string of at most 100 chars"))
        elif not is_valid_email(email.lower()):
            errors.append(error(f"emails[{index}]", f"{email!r} is not a valid email address"))
        else:
            wanted.append(email)
    if errors:
        return error_response(400, errors)
    found = store.search_emails(wanted)
    if not any(found.values()):
        raise ApiError(404, None, "no contacts found")
    result = {
        email: {"contact": contact} if contact else {"error": "contact not found"}
        for email, contact in found.items()
    }
    return json_response(200, {"result": result})


def delete_contacts(store: Store, request: Request) -> Response:
    """DELETE /v3/marketing/contacts?ids=<comma-separated>: an async job (202 {job_id}).

    delete_all_contacts=true would delete every contact of the account: the sandbox counts
    it and refuses it, so a test can assert the pipeline never sends it.
    """
    if request.param("delete_all_contacts") is not None:
        store.refuse_delete_all()
        raise ApiError(400, "delete_all_contacts", "the sandbox refuses delete_all_contacts")
    values = request.query.get("ids", [])
    if len(values) > 1:
        raise ApiError(400, "ids", f"ids given {len(values)} times; send one comma-separated value")
    ids = [cid.strip() for cid in (values[0] if values else "").split(",") if cid.strip()]
    if not ids:
        raise ApiError(400, "ids", "ids is required: comma-separated contact ids")
    return json_response(202, {"job_id": store.enqueue_deletion(list(dict.fromkeys(ids)))})


# -- recipients' data erasure (tsg_recipients_data_erasure_v3.json) -------------------------------
MAX_ERASE_EMAILS = 5_000  # maxItems of email_addresses
MAX_ERASE_BYTES = 256_000  # "a maximum payload size of 256Kb"


def erase_recipients(store: Store, request: Request) -> Response:
    """POST /v3/recipients/erasejob {"email_addresses": [...]}: 202 {"job_id"}.

    Addresses are de-duplicated and checked for structure; invalid ones answer 400, one
    error each ("Email_address <x> is not valid", field email_addresses).
    """
    if len(request.body) > MAX_ERASE_BYTES:
        raise ApiError(  # the spec's only client error is 400
            400,
            "email_addresses",
            f"request body too large: {len(request.body)} bytes, limit {MAX_ERASE_BYTES}",
        )
    emails = request.json_object().get("email_addresses")
    if not isinstance(emails, list) or not emails:
        raise ApiError(400, "email_addresses", "email_addresses must be a non-empty array")
    if len(emails) > MAX_ERASE_EMAILS:
        raise ApiError(
            400, "email_addresses", f"{len(emails)} addresses; at most {MAX_ERASE_EMAILS} allowed"
        )
    invalid = [e for e in emails if not isinstance(e, str) or not is_valid_email(e.lower())]
    if invalid:
        return error_response(
            400, [error("email_addresses", f"Email_address {e} is not valid") for e in invalid]
        )
    unique = list(dict.fromkeys(e.lower() for e in emails))
    return json_response(202, {"job_id": store.record_erasure(unique)})


# -- lists -----------------------------------------------------------------------------------------
def remove_from_list(store: Store, request: Request, list_id: str) -> Response:
    values = request.query.get("contact_ids", [])
    if len(values) > 1:  # sendgrid-python's urlencode(doseq=True) trap: refuse it loudly
        raise ApiError(
            400,
            "contact_ids",
            f"contact_ids given {len(values)} times; send one comma-separated value",
        )
    ids = [cid.strip() for cid in (values[0] if values else "").split(",") if cid.strip()]
    if not ids:
        raise ApiError(400, "contact_ids", "contact_ids is required: comma-separated contact ids")
    job_id = store.enqueue_removal(list_id, list(dict.fromkeys(ids)))
    return json_response(202, {"job_id": job_id})


def get_lists(store: Store, request: Request) -> Response:
    raw_size = request.param("page_size")
    try:
        size = DEFAULT_PAGE_SIZE if raw_size is None else int(raw_size)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ApiError(400, "page_size", f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}")
    token = request.param("page_token") or ""
    if token and not token.isdigit():
        raise ApiError(400, "page_token", "invalid page_token")
    offset = int(token or 0)
    items, total = store.lists_page(offset, size)
    base = f"{store.base_url}/v3/marketing/lists?page_size={size}&page_token="
    metadata: dict[str, Any] = {"self": f"{base}{token}", "count": total}
    if offset + size < total:
        metadata["next"] = f"{base}{offset + size}"
    if offset > 0:
        metadata["prev"] = f"{base}{max(0, offset - size)}"
    return json_response(200, {"result": items, "_metadata": metadata})


def get_list(store: Store, request: Request, list_id: str) -> Response:
    sample = (request.param("contact_sample") or "").lower() == "true"
    view = store.list_view(list_id, sample)
    if view is None:
        raise ApiError(404, None, f"list {list_id} not found")
    return json_response(200, view)


def get_list_count(store: Store, request: Request, list_id: str) -> Response:
    count = store.list_count(list_id)
    if count is None:
        raise ApiError(404, None, f"list {list_id} not found")
    return json_response(200, {"contact_count": count, "billable_count": count})


# -- custom fields ---------------------------------------------------------------------------------
def get_field_definitions(store: Store, request: Request) -> Response:
    return json_response(200, store.field_definitions())


def post_field_definition(store: Store, request: Request) -> Response:
    body = request.json_object()
    created = store.define_field(body.get("name"), body.get("field_type"))
    self_url = f"{store.base_url}/v3/marketing/field_definitions/{created['id']}"
    return json_response(200, {**created, "_metadata": {"self": self_url}})


# -- exports ---------------------------------------------------------------------------------------
def post_export(store: Store, request: Request) -> Response:
    body = request.json_object()
    list_ids = _string_list(body.get("list_ids", []), "list_ids")
    if body.get("segment_ids"):
        raise ApiError(400, "segment_ids", "the sandbox has no segments; export lists instead")
    file_type = body.get("file_type", "csv")
    if file_type not in ("csv", "json"):
        raise ApiError(400, "file_type", "file_type must be csv or json")
    export_id = store.enqueue_export(list_ids, file_type)
    self_url = f"{store.base_url}/v3/marketing/contacts/exports/{export_id}"
    return json_response(202, {"id": export_id, "_metadata": {"self": self_url}})


def list_exports(store: Store, request: Request) -> Response:
    self_url = f"{store.base_url}/v3/marketing/contacts/exports"
    return json_response(200, {"result": store.export_views(), "_metadata": {"self": self_url}})


def get_export(store: Store, request: Request, export_id: str) -> Response:
    view = store.export_view(export_id)
    if view is None:
        raise ApiError(404, None, f"export {export_id} not found")
    return json_response(200, view)


# -- downloads (what errors_url and export urls point at; no auth, like presigned URLs) -----------
def download_errors(store: Store, request: Request, job_id: str) -> Response:
    content = store.errors_csv(job_id)
    if content is None:
        raise ApiError(404, None, f"no errors file for job {job_id}")
    return Response(200, content, "text/csv; charset=utf-8")


def download_export(
    store: Store, request: Request, export_id: str, index: str, file_type: str
) -> Response:
    content = store.export_file(export_id, int(index), file_type)
    if content is None:
        raise ApiError(404, None, f"no such export file {request.path}")
    return Response(200, content, "application/gzip")


# The SGQL subset the sandbox answers: `email = '...'` or `email IN ('...', ...)`, with
# '' as an escaped quote. Anything else is a 400, as SendGrid answers a query it cannot parse.
_SGQL_LITERAL = r"'((?:[^']|'')*)'"
_SGQL_EMAIL = re.compile(
    rf"\s*email\s*(?:=\s*{_SGQL_LITERAL}|IN\s*\(\s*({_SGQL_LITERAL}(?:\s*,\s*{_SGQL_LITERAL})*)\s*\))\s*",
    re.IGNORECASE,
)
SGQL_RESULT_LIMIT = 50  # "Only the first 50 contacts that meet the search criteria"


def search_contacts(store: Store, request: Request) -> Response:
    query = request.json_object().get("query")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400, "query", "query must be a non-empty SGQL string")
    match = _SGQL_EMAIL.fullmatch(query)
    if match is None:
        raise ApiError(400, "query", "the sandbox understands only email = '...' or email IN (...)")
    literals = (
        [match.group(1)]
        if match.group(1) is not None
        else re.findall(_SGQL_LITERAL, match.group(2))
    )
    emails = [literal.replace("''", "'") for literal in literals]
    found = store.search_emails(emails)
    # SGQL matches the primary email only (alternate_emails are a separate field).
    contacts = [c for e, c in found.items() if c is not None and c["email"] == e.lower()]
    return json_response(
        200, {"result": contacts[:SGQL_RESULT_LIMIT], "contact_count": len(contacts)}
    )


# -- suppressions (tsg_suppressions_v3.json) ----------------------------------------------------
SUPPRESSION_KINDS = ("unsubscribes", "bounces", "spam_reports", "invalid_emails", "blocks")
SUPPRESSION_PAGE_MAX = 500  # PaginationCommonLimit: minimum 1, maximum 500
SUPPRESSION_PAGE_DEFAULT = 500  # "If omitted, the default page size is used" (not stated)


def _int_param(request: Request, name: str, minimum: int, maximum: int | None = None) -> int | None:
    """An integer query parameter within bounds, None when absent; a 400 naming it otherwise."""
    raw = request.param(name)
    if raw is None:
        return None
    if len(request.query.get(name, [])) > 1 or not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise ApiError(400, name, f"{name} must be one integer")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(400, name, f"{name} must be an integer {bound}")
    return value


def list_suppressions(store: Store, request: Request, kind: str) -> Response:
    """GET /v3/suppression/<kind>: start_time/end_time (inclusive, unix seconds), limit, offset."""
    start = _int_param(request, "start_time", 0)
    end = _int_param(request, "end_time", 0)
    limit = _int_param(request, "limit", 1, SUPPRESSION_PAGE_MAX)
    offset = _int_param(request, "offset", 0) or 0
    if start is not None and end is not None and start > end:
        raise ApiError(400, "start_time", "start_time must not be after end_time")
    page = store.suppressions_page(
        kind, start, end, offset, SUPPRESSION_PAGE_DEFAULT if limit is None else limit
    )
    return json_response(200, page)


def list_group_suppressions(store: Store, request: Request, group_id: str) -> Response:
    """GET /v3/asm/groups/{group_id}/suppressions: every address of the group, unpaged."""
    if not group_id.isdigit():
        raise ApiError(400, "group_id", f"group_id {group_id!r} must be an integer")
    emails = store.group_suppressions(int(group_id))
    if emails is None:
        raise ApiError(404, None, f"suppression group {group_id} not found")
    return json_response(200, emails)


Handler = Callable[..., Response]
_ID = r"([^/]+)"
ROUTES: tuple[tuple[str, re.Pattern[str], Handler], ...] = tuple(
    (method, re.compile(pattern), handler)
    for method, pattern, handler in (
        ("PUT", "/v3/marketing/contacts", upsert_contacts),
        ("GET", "/v3/marketing/contacts/count", get_contact_count),
        ("GET", f"/v3/marketing/contacts/imports/{_ID}", get_import),
        ("DELETE", "/v3/marketing/contacts", delete_contacts),
        ("POST", "/v3/recipients/erasejob", erase_recipients),
        ("POST", "/v3/marketing/contacts/search/emails", search_emails),
        ("POST", "/v3/marketing/contacts/search", search_contacts),
        ("POST", "/v3/marketing/contacts/exports", post_export),
        ("GET", "/v3/marketing/contacts/exports", list_exports),
        ("GET", f"/v3/marketing/contacts/exports/{_ID}", get_export),
        ("GET", "/v3/marketing/lists", get_lists),
        ("GET", f"/v3/marketing/lists/{_ID}", get_list),
        ("GET", f"/v3/marketing/lists/{_ID}/contacts/count", get_list_count),
        ("DELETE", f"/v3/marketing/lists/{_ID}/contacts", remove_from_list),
        ("GET", "/v3/marketing/field_definitions", get_field_definitions),
        ("POST", "/v3/marketing/field_definitions", post_field_definition),
        ("GET", f"/v3/suppression/({'|'.join(SUPPRESSION_KINDS)})", list_suppressions),
        ("GET", f"/v3/asm/groups/{_ID}/suppressions", list_group_suppressions),
        ("GET", f"/sandbox/errors/{_ID}\\.csv", download_errors),
        ("GET", f"/sandbox/exports/{_ID}/(\\d+)\\.(csv|json)\\.gz", download_export),
    )
)


def dispatch(store: Store, request: Request) -> Response:
    """Route a request; unknown method/path pairs answer 404 in SendGrid's error shape."""
    path = request.path.rstrip("/") or "/"
    for method, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match and method == request.method:
            try:
                return handler(store, request, *match.groups())
            except ApiError as problem:
                return error_response(problem.status, problem.errors)
    return error_response(404, [error(None, f"not found: {request.method} {request.path}")])
