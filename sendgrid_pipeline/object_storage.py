"""One storage base for step outputs, reports and request files: a directory or an object store.

A base is a plain directory path, a `file://` URL, or an object-store URL: `s3://bucket/prefix`
(also `s3a://`), `gs://bucket/prefix` (also `gcs://`), `az://container/prefix` (also
`azure://`, `adl://`) or `abfs[s]://container@account.dfs.core.windows.net/prefix`.
Objects are named by a relative, `/`-separated path under the base.

Parquet is written with polars' own cloud I/O (`DataFrame.write_parquet` with
`storage_options`) and read by polars from the object's bytes, fetched in one GET (see
`read_parquet`); bytes, listing, metadata, rename and delete on an object store go through
`obstore` (the same Rust `object_store` crate that polars uses, so one set of options serves
both). A local base needs neither network nor `obstore`.

Connection settings (endpoint, region, credentials) come from the standard environment
variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) unless `storage_options` gives them; explicit options
override the environment. This module never reads the process environment itself: the caller
passes the variables (`environment=`, read once by `Settings.from_env`); the base's own
provider's standard variables become options, and every secret among them is scrubbed from
messages. (polars and obstore may still consult the process environment for what no option
sets, e.g. a web-identity token file.) Keys are those of `object_store`, as polars documents them
(`aws_endpoint_url`, `aws_region`, `aws_access_key_id`, `google_service_account`,
`azure_storage_account_name`, ...). An `http://` endpoint allows plain HTTP by itself.

Writes replace an object whole: a local write goes to a unique temporary file and is renamed
into place, an object-store PUT is atomic. A reader sees the old object or the new, never part
of one. Messages name the object's URL and never a credential.
"""

from __future__ import annotations

import io
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import polars as pl

__all__ = [
    "STORAGE_ENV_PREFIXES",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStorageError",
    "StorageLocation",
]

# The environment variables a storage base may take its settings from (see Settings).
STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")

# Scheme as written -> the scheme both polars and obstore understand.
_CLOUD_SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "az",
    "azure": "az",
    "adl": "adl",
    "abfs": "abfs",
    "abfss": "abfss",
}
# One segment of a relative path: no empty, hidden ('.'-led, so no '..') or odd names.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,254}")
# object_store's HTTP client keys: obstore takes them apart from the store's own keys.
_CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_max_frame_size",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "timeout",
        "user_agent",
    }
)
_ENDPOINT_KEYS = frozenset({"endpoint", "endpoint_url", "aws_endpoint", "aws_endpoint_url"})
# Keys only polars reads (its retry and cache settings); obstore would reject them.
_POLARS_ONLY_PREFIXES = ("file_cache_ttl", "max_retries", "retry_", "rate_")
_SECRET_WORDS = ("secret", "key", "token", "password", "sas", "credential", "signature")
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
# Variables that become options (lowercased: AWS_REGION -> aws_region) for a base of that
# provider: keys both polars and obstore accept. Others are left to the libraries themselves.
_ENV_OPTIONS = {
    "s3": frozenset(
        f"AWS_{k}"
        for k in (
            "ACCESS_KEY_ID",
            "SECRET_ACCESS_KEY",
            "SESSION_TOKEN",
            "REGION",
            "DEFAULT_REGION",
            "ENDPOINT",
            "ENDPOINT_URL",
            "ALLOW_HTTP",
            "SKIP_SIGNATURE",
            "VIRTUAL_HOSTED_STYLE_REQUEST",
        )
    ),
    "gs": frozenset(
        {
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
        }
    ),
    "az": frozenset(
        f"AZURE_{k}"
        for k in (
            "STORAGE_ACCOUNT_NAME",
            "STORAGE_ACCOUNT_KEY",
            "STORAGE_ACCESS_KEY",
            "STORAGE_SAS_KEY",
            "STORAGE_SAS_TOKEN",
            "STORAGE_CLIENT_ID",
            "STORAGE_CLIENT_SECRET",
            "STORAGE_TENANT_ID",
            "STORAGE_USE_EMULATOR",
            "CLIENT_ID",
            "CLIENT_SECRET",
            "TENANT_ID",
        )
    ),
}


