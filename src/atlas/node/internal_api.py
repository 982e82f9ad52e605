"""The node-to-node API under ``/internal/v1/…``, served by every node (design section 4).

Every request must be signed with the cluster PSK (:mod:`atlas.protocol.signing`); one
:class:`~atlas.protocol.signing.Verifier` per process keeps the replay cache. A refused
request is answered 401 with ``{"error": {"reason", "message"}}`` and lands in the status
history ("pre-shared key mismatch with request from …"), identical rows at most once a
minute so a misconfigured peer cannot flood it. Every answer is signed and bound to the
request's nonce, errors included, so the caller can trust the reason it reads.

Endpoints:

* ``POST /internal/v1/sync`` — a master pushes the whole configuration document
  (guide: "Perform a … Data-Sync") and its API and representative accounts. The node
  refuses another software version (``version_mismatch``), validates the document and
  the accounts (a malformed account set refuses the whole sync, reason ``accounts``),
  applies both in one transaction — its own accounts are replaced by the master's: a
  standalone node that joins takes the master's as authoritative — and becomes a
  traffic node if it was standalone (:mod:`atlas.node.roles`).
* ``GET /internal/v1/health`` — what the master's health monitor reads.
* ``POST /internal/v1/accepting`` — the one-flag fast path for draining (guide:
  Accepting New Client Connections takes effect at once).
* ``POST /internal/v1/disable`` — the master's Disable Cluster notice.

:class:`LoadCounters` is the load a node reports (``load_counters(node)``); the session
modules increment it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from atlas.node import roles
from atlas.node.app import NODE
from atlas.node.roles import MasterIdentity, Role, RoleEvent
from atlas.node.runtime import Node
from atlas.protocol.signing import (
    NONCE_HEADER,
    SENDER_HEADER,
    SignatureError,
    SigningKey,
    VerifiedRequest,
    Verifier,
)
from atlas.store import account_sync, config_store, history
from atlas.store.account_sync import AccountSets, InvalidAccounts
from atlas.store.config_store import InvalidDocument

log = logging.getLogger("atlas.internal")

PREFIX = "/internal/v1"
HISTORY_REPEAT_SECONDS = 60.0
MAX_SKEW_SECONDS = 60


# --- load a node reports --------------------------------------------------------------


@dataclass
class LoadCounters:
    """Connected clients and active sessions on this node; 0 until sessions exist.

    The broker and relay increment and decrement these; the health endpoint reports them.
    """

    connected_clients: int = 0
    active_sessions: int = 0


_COUNTERS: weakref.WeakKeyDictionary[Node, LoadCounters] = weakref.WeakKeyDictionary()


def load_counters(node: Node) -> LoadCounters:
    """The node's :class:`LoadCounters` (also attached as ``node.counters``)."""
    counters = _COUNTERS.get(node)
    if counters is None:
        counters = _COUNTERS[node] = LoadCounters()
        node.counters = counters  # type: ignore[attr-defined]
    return counters


class _CpuSampler:
    """This process's CPU use in percent of one core, between two health checks."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()
        self._last = 0.0

    def sample(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        if wall - self._wall >= 0.5:
            self._last = round(100.0 * (cpu - self._cpu) / (wall - self._wall), 1)
            self._wall, self._cpu = wall, cpu
        return self._last


# --- per-process state ----------------------------------------------------------------


@dataclass
class InternalState:
    """The verifier (and its replay cache) for the node's current PSK."""

    psk_fingerprint: str | None = None
    key: SigningKey | None = None
    verifier: Verifier | None = None
    recorded: dict[str, float] = field(default_factory=dict)
    apply_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cpu: _CpuSampler = field(default_factory=_CpuSampler)

    def keys(self, node: Node) -> tuple[SigningKey, Verifier] | None:
        psk = node.psk
        if not psk:
            self.key = self.verifier = None
            self.psk_fingerprint = None
            return None
        key = SigningKey(psk)
        if self.verifier is None or self.psk_fingerprint != key.key_id:
            # A new PSK: a fresh replay cache (old nonces cannot verify under it anyway).
            self.key, self.verifier = key, Verifier(key, max_skew=MAX_SKEW_SECONDS)
            self.psk_fingerprint = key.key_id
        assert self.key is not None and self.verifier is not None
        return self.key, self.verifier

    def record_once(self, node: Node, message: str, status: int) -> None:
        """A status history row, unless the same one was recorded within a minute."""
        now = time.monotonic()
        last = self.recorded.get(message)
        if last is not None and now - last < HISTORY_REPEAT_SECONDS:
            return
        if len(self.recorded) > 1000:
            self.recorded = {
                m: t for m, t in self.recorded.items() if now - t < HISTORY_REPEAT_SECONDS
            }
        self.recorded[message] = now
        history.record(node.db, message, status)


