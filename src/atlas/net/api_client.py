"""A small typed HTTP client of ``/api/v1``: the ``atlas`` CLI, the demo and the cluster test.

Where and who: the site URL, an API account's client id and secret, and the CA file to
trust, from options or the environment (``ATLAS_URL``, ``ATLAS_CLIENT_ID``,
``ATLAS_CLIENT_SECRET``, ``ATLAS_CA_FILE``). It trades the credentials for a bearer token
at ``/oauth2/token`` (RFC 6749 §4.4) on first use, then calls ``/api/v1`` and parses the
answers with the same pydantic models the server declares.

Every failure is a :class:`ClientError` whose :attr:`~ClientError.exit_code` is what the
CLI exits with, so scripts can tell them apart:

==  ==========================================================================
0   ok
1   the operation failed (a sync failure, a server error)
2   usage or validation error (a bad option, a bad file, 400/404/415/422)
3   authentication or permission error (401, 403, refused credentials)
4   conflict: the cluster changed meanwhile, or the request clashes (409, 412, 428)
5   the site is unreachable (connection refused, DNS, TLS, timeout)
==  ==========================================================================
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
from pydantic import BaseModel, ValidationError

from atlas.net.resolver import Resolver
from atlas.net.tls import client_context

ENV_URL = "ATLAS_URL"
ENV_CLIENT_ID = "ATLAS_CLIENT_ID"
ENV_CLIENT_SECRET = "ATLAS_CLIENT_SECRET"  # noqa: S105 - the variable's name
ENV_CA_FILE = "ATLAS_CA_FILE"
TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path
DEFAULT_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_CONFLICT = 4
EXIT_UNREACHABLE = 5

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class FieldIssue:
    field: str
    message: str


class ClientError(Exception):
    """A failed call; ``exit_code`` as in the module docstring."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 fields: tuple[FieldIssue, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.fields = fields


class UsageError(ClientError):
    exit_code = EXIT_USAGE


class AuthError(ClientError):
    exit_code = EXIT_AUTH


class ConflictError(ClientError):
    exit_code = EXIT_CONFLICT


class UnreachableError(ClientError):
    exit_code = EXIT_UNREACHABLE


def error_for_status(status: int) -> type[ClientError]:
    """The error class (and so the exit code) an HTTP error status maps to."""
    if status in (401, 403):
        return AuthError
    if status in (409, 412, 428):
        return ConflictError
    if status in (400, 404, 405, 413, 415, 422):
        return UsageError
    return ClientError


@dataclass(frozen=True)
class Connection:
    """Where the site is and who calls it."""

    url: str
    client_id: str
    client_secret: str
    ca_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        ca_file: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> Connection:
        """Options first, then the environment; :class:`UsageError` for what is missing."""
        environ = os.environ if env is None else env
        url = url or environ.get(ENV_URL) or ""
        client_id = client_id or environ.get(ENV_CLIENT_ID) or ""
        client_secret = client_secret or environ.get(ENV_CLIENT_SECRET) or ""
        ca_text = str(ca_file) if ca_file else environ.get(ENV_CA_FILE) or ""
        missing = [
            f"{option} (or {var})"
            for option, var, value in (
                ("--url", ENV_URL, url),
                ("--client-id", ENV_CLIENT_ID, client_id),
                ("--client-secret", ENV_CLIENT_SECRET, client_secret),
            )
            if not value
        ]
        if missing:
            raise UsageError(
                f"missing {', '.join(missing)}: the site's URL and an API account's "
                "credentials (create one with `atlas api-account create DATA_DIR --name cli "
                "--permission config:write`)"
            )
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(f"--url {url!r}: expected https://HOST[:PORT]")
        ca = Path(ca_text) if ca_text else None
        if ca is not None and not ca.is_file():
            raise UsageError(f"--ca-file {ca}: no such file")
        base = f"https://{parts.netloc}"
        return cls(base, client_id, client_secret, ca)