class ObjectStorageError(Exception):
    """Storage could not be read or written; the message names the URL, never a credential."""


class ObjectNotFoundError(ObjectStorageError, FileNotFoundError):
    """No object at the URL the message names."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store tells about one object without reading it."""

    path: str  # relative to the base
    size: int
    last_modified: datetime
    version: str  # changes whenever the object is rewritten (ETag, or mtime and inode locally)


class StorageLocation:
    """A storage base: read and write objects by relative path.

    `environment`: the provider variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) the caller read;
    explicit `storage_options` override them.

    >>> StorageLocation("s3://bucket/outputs").url_for("contacts/a.parquet")
    's3://bucket/outputs/contacts/a.parquet'
    """

    def __init__(
        self,
        base: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        *,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self._environment = {
            k: v for k, v in (environment or {}).items() if k.startswith(STORAGE_ENV_PREFIXES)
        }
        self._options = _normalized_options(storage_options or {})
        self._store: Any = None
        self._store_lock = threading.Lock()
        text = os.fspath(base)
        if not text.strip():
            raise ValueError("a storage base cannot be empty")
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme in ("", "file") or len(scheme) == 1:  # a plain path (or a Windows drive)
            self._local_root: Path | None = self._parse_local(text, parts)
            self._url = (
                self._local_root.as_uri() if scheme == "file" else str(self._local_root)
            ).rstrip("/")
            self._scheme = "file"
            return
        if scheme not in _CLOUD_SCHEMES:
            known = ", ".join(sorted({f"{s}://" for s in _CLOUD_SCHEMES}))
            raise ValueError(
                f"unsupported storage base scheme {scheme}://: use a directory, file://, {known}"
            )
        if parts.password is not None or parts.query or parts.fragment:
            raise ValueError(
                f"a {scheme}:// storage base holds no credentials, query or fragment: give "
                "them as storage options or in the environment"
            )
        if not parts.netloc:
            raise ValueError(f"storage base {text!r} names no bucket or container")
        self._local_root = None
        self._scheme = _CLOUD_SCHEMES[scheme]
        prefix = parts.path.strip("/")
        if prefix:
            for segment in prefix.split("/"):
                _check_segment(segment, text)
        self._prefix = prefix
        self._url = f"{self._scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
        provider = "az" if self._scheme in ("adl", "abfs", "abfss") else self._scheme
        from_env = {
            name.lower(): value
            for name, value in self._environment.items()
            if name in _ENV_OPTIONS[provider] and value
        }
        self._options = _normalized_options({**from_env, **self._options})

    @staticmethod
    def _parse_local(text: str, parts: Any) -> Path:
        if parts.scheme.lower() != "file":
            return Path(text).expanduser().absolute()
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// base {text!r} names a host; use file:///absolute/path")
        if not parts.path.startswith("/"):
            raise ValueError(f"file:// base {text!r} is not absolute; use file:///absolute/path")
        return Path(unquote(parts.path))

    # -- what it is ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base, as shown in messages (a path for a directory given as a path)."""
        return self._url

    @property
    def is_local(self) -> bool:
        return self._local_root is not None

    @property
    def storage_options(self) -> dict[str, str]:
        """The options polars receives: explicit ones over those from the environment
        (possibly holding credentials: never log)."""
        return dict(self._options)

    def __repr__(self) -> str:
        return f"StorageLocation({self._url!r})"  # options may hold credentials: never shown

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StorageLocation):
            return NotImplemented
        return (self._url, self._options) == (other._url, other._options)

    def __hash__(self) -> int:
        return hash(self._url)

    def url_for(self, relative_path: str) -> str:
        """The full URL (or local path) of an object."""
        relative = _relative(relative_path)
        if self._local_root is not None:
            path = self._local_root.joinpath(*relative.split("/"))
            return path.as_uri() if self._url.startswith("file:") else str(path)
        return f"{self._url}/{relative}"

    def child(self, relative_prefix: str) -> StorageLocation:
        """A location for a sub-prefix (e.g. the requests folder), with the same options."""
        relative = _relative(relative_prefix)
        sub = StorageLocation.__new__(StorageLocation)
        sub.__dict__.update(self.__dict__)
        sub._store = None
        sub._store_lock = threading.Lock()
        if self._local_root is not None:
            sub._local_root = self._local_root.joinpath(*relative.split("/"))
            sub._url = f"{self._url}/{relative}"
        else:
            sub._prefix = f"{self._prefix}/{relative}" if self._prefix else relative
            sub._url = f"{self._url}/{relative}"
        return sub

    # -- Parquet (polars' own I/O) ----------------------------------------------------------------
    def write_parquet(self, frame: pl.DataFrame, relative_path: str) -> None:
        """Store a frame as one Parquet object, replacing any earlier one whole."""
        url = self.url_for(relative_path)
        if self._local_root is not None:
            self._write_local(relative_path, lambda tmp: _parquet_to(frame, tmp))
            return
        try:
            frame.write_parquet(
                url, compression="lz4", statistics=False, storage_options=self._options or None
            )
        except Exception as error:
            raise self._failure("write", url, error) from None

    def read_parquet(
        self, relative_path: str, columns: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """A stored frame (only `columns`, those of them it has, when given); ObjectNotFoundError
        names the URL when there is none.

        The object is fetched whole in one read (one open file, or one GET) and parsed from
        memory: polars reading by path or URL asks for the size and the byte ranges separately,
        so a writer replacing the object in between made it mix two versions (a "wrong page
        size" error or a panic in about 1 of 7 reads under concurrent rewrites, locally and
        on S3).
        """
        data = self.read_bytes(relative_path)
        try:
            if columns is not None:
                present = pl.read_parquet_schema(io.BytesIO(data))
                columns = [c for c in dict.fromkeys(columns) if c in present]
            return pl.read_parquet(io.BytesIO(data), columns=columns)
        except Exception as error:
            raise self._failure("read", self.url_for(relative_path), error) from None
        except BaseException as error:  # pyo3's PanicException derives from BaseException
            if type(error).__name__ != "PanicException":
                raise
            raise self._failure("read", self.url_for(relative_path), error) from None

    # -- bytes (reports, request files) -----------------------------------------------------------
    def write_bytes(self, relative_path: str, data: bytes) -> None:
        """Store bytes as one object, replacing any earlier one whole."""
        payload = bytes(data)
        if self._local_root is not None:
            self._write_local(relative_path, lambda tmp: tmp.write_bytes(payload))
            return
        url = self.url_for(relative_path)
        obstore = _obstore()
        try:
            obstore.put(self._object_store(), self._key(relative_path), payload)
        except Exception as error:
            raise self._failure("write", url, error) from None

    def read_bytes(self, relative_path: str, *, max_bytes: int | None = None) -> bytes:
        """An object's bytes. With max_bytes, a larger object raises ObjectStorageError
        before more than max_bytes + 1 bytes are read (a bound for untrusted files)."""
        url = self.url_for(relative_path)
        if self._local_root is not None:
            try:
                with open(self._path(relative_path), "rb") as handle:
                    data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise ObjectNotFoundError(f"no object at {url}") from None
            except OSError as error:
                raise self._failure("read", url, error) from None
        else:
            obstore = _obstore()
            store, key = self._object_store(), self._key(relative_path)
            try:
                if max_bytes is not None and obstore.head(store, key)["size"] > max_bytes:
                    raise ObjectStorageError(f"{url} is larger than {max_bytes} bytes")
                data = bytes(obstore.get(store, key).bytes())
            except ObjectStorageError:
                raise
            except FileNotFoundError:
                raise ObjectNotFoundError(f"no object at {url}") from None
            except Exception as error:
                raise self._failure("read", url, error) from None
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectStorageError(f"{url} is larger than {max_bytes} bytes")
        return data

    # -- the rest ---------------------------------------------------------------------------------
    def exists(self, relative_path: str) -> bool:
        if self._local_root is not None:
            return self._path(relative_path).is_file()
        try:
            self.info(relative_path)
        except ObjectNotFoundError:
            return False
        return True

    def info(self, relative_path: str) -> ObjectInfo:
        """Size, modification time and version of an object (ObjectNotFoundError if none)."""
        relative = _relative(relative_path)
        url = self.url_for(relative)
        if self._local_root is not None:
            path = self._path(relative)
            try:
                status = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                raise ObjectNotFoundError(f"no object at {url}") from None
            if not path.is_file():
                raise ObjectNotFoundError(f"no object at {url}")
            modified = datetime.fromtimestamp(status.st_mtime_ns / 1e9, UTC)
            version = f"{status.st_ino}-{status.st_mtime_ns}-{status.st_size}"
            return ObjectInfo(relative, status.st_size, modified, version)
        obstore = _obstore()
        try:
            meta = obstore.head(self._object_store(), self._key(relative))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object at {url}") from None
        except Exception as error:
            raise self._failure("look up", url, error) from None
        version = meta.get("version") or meta.get("e_tag") or str(meta["last_modified"])
        return ObjectInfo(relative, int(meta["size"]), meta["last_modified"], str(version))

    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of the objects under a folder-like prefix ("" for all), sorted.

        The prefix is whole segments: "contacts" lists contacts/..., never contacts_old/...
        Names with a segment starting with "." (temporary files) are left out.
        """
        start = _relative(prefix) if prefix.strip("/") else ""
        if self._local_root is not None:
            found = self._list_local(start)
        else:
            found = self._list_remote(start)
        return sorted(p for p in found if not any(s.startswith(".") for s in p.split("/")))

    def delete(self, relative_path: str) -> None:
        """Remove an object; removing one that is not there is not an error."""
        url = self.url_for(relative_path)
        if self._local_root is not None:
            try:
                self._path(relative_path).unlink(missing_ok=True)
            except OSError as error:
                raise self._failure("delete", url, error) from None
            return
        obstore = _obstore()
        try:
            obstore.delete(self._object_store(), self._key(relative_path))
        except FileNotFoundError:
            return
        except Exception as error:
            raise self._failure("delete", url, error) from None

    def rename(self, source: str, target: str) -> None:
        """Move an object to a new relative path (replacing what is there). Local: one atomic
        rename; object store: copy then delete (a reader may briefly see both)."""
        url = self.url_for(source)
        if self._local_root is not None:
            destination = self._path(target)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(self._path(source), destination)
            except FileNotFoundError:
                raise ObjectNotFoundError(f"no object at {url}") from None
            except OSError as error:
                raise self._failure("move", url, error) from None
            return
        obstore = _obstore()
        try:
            obstore.rename(self._object_store(), self._key(source), self._key(target))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object at {url}") from None
        except Exception as error:
            raise self._failure("move", url, error) from None

    # -- internals --------------------------------------------------------------------------------
    def _path(self, relative_path: str) -> Path:
        assert self._local_root is not None
        return self._local_root.joinpath(*_relative(relative_path).split("/"))

    def _key(self, relative_path: str) -> str:
        return _relative(relative_path)  # the obstore store carries the prefix

    def _write_local(self, relative_path: str, write: Any) -> None:
        path = self._path(relative_path)
        url = self.url_for(relative_path)
        # a temporary name of its own: two writers of the same object never share it
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as error:
            raise self._failure("write", url, error) from None
        finally:
            tmp.unlink(missing_ok=True)

    def _list_local(self, start: str) -> Iterator[str]:
        assert self._local_root is not None
        folder = self._local_root.joinpath(*start.split("/")) if start else self._local_root
        if not folder.is_dir():
            return
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            here = Path(root)
            for name in files:
                if (here / name).is_file():
                    yield (here / name).relative_to(self._local_root).as_posix()

    def _list_remote(self, start: str) -> Iterator[str]:
        obstore = _obstore()
        try:
            for batch in obstore.list(self._object_store(), start or None):
                for meta in batch:
                    yield meta["path"]
        except Exception as error:
            where = f"{self._url}/{start}" if start else self._url
            raise self._failure("list", where, error) from None

    def _object_store(self) -> Any:
        with self._store_lock:
            if self._store is None:
                from obstore.store import from_url

                config: dict[str, str] = {}
                client: dict[str, str] = {}
                for key, value in self._options.items():
                    bare = re.sub(r"^(aws|google|azure)_", "", key)
                    if bare in _CLIENT_KEYS:
                        client[bare] = value
                    elif not key.startswith(_POLARS_ONLY_PREFIXES):
                        config[key] = value
                try:
                    self._store = from_url(
                        self._url, config=config or None, client_options=client or None
                    )
                except Exception as error:
                    raise self._failure("open", self._url, error) from None
            return self._store

    def _failure(self, action: str, url: str, error: BaseException) -> ObjectStorageError:
        detail = _redacted(str(error).strip().splitlines()[0] if str(error).strip() else "", self)
        kind = type(error).__name__
        return ObjectStorageError(f"could not {action} {url}: {kind}: {detail}"[:1000])


def _obstore() -> Any:
    try:
        import obstore
    except ImportError:  # pragma: no cover - a declared dependency
        raise ObjectStorageError(
            "object-store bases need the 'obstore' package (pip install obstore)"
        ) from None
    return obstore


def _parquet_to(frame: pl.DataFrame, path: Path) -> None:
    frame.write_parquet(path, compression="lz4", statistics=False)


def _check_segment(segment: str, whole: str) -> None:
    if not _SEGMENT.fullmatch(segment):
        raise ValueError(
            f"{whole!r}: each part of an object path uses letters, digits and '_.=+-', does not "
            f"start with '.', '=', '+' or '-', and has at most 255 characters (not {segment!r})"
        )


def _relative(relative_path: str) -> str:
    """A checked relative object path: `a/b.parquet`, never absolute, hidden or with '..'."""
    if not isinstance(relative_path, str):
        raise TypeError(f"an object path is a string, not {type(relative_path).__name__}")
    if relative_path.startswith("/") or "\\" in relative_path:
        raise ValueError(f"{relative_path!r}: an object path is relative and uses '/'")
    stripped = relative_path.rstrip("/")
    if not stripped:
        raise ValueError("an object path cannot be empty")
    for segment in stripped.split("/"):
        _check_segment(segment, relative_path)
    return stripped


def _normalized_options(options: Mapping[str, Any]) -> dict[str, str]:
    normalized: dict[str, str] = {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        normalized[str(key).lower()] = str(value)
    has_http_endpoint = any(
        normalized.get(key, "").lower().startswith("http://") for key in _ENDPOINT_KEYS
    )
    if has_http_endpoint and not any(k.endswith("allow_http") for k in normalized):
        normalized["allow_http"] = "true"  # a plain-HTTP endpoint (an emulator) needs it
    return normalized


def _redacted(text: str, location: StorageLocation) -> str:
    secrets = [
        value
        for key, value in location._options.items()
        if any(word in key for word in _SECRET_WORDS)
    ]
    secrets += [
        value
        for name, value in location._environment.items()
        if value and (name in _SECRET_ENV or any(w in name.lower() for w in _SECRET_WORDS))
    ]
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