INTERNAL: web.AppKey[InternalState] = web.AppKey("atlas_internal", InternalState)


# --- answers --------------------------------------------------------------------------


class Refusal(Exception):
    """Answer ``status`` with ``{"error": {"reason", "message", **extra}}``."""

    def __init__(self, status: int, reason: str, message: str, **extra: Any) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.extra = extra
        super().__init__(message)

    def payload(self) -> dict[str, Any]:
        return {"error": {"reason": self.reason, "message": self.message, **self.extra}}


def _reply(
    key: SigningKey | None, nonce: str | None, status: int, payload: dict[str, Any]
) -> web.Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    if key is not None and nonce is not None:
        try:
            headers.update(
                key.sign_response(status, body, request_nonce=nonce, timestamp=int(time.time()))
            )
        except ValueError:
            pass  # a malformed nonce: the answer goes unsigned
    return web.Response(status=status, body=body, headers=headers)


def _sender_label(node: Node, guid: str | None, remote: str | None) -> str:
    master = roles.master_identity(node.db)
    where = f" at {remote}" if remote else ""
    if guid and master is not None and guid == master.guid:
        return f"{master.name}{where}"
    if guid:
        return f"{guid[:64]}{where}"
    return remote or "an unknown sender"


def _refused_message(exc: SignatureError, sender: str) -> str:
    if exc.reason == "psk_mismatch":
        return f"Cluster: pre-shared key mismatch with request from {sender}."
    if exc.reason == "replayed_request":
        return f"Cluster: refused a replayed request from {sender}."
    if exc.reason == "bad_signature":
        return (
            f"Cluster: refused a request from {sender}: signature does not match "
            "(altered in transit?)."
        )
    if exc.reason == "stale_request":
        return f"Cluster: refused a request from {sender}: {exc.detail} (check the clocks)."
    return f"Cluster: refused a request from {sender}: {exc}."


Inner = Callable[[web.Request, Node, VerifiedRequest, bytes], Awaitable[dict[str, Any]]]


def _signed(inner: Inner) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Verify the request's signature, run ``inner``, sign its answer."""

    async def handler(request: web.Request) -> web.Response:
        node = request.app[NODE]
        state = request.app[INTERNAL]
        body = await request.read()
        nonce = request.headers.get(NONCE_HEADER)
        keys = state.keys(node)
        if keys is None:
            sender = _sender_label(node, request.headers.get(SENDER_HEADER), request.remote)
            state.record_once(
                node,
                f"Cluster: refused a request from {sender}: this node has no pre-shared key set.",
                history.FAILED,
            )
            refusal = Refusal(
                401, "psk_not_set",
                "this node has no Inter-appliance Communication Pre-shared Key set",
            )
            return _reply(None, None, refusal.status, refusal.payload())
        key, verifier = keys
        try:
            verified = verifier.verify(
                request.method, request.raw_path, request.headers, body, now=time.time()
            )
        except SignatureError as exc:
            sender = _sender_label(node, exc.claimed_sender, request.remote)
            state.record_once(node, _refused_message(exc, sender), history.FAILED)
            log.warning("internal request refused",
                        extra={"reason": exc.reason, "remote": request.remote})
            return _reply(key, nonce, 401, Refusal(401, exc.reason, str(exc)).payload())
        try:
            payload = await inner(request, node, verified, body)
            status = 200
        except Refusal as refusal:
            status, payload = refusal.status, refusal.payload()
        return _reply(key, nonce, status, payload)

    return handler


