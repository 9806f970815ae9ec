"""SendGrid's official API description as a contract for every request the sandbox receives.

The OpenAPI 3.1 files in `openapi/` are SendGrid's own (twilio/sendgrid-oai, MIT licence,
copied unchanged). A sandbox started with a `Contract` checks each API request against them:
the operation exists (method and path), its query parameters are declared and of the declared
type, and its JSON body validates against the request schema (JSON Schema 2020-12, with the
file's own `$ref`s). A request for a path none of the files describes is kept apart
(`undescribed`), so a test can name the endpoints it knowingly checks some other way.
The sandbox still answers every request as SendGrid would: the contract only records.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).parent / "openapi"
METHODS = ("get", "put", "post", "patch", "delete")


@dataclass(frozen=True)
class Violation:
    """One way a request departs from the official description."""

    method: str
    path: str
    where: str  # "operation", "query", "body"
    message: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.where}: {self.message}"


@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # e.g. /v3/marketing/lists/{id}/contacts
    pattern: re.Pattern[str]
    literal_segments: int  # more literal segments win: /contacts/count over /contacts/{id}
    document: str  # the spec file's URI in the registry
    pointer: str  # JSON pointer of the operation in that file
    spec: Mapping[str, Any]


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}/?$")


@dataclass
class Contract:
    """The operations of every OpenAPI file in `spec_dir`, and what the sandbox saw."""

    spec_dir: Path = SPEC_DIR
    violations: list[Violation] = field(default_factory=list)
    checked: set[tuple[str, str]] = field(default_factory=set)  # (method, template)
    undescribed: set[tuple[str, str]] = field(default_factory=set)  # (method, path)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        resources = []
        self._operations: list[Operation] = []
        for spec_file in sorted(self.spec_dir.glob("*.json")):
            document = json.loads(spec_file.read_text(encoding="utf-8"))
            uri = f"urn:sendgrid-oai:{spec_file.stem}"
            resources.append((uri, Resource.from_contents(document, DRAFT202012)))
            self._operations.extend(self._read_operations(uri, document))
        if not self._operations:
            raise FileNotFoundError(f"no OpenAPI description in {self.spec_dir}")
        self._registry: Registry = Registry().with_resources(resources)
        self._documents = {uri: resource.contents for uri, resource in resources}

    @staticmethod
    def _read_operations(uri: str, document: Mapping[str, Any]) -> Iterator[Operation]:
        for template, item in document.get("paths", {}).items():
            for method in METHODS:
                if method in item:
                    yield Operation(
                        method.upper(),
                        template,
                        _compile(template),
                        sum(1 for s in template.split("/") if s and not s.startswith("{")),
                        uri,
                        f"/paths/{_escape(template)}/{method}",
                        item[method],
                    )

    @property
    def templates(self) -> set[tuple[str, str]]:
        return {(op.method, op.template) for op in self._operations}

    def operation(self, method: str, path: str) -> Operation | None:
        """The described operation for a request, the most literal template first."""
        matches = [op for op in self._operations if op.method == method and op.pattern.match(path)]
        return max(matches, key=lambda op: op.literal_segments, default=None)

    # -- checking ------------------------------------------------------------------------------
    def check(
        self, method: str, path: str, query: Mapping[str, list[str]], body: bytes
    ) -> list[Violation]:
        """Check one request, record what was found, and return its violations."""
        operation = self.operation(method, path)
        if operation is None:
            described = any(op.pattern.match(path) for op in self._operations)
            if not described:
                with self._lock:
                    self.undescribed.add((method, path))
                return []
            found = [Violation(method, path, "operation", "no such method for this path")]
        else:
            found = self._check_query(operation, path, query) + self._check_body(
                operation, path, body
            )
        with self._lock:
            if operation is not None:
                self.checked.add((operation.method, operation.template))
            self.violations.extend(found)
        return found

    def _resolve(self, operation: Operation, node: Mapping[str, Any]) -> Mapping[str, Any]:
        """A parameter given as `{"$ref": "#/components/parameters/..."}`, resolved."""
        ref = node.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        target: Any = self._documents[operation.document]
        for token in ref[2:].split("/"):
            target = target[token.replace("~1", "/").replace("~0", "~")]
        return target

    def _parameters(self, operation: Operation) -> list[Mapping[str, Any]]:
        item = self._documents[operation.document]["paths"][operation.template]
        declared = list(item.get("parameters", [])) + list(operation.spec.get("parameters", []))
        return [self._resolve(operation, p) for p in declared]

    def _validator(self, operation: Operation, pointer: str) -> Draft202012Validator:
        schema = {"$ref": f"{operation.document}#{operation.pointer}{pointer}"}
        return Draft202012Validator(schema, registry=self._registry)

    def _check_query(
        self, operation: Operation, path: str, query: Mapping[str, list[str]]
    ) -> list[Violation]:
        found = []
        declared = {p["name"]: p for p in self._parameters(operation) if p.get("in") == "query"}
        for name in query:
            if name not in declared:
                found.append(
                    Violation(operation.method, path, "query", f"undeclared parameter {name!r}")
                )
        for name, parameter in declared.items():
            values = query.get(name)
            if not values:
                if parameter.get("required"):
                    found.append(
                        Violation(operation.method, path, "query", f"{name!r} is required")
                    )
                continue
            schema = _absolute(parameter.get("schema", {}), operation.document)
            value = _typed(values[-1], schema)
            validator = Draft202012Validator(schema, registry=self._registry)
            for problem in validator.iter_errors(value):
                found.append(
                    Violation(operation.method, path, "query", f"{name}: {problem.message}")
                )
        return found

    def _check_body(self, operation: Operation, path: str, body: bytes) -> list[Violation]:
        request_body = operation.spec.get("requestBody")
        if request_body is None:
            if body.strip():
                return [Violation(operation.method, path, "body", "a body where none is described")]
            return []
        if not body.strip():
            if request_body.get("required"):
                return [Violation(operation.method, path, "body", "the body is required")]
            return []
        if "application/json" not in request_body.get("content", {}):
            return [Violation(operation.method, path, "body", "not described as JSON")]
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return [Violation(operation.method, path, "body", f"not JSON: {exc}")]
        validator = self._validator(operation, "/requestBody/content/application~1json/schema")
        return [
            Violation(
                operation.method,
                path,
                "body",
                f"{'/'.join(str(p) for p in problem.absolute_path) or '(root)'}: "
                f"{problem.message[:300]}",
            )
            for problem in validator.iter_errors(payload)
        ]


def _absolute(schema: Any, document: str) -> Any:
    """A schema taken out of its file, with the file's local `$ref`s made absolute."""
    if isinstance(schema, dict):
        return {
            k: (
                f"{document}{v}"
                if k == "$ref" and isinstance(v, str) and v.startswith("#")
                else _absolute(v, document)
            )
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_absolute(v, document) for v in schema]
    return schema


def _typed(text: str, schema: Mapping[str, Any]) -> Any:
    """A query string value read as its schema's type (left as text when it is not one)."""
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
    except ValueError:
        return text
    if kind == "boolean":
        return {"true": True, "false": False}.get(text, text)
    if kind == "array":
        return text.split(",")
    return text
