"""``/api/command?action=NAME``: the Command API, compatible with BeyondTrust integrations.

Design section 8. ``GET`` or ``POST`` (parameters in the query string or a form body),
a bearer token from ``/oauth2/token``, and XML answers whose root element is named after
the action and carries the BeyondTrust default namespace::

    <check_health xmlns="https://www.beyondtrust.com/namespaces/API/command">…

Errors are ``<error xmlns="…">message</error>`` with an HTTP status saying whose fault it
is: 400 a bad or unknown action or parameter, 401 no/expired token, 403 the API account
lacks the permission, 500 our fault.

Actions live in a registry that features extend with :func:`register_action` (or the
:func:`action` decorator). Read-only actions need ``command:read``; actions that change
anything need ``command:full``. Handlers build un-namespaced elements (use
:func:`element` and :func:`sub`); the namespace is added to the root when rendering.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

from aiohttp import web
from multidict import MultiMapping

from atlas.node.app import NODE
from atlas.store.api_accounts import Permission
from atlas.web.auth import PRINCIPAL, AuthFailure, Principal, authenticate

log = logging.getLogger("atlas.command_api")

NAMESPACE = "https://www.beyondtrust.com/namespaces/API/command"
COMMAND_PATH = "/api/command"
API_VERSION = "1.0"
XML_CONTENT_TYPE = "text/xml"
MAX_PARAM_LENGTH = 4096

# Settings the data-sync feature records; check_health reports them when present.
LAST_DATA_SYNC_TIME = "last_data_sync_time"  # UNIX seconds (UTC), as text
LAST_DATA_SYNC_STATUS = "last_data_sync_status"
FAILOVER_ROLE = "failover_role"  # none | primary | backup

ActionHandler = Callable[[web.Request, Mapping[str, str]], Awaitable[ET.Element]]


# --- errors -----------------------------------------------------------------------------
class CommandError(Exception):
    """An answer ``<error>message</error>`` with ``status`` (400: the caller's request)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ParamError(CommandError):
    """A parameter is missing, malformed or out of range; the message names it."""


# --- the registry -------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    name: str
    permission: Permission
    handler: ActionHandler
    params: frozenset[str]
    """Parameter names the action accepts (besides ``action``); any other is an error."""


_ACTIONS: dict[str, Action] = {}
_COMMAND_PERMISSIONS = (Permission.COMMAND_READ, Permission.COMMAND_FULL)
_ACTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def register_action(
    name: str,
    permission: Permission,
    handler: ActionHandler,
    *,
    params: Collection[str] = (),
) -> None:
    """Add an action: ``permission`` is ``command:read`` for actions that only read and
    ``command:full`` for actions that change anything. ``params`` lists every parameter
    the action reads; a request with any other parameter gets a clear ``<error>``."""
    if permission not in _COMMAND_PERMISSIONS:
        raise ValueError(f"action {name}: permission must be command:read or command:full")
    if not _ACTION_NAME.fullmatch(name):
        raise ValueError(f"action name {name!r}: lower-case letters, digits and _ only")
    existing = _ACTIONS.get(name)
    if existing is not None and existing.handler is not handler:
        raise ValueError(f"action {name!r} is already registered by {existing.handler!r}")
    _ACTIONS[name] = Action(name, permission, handler, frozenset(params))


def action(
    name: str, permission: Permission, *, params: Collection[str] = ()
) -> Callable[[ActionHandler], ActionHandler]:
    """Decorator form of :func:`register_action`."""

    def decorate(handler: ActionHandler) -> ActionHandler:
        register_action(name, permission, handler, params=params)
        return handler

    return decorate


def registered_actions() -> dict[str, Action]:
    return dict(_ACTIONS)


# --- XML helpers ------------------------------------------------------------------------
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _XML_INVALID.sub("\ufffd", str(value))


def element(tag: str, text: object = None, /, **attrs: object) -> ET.Element:
    """A new element; ``text`` and attribute values are converted with ``str`` (booleans
    as ``true``/``false``) and characters XML cannot carry are replaced."""
    el = ET.Element(tag, {k: _text(v) for k, v in attrs.items()})
    if text is not None:
        el.text = _text(text)
    return el


def sub(parent: ET.Element, tag: str, text: object = None, /, **attrs: object) -> ET.Element:
    """Append a child element (see :func:`element`) and return it."""
    el = element(tag, text, **attrs)
    parent.append(el)
    return el


def iso_time(ts: float) -> str:
    """ISO 8601 in UTC, as BeyondTrust's ``ts``-carrying elements show it."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def render(root: ET.Element) -> bytes:
    """Serialise with the Command API namespace as the default namespace of the root."""
    if "}" in root.tag:
        raise ValueError("build Command API elements without a namespace; render() adds it")
    root.set("xmlns", NAMESPACE)
    out: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return out


def xml_response(
    root: ET.Element, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=render(root),
        status=status,
        content_type=XML_CONTENT_TYPE,
        charset="UTF-8",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(
    message: str, status: int, headers: Mapping[str, str] | None = None
) -> web.Response:
    return xml_response(element("error", message), status, headers)


# --- typed parameters ---------------------------------------------------------------------
_INT = re.compile(r"-?[0-9]{1,18}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(params: Mapping[str, str], name: str, required: bool) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise ParamError(f"parameter {name!r} is required")
        return None
    return value


@overload
def int_param(
    params: Mapping[str, str], name: str, *, default: int,
    min: int | None = None, max: int | None = None,
) -> int: ...
@overload
def int_param(
    params: Mapping[str, str], name: str, *, required: Literal[True],
    min: int | None = None, max: int | None = None,
) -> int: ...
@overload
def int_param(
    params: Mapping[str, str], name: str, *, required: Literal[False] = False,
    min: int | None = None, max: int | None = None,
) -> int | None: ...
def int_param(
    params: Mapping[str, str],
    name: str,
    *,
    default: int | None = None,
    required: bool = False,
    min: int | None = None,
    max: int | None = None,
) -> int | None:
    """An integer parameter in ``[min, max]``; empty counts as not given."""
    raw = _raw(params, name, required)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise ParamError(f"parameter {name!r} must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if (min is not None and value < min) or (max is not None and value > max):
        lo = "" if min is None else f" >= {min}"
        hi = "" if max is None else f" <= {max}"
        both = " and" if lo and hi else ""
        raise ParamError(f"parameter {name!r} must be{lo}{both}{hi}, got {value}")
    return value


@overload
def bool_param(params: Mapping[str, str], name: str, *, default: bool = False) -> bool: ...
@overload
def bool_param(params: Mapping[str, str], name: str, *, default: None) -> bool | None: ...
def bool_param(
    params: Mapping[str, str], name: str, *, default: bool | None = False
) -> bool | None:
    """A BeyondTrust boolean: ``1``/``0`` (also ``true``/``false``)."""
    raw = _raw(params, name, False)
    if raw is None:
        return default
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ParamError(f"parameter {name!r} must be 1 or 0, got {raw[:40]!r}")


@overload
def str_param(
    params: Mapping[str, str], name: str, *, default: str,
    choices: Collection[str] | None = None, max_length: int = 256,
) -> str: ...
@overload
def str_param(
    params: Mapping[str, str], name: str, *, required: Literal[True],
    choices: Collection[str] | None = None, max_length: int = 256,
) -> str: ...
@overload
def str_param(
    params: Mapping[str, str], name: str, *, required: Literal[False] = False,
    choices: Collection[str] | None = None, max_length: int = 256,
) -> str | None: ...
def str_param(
    params: Mapping[str, str],
    name: str,
    *,
    default: str | None = None,
    required: bool = False,
    choices: Collection[str] | None = None,
    max_length: int = 256,
) -> str | None:
    """A text parameter, optionally one of ``choices``."""
    raw = _raw(params, name, required)
    if raw is None:
        return default
    if len(raw) > max_length:
        raise ParamError(f"parameter {name!r} must be at most {max_length} characters")
    if choices is not None and raw not in choices:
        allowed = ", ".join(sorted(choices))
        raise ParamError(f"parameter {name!r} must be one of {allowed}, got {raw[:40]!r}")
    return raw


# --- the endpoint -----------------------------------------------------------------------
def _merge(target: dict[str, str], source: MultiMapping[Any]) -> None:
    for key in source:
        values = source.getall(key)
        for value in values:
            if not isinstance(value, str):
                raise ParamError(f"parameter {key!r} must be a plain value, not a file")
            if len(value) > MAX_PARAM_LENGTH or len(key) > 64:
                raise ParamError(f"parameter {key[:64]!r} is too long")
            if key in target and target[key] != value:
                raise ParamError(f"parameter {key!r} is given more than once")
            target[key] = value


async def _params(request: web.Request) -> dict[str, str]:
    params: dict[str, str] = {}
    _merge(params, request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise ParamError(
                "send parameters in the query string or as an "
                "application/x-www-form-urlencoded body"
            )
        try:
            form = await request.post()
        except ValueError:
            raise ParamError("the form body could not be parsed") from None
        _merge(params, form)
    return params


def _unauthenticated(failure: AuthFailure) -> web.Response:
    return error_response(failure.message, 401, {"WWW-Authenticate": failure.challenge})


async def command(request: web.Request) -> web.Response:
    if request.method not in ("GET", "POST"):
        return error_response(
            f"method {request.method} is not allowed; use GET or POST", 405,
            {"Allow": "GET, POST"},
        )
    who = await authenticate(request, allow_session=False)
    if isinstance(who, AuthFailure):
        return _unauthenticated(who)
    request[PRINCIPAL] = who
    try:
        params = await _params(request)
        name = params.pop("action", "")
        if not name:
            raise CommandError(
                f"parameter 'action' is required; actions: {', '.join(sorted(_ACTIONS))}"
            )
        act = _ACTIONS.get(name)
        if act is None:
            raise CommandError(
                f"unknown action {name[:64]!r}; actions: {', '.join(sorted(_ACTIONS))}"
            )
        if not who.allows(act.permission):
            raise CommandError(
                f"action {name} needs the {act.permission.value} permission; "
                f"this API account has {_perm_list(who)}",
                403,
            )
        unknown = sorted(set(params) - act.params)
        if unknown:
            accepted = ", ".join(sorted(act.params)) or "none"
            raise ParamError(
                f"action {name} does not take parameter {unknown[0][:64]!r}; "
                f"accepted: {accepted}"
            )
        root = await act.handler(request, params)
    except CommandError as exc:
        return error_response(exc.message, exc.status)
    except Exception:
        log.exception("command API action failed", extra={"action": request.query.get("action")})
        return error_response("internal error; the node's log has the details", 500)
    return xml_response(root)


def _perm_list(who: Principal) -> str:
    names = sorted(p.value for p in who.permissions)
    return ", ".join(names) if names else "no permissions"


# --- actions ------------------------------------------------------------------------------
@action("get_api_info", Permission.COMMAND_READ)
async def get_api_info(request: web.Request, params: Mapping[str, str]) -> ET.Element:
    """API version, server time and the caller's permissions (BeyondTrust ``perm_*``
    elements, plus one ``<permission>`` per Atlas permission the account holds)."""
    who = request[PRINCIPAL]
    root = element("get_api_info")
    sub(root, "api_version", API_VERSION)
    sub(root, "timestamp", int(time.time()))
    perms = sub(root, "permissions")
    if who.allows(Permission.COMMAND_FULL):
        command_level = "full_access"
    elif who.allows(Permission.COMMAND_READ):
        command_level = "read_only"
    else:
        command_level = "deny"
    sub(perms, "perm_command", command_level)
    sub(perms, "perm_configuration", int(who.allows(Permission.CONFIG_READ)))
    for p in sorted(who.permissions):
        sub(perms, "permission", p.value)
    return root


@action("check_health", Permission.COMMAND_READ)
async def check_health(request: web.Request, params: Mapping[str, str]) -> ET.Element:
    """This node's health in the BeyondTrust shape, as failover scripts read it."""
    node = request.config_dict[NODE]
    db = node.db
    root = element("check_health")
    appliance = sub(root, "appliance", id=node.identity.guid)
    sub(appliance, "hostname", node.identity.public.host)
    sub(appliance, "version", node.software_version)
    sub(appliance, "success", 1)
    sub(appliance, "enabled", True)
    sub(appliance, "failover_role", db.get_setting(FAILOVER_ROLE, "none"))
    sync_time = db.get_setting(LAST_DATA_SYNC_TIME)
    if sync_time:
        try:
            ts = float(sync_time)
        except ValueError:
            log.warning("unreadable %s setting: %r", LAST_DATA_SYNC_TIME, sync_time)
        else:
            sub(appliance, "last_data_sync_time", iso_time(ts), ts=int(ts))
    sync_status = db.get_setting(LAST_DATA_SYNC_STATUS)
    if sync_status:
        sub(appliance, "last_data_sync_status", sync_status)
    return root


# Modules whose import registers further actions (feature by feature).
ACTION_MODULES: tuple[str, ...] = (
    "atlas.web.command_cluster",
    "atlas.web.command_sessions",
)


def setup(app: web.Application) -> None:
    for name in ACTION_MODULES:
        importlib.import_module(name)
    app.router.add_route("*", COMMAND_PATH, command)