signed = _signed
"""Public name of the signature guard, for features adding their own internal routes."""


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise Refusal(400, "bad_request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Refusal(400, "bad_request", "the body is not a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Refusal(400, "bad_request", f"{name!r} is missing or not a {kind.__name__}")
    return value


def _require_master(node: Node, sender: str) -> MasterIdentity:
    """The node must be a traffic node of the sender."""
    role = roles.current_role(node.db)
    master = roles.master_identity(node.db)
    if role is not Role.TRAFFIC or master is None:
        raise Refusal(409, "not_in_cluster", f"this node is {role.value}, not a traffic node")
    if master.guid != sender:
        raise Refusal(
            409, "other_master",
            f"this node is a traffic node of {master.name} ({master.internal}), "
            "not of the sender",
        )
    return master


# --- endpoints ------------------------------------------------------------------------


async def _sync(
    request: web.Request, node: Node, verified: VerifiedRequest, body: bytes
) -> dict[str, Any]:
    data = _json_object(body)
    revision = _field(data, "revision", int)
    document = _field(data, "document", str)
    version = _field(data, "version", str)
    target = _field(data, "target", str)
    master_data = _field(data, "master", dict)
    master_guid = _field(master_data, "guid", str)
    master_name = _field(master_data, "name", str)
    master_internal = _field(master_data, "internal", str)
    stream_keys = _stream_keys(data)
    if version != node.software_version:
        raise Refusal(
            409, "version_mismatch",
            f"this node runs {node.software_version}, the master runs {version}",
            version=node.software_version,
        )
    if master_guid != verified.sender:
        raise Refusal(400, "bad_request", "the master GUID is not the signed sender")
    db = node.db
    async with request.app[INTERNAL].apply_lock:
        role = roles.current_role(db)
        if not roles.allowed(role, RoleEvent.ACCEPT_SYNC):
            raise Refusal(
                409, "wrong_role",
                f"this node is a {role.value} master: it does not take data syncs",
            )
        held = config_store.current_revision(db)
        current_master = roles.master_identity(db)
        if role is Role.TRAFFIC and current_master is not None:
            if current_master.guid != master_guid:
                raise Refusal(
                    409, "other_master",
                    f"this node is a traffic node of {current_master.name} "
                    f"({current_master.internal}): remove it from that cluster first",
                )
            if revision < held:
                raise Refusal(
                    409, "stale_revision",
                    f"this node holds revision {held}, newer than {revision}",
                )
        try:
            config = await asyncio.to_thread(config_store.parse_pushed, document, revision)
        except InvalidDocument as exc:
            raise Refusal(422, "invalid_document", str(exc), errors=exc.errors) from None
        entry = next((n for n in config.traffic_nodes if n.name == target), None)
        if entry is None:
            raise Refusal(
                422, "invalid_document", f"the document lists no traffic node {target!r}"
            )
        if entry.guid is not None and entry.guid != node.identity.guid:
            raise Refusal(
                409, "wrong_node",
                f"traffic node {target!r} is appliance {entry.guid}; this is "
                f"{node.identity.guid}",
            )
        accounts = await asyncio.to_thread(_accounts, data)
        master = MasterIdentity(
            site_hostname=config.site_hostname, name=master_name, guid=master_guid,
            internal=master_internal,
        )

        def apply() -> None:
            config_store.apply_synced(
                db, document, revision, author=f"data sync from {master_name}", parsed=config,
                accounts=accounts,
                then=lambda: roles.transition(
                    db, RoleEvent.ACCEPT_SYNC, master=master, member=target
                ),
            )

        try:
            await asyncio.to_thread(apply)
        except InvalidDocument as exc:
            raise Refusal(422, "invalid_document", str(exc), errors=exc.errors) from None
    if revision != held:
        history.record(
            db, f"Data Sync: Applied configuration revision {revision} from {master_name}."
        )
    if stream_keys:
        _trust_stream_keys(request.app, node, stream_keys)
    # check_health / /api/v1/health report when this node last took a data sync.
    db.set_setting("last_data_sync_time", str(int(time.time())))
    db.set_setting("last_data_sync_status", f"applied revision {revision} from {master_name}")
    return {
        "revision": revision,
        "guid": node.identity.guid,
        "name": node.identity.name,
        "version": node.software_version,
    }


def _accounts(data: dict[str, Any]) -> AccountSets:
    """The master's account sets in a sync request, validated (a Refusal if malformed)."""
    try:
        return account_sync.parse_accounts(data.get("accounts"))
    except InvalidAccounts as exc:
        raise Refusal(422, "accounts", str(exc)) from None


def _stream_keys(data: dict[str, Any]) -> list[bytes]:
    """The master's stream-token public keys in a sync request (optional; PEM)."""
    from atlas.broker.stream_tokens import MAX_KEYS, public_key_from_pem

    raw = data.get("stream_keys", [])
    if not isinstance(raw, list) or len(raw) > MAX_KEYS or not all(
        isinstance(k, str) and len(k) < 4096 for k in raw
    ):
        raise Refusal(400, "bad_request", "'stream_keys' must be a short list of PEM keys")
    keys = [k.encode() for k in raw]
    for pem in keys:
        try:
            public_key_from_pem(pem)
        except ValueError as exc:
            raise Refusal(400, "bad_request", f"'stream_keys': {exc}") from None
    return keys


def _trust_stream_keys(app: web.Application, node: Node, pems: list[bytes]) -> None:
    """Keep the master's keys in the data directory and in the running relay at once."""
    from atlas.broker.stream_tokens import load_trusted_keys, save_trusted_keys
    from atlas.relay.endpoint import RELAY

    keyring = load_trusted_keys(node.datadir)
    for pem in pems:
        keyring.add_pem(pem)
    save_trusted_keys(node.datadir, keyring)
    relay = app.get(RELAY)
    if relay is not None:
        for pem in pems:
            relay.keyring.add_pem(pem)


async def _health(
    request: web.Request, node: Node, verified: VerifiedRequest, body: bytes
) -> dict[str, Any]:
    db = node.db
    role = roles.current_role(db)
    master = roles.master_identity(db)
    member = roles.member_name(db)
    config = config_store.load(db)
    accepting: bool | None = None
    if config is not None and member is not None:
        entry = next((n for n in config.traffic_nodes if n.name == member), None)
        accepting = None if entry is None else entry.accepting
    counters = load_counters(node)
    return {
        "online": True,
        "guid": node.identity.guid,
        "name": node.identity.name,
        "version": node.software_version,
        "role": role.value,
        "revision": config_store.current_revision(db),
        "master_guid": None if master is None else master.guid,
        "member_name": member,
        "accepting": accepting,
        "load": {
            "connected_clients": counters.connected_clients,
            "active_sessions": counters.active_sessions,
            "cpu_percent": request.app[INTERNAL].cpu.sample(),
        },
        "uptime_seconds": round(time.time() - node.started_at, 3),
    }


async def _accepting(
    request: web.Request, node: Node, verified: VerifiedRequest, body: bytes
) -> dict[str, Any]:
    data = _json_object(body)
    accepting = _field(data, "accepting", bool)
    revision = _field(data, "revision", int)
    master = _require_master(node, verified.sender)
    name = roles.member_name(node.db)
    if name is None:
        raise Refusal(409, "not_in_cluster", "this node has not completed a data sync")
    try:
        await asyncio.to_thread(config_store.apply_accepting, node.db, name, accepting, revision)
    except LookupError as exc:
        raise Refusal(409, "unknown_node", str(exc)) from None
    sessions_left = load_counters(node).active_sessions
    state = "now accepting" if accepting else "no longer accepting"
    history.record(
        node.db,
        f"Cluster: {master.name} set this node {state} new client connections "
        f"(revision {revision}).",
    )
    return {"accepting": accepting, "revision": revision, "sessions_left": sessions_left}


async def _disable(
    request: web.Request, node: Node, verified: VerifiedRequest, body: bytes
) -> dict[str, Any]:
    db = node.db
    role = roles.current_role(db)
    if role is Role.STANDALONE:
        return {"ok": True, "role": role.value, "already_standalone": True}
    master = _require_master(node, verified.sender)

    def forget() -> None:
        config_store.clear(
            db, then=lambda: roles.transition(db, RoleEvent.DISABLE_NOTICE)
        )

    async with request.app[INTERNAL].apply_lock:
        await asyncio.to_thread(forget)
    history.record(
        db,
        f"Cluster: {master.name} disabled the cluster; this node is no longer in a cluster.",
    )
    return {"ok": True, "role": Role.STANDALONE.value, "already_standalone": False}


def setup(app: web.Application) -> None:
    app[INTERNAL] = InternalState()
    load_counters(app[NODE])
    app.router.add_post(f"{PREFIX}/sync", _signed(_sync))
    app.router.add_get(f"{PREFIX}/health", _signed(_health))
    app.router.add_post(f"{PREFIX}/accepting", _signed(_accepting))
    app.router.add_post(f"{PREFIX}/disable", _signed(_disable))


__all__ = [
    "INTERNAL",
    "PREFIX",
    "InternalState",
    "LoadCounters",
    "Refusal",
    "load_counters",
    "setup",
    "signed",
]