@dataclass
class Response:
    status: int
    body: Any
    etag: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _unquote_etag(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    return text


def _describe_connection_error(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({exc.certificate_error}); pass --ca-file"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed ({exc})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class AtlasClient:
    """``async with AtlasClient(conn) as api: doc, etag = await api.get_cluster()``."""

    def __init__(self, conn: Connection, *, resolver: Resolver | None = None) -> None:
        self.conn = conn
        # The project resolver: ATLAS_DNS (or the given resolver) names the DNS server.
        self._resolver = resolver or Resolver.from_env()
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None

    async def __aenter__(self) -> AtlasClient:
        ctx: ssl.SSLContext = client_context(self.conn.ca_file)
        self._session = aiohttp.ClientSession(
            base_url=self.conn.url,
            connector=aiohttp.TCPConnector(ssl=ctx, resolver=self._resolver.aiohttp_resolver()),
            timeout=aiohttp.ClientTimeout(total=self.conn.timeout),
        )
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use AtlasClient as an async context manager")
        return self._session

    # --- transport ----------------------------------------------------------------------

    async def token(self) -> str:
        if self._token is not None:
            return self._token
        # RFC 6749 §2.3.1: form-encode the id and secret, then HTTP Basic.
        basic = base64.b64encode(
            f"{quote_plus(self.conn.client_id)}:{quote_plus(self.conn.client_secret)}".encode()
        ).decode("ascii")
        try:
            async with self.session.post(
                TOKEN_PATH, data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            ) as r:
                raw = await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UnreachableError(
                f"{self.conn.url} is unreachable: {_describe_connection_error(exc)}"
            ) from None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            why = body.get("error_description") or body.get("error") if isinstance(body, dict) \
                else None
            if status in (400, 401, 429):
                raise AuthError(
                    f"the API account was refused at {TOKEN_PATH} ({status}: "
                    f"{why or 'invalid client'}); check --client-id and --client-secret",
                    status=status,
                )
            raise ClientError(f"{TOKEN_PATH} answered {status}: {why or raw[:200]!r}",
                              status=status)
        self._token = str(body["access_token"])
        return self._token

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        if_match: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One API call; raises :class:`ClientError` for anything but 2xx/304."""
        headers = {"Authorization": f"Bearer {await self.token()}"}
        if if_match is not None:
            headers["If-Match"] = if_match if if_match == "*" else f'"{if_match}"'
        kwargs: dict[str, Any] = {"headers": headers}
        if json_body is not None:
            kwargs["json"] = json_body
        if params:
            kwargs["params"] = dict(params)
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.request(method, path, **kwargs) as r:
                raw = await r.read()
                status, etag = r.status, _unquote_etag(r.headers.get("ETag"))
                resp_headers = dict(r.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UnreachableError(
                f"{self.conn.url} is unreachable: {_describe_connection_error(exc)}"
            ) from None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if status >= 400:
            raise self._error(status, body, raw)
        return Response(status, body, etag, resp_headers)

    @staticmethod
    def _error(status: int, body: Any, raw: bytes) -> ClientError:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or f"HTTP {status}")
            code = str(err.get("code") or "")
            fields = tuple(
                FieldIssue(str(f.get("field", "")), str(f.get("message", "")))
                for f in err.get("fields") or [] if isinstance(f, dict)
            )
        else:
            message, code, fields = f"HTTP {status}: {raw[:200]!r}", "", ()
        return error_for_status(status)(message, status=status, code=code, fields=fields)

    async def call(self, model: type[M], method: str, path: str, **kwargs: Any
                   ) -> tuple[M, str | None]:
        """An API call whose answer is ``model``; also returns the answer's ETag."""
        response = await self.request(method, path, **kwargs)
        try:
            return model.model_validate(response.body), response.etag
        except ValidationError as exc:
            raise ClientError(
                f"{method} {path}: unexpected answer ({exc.error_count()} problems; "
                "is the site running the same Atlas version?)"
            ) from None


def node_path(name: str) -> str:
    """``/api/v1/cluster/traffic-nodes/<name>``, the name escaped."""
    return f"/api/v1/cluster/traffic-nodes/{quote(name, safe='')}"


__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "AtlasClient",
    "AuthError",
    "ClientError",
    "ConflictError",
    "Connection",
    "FieldIssue",
    "Response",
    "UnreachableError",
    "UsageError",
    "error_for_status",
    "node_path",
]
