"""Configuring the demo cluster through the REST API, as an operator's script would.

``atlas demo`` does it when it starts and ``atlas demo set-method`` on a running demo:
read the cluster (``GET /api/v1/cluster``), work out the calls that make it what the
layout and the chosen method say (:func:`plan_configuration`, pure), make them — Create
New Cluster, Add or Edit Traffic Node, Method for Choosing Traffic Nodes — then **Sync
Now** and wait until every traffic node is online and holds the new revision.

Starting the demo resets each traffic node to the layout (``reset``); changing the
method edits only the traffic nodes' Network Address Prefixes, so a node an operator
drained stays drained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel

from atlas.demo.errors import DemoError
from atlas.demo.layout import DemoLayout, MethodChoice, describe_method
from atlas.model.config import ClusterConfig, HealthSettings, SelectionSettings, TrafficNode
from atlas.net.api_client import AtlasClient, ClientError, node_path
from atlas.node.roles import Role as ClusterRole
from atlas.selection.viability import NotViable
from atlas.web.api_v1.cluster_models import (
    ChangeOut,
    ClusterOut,
    SyncReportOut,
    TrafficNodeStatusOut,
)

CLUSTER = "/api/v1/cluster"
SYNC_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
VIABLE = "viable"  # a traffic node's state in GET /api/v1/cluster when clients may land on it

Say = Callable[[str], None]


@dataclass(frozen=True)
class NodeEdit:
    """One Add Traffic Node (``add``) or Edit Traffic Node call."""

    name: str
    body: dict[str, Any]
    add: bool


@dataclass(frozen=True)
class ConfigPlan:
    """The REST calls that make the cluster what the layout and the method say."""

    create: dict[str, Any] | None  # POST /api/v1/cluster: the primary is still standalone
    health: dict[str, Any] | None  # PUT …/health-settings
    nodes: tuple[NodeEdit, ...]
    selection: dict[str, Any] | None  # PUT …/selection
    changes: tuple[str, ...]  # what changes, one line each, for the operator


def current_method(document: ClusterConfig) -> str:
    """The method a configuration document holds, as :meth:`MethodChoice.describe` says it."""
    prefixes = any(t.prefixes for t in document.traffic_nodes)
    return describe_method(document.selection.method.value, prefixes)


def _text(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def _diff(old: BaseModel, new: BaseModel, skip: Sequence[str] = ()) -> list[str]:
    """``field old → new`` for every field that differs."""
    return [f"{name} {_text(getattr(old, name))} → {_text(getattr(new, name))}"
            for name in type(new).model_fields
            if name not in skip and getattr(old, name) != getattr(new, name)]


def plan_configuration(layout: DemoLayout, choice: MethodChoice,
                       document: ClusterConfig | None, *, reset: bool) -> ConfigPlan:
    """What to send: ``document`` is the primary's configuration (None: a standalone node).

    ``reset`` makes every traffic node exactly :meth:`DemoLayout.traffic_node_body`;
    otherwise only the prefixes of the nodes already there change. Nothing that already
    matches is sent again, so a second run makes no new revision.
    """
    changes: list[str] = []
    create: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    existing: dict[str, TrafficNode] = {}
    if document is None:
        create = {"site_hostname": layout.site,
                  "primary": {"name": layout.primary.name, "public": layout.primary.public},
                  "health": layout.health_body()}
        changes.append(f"+ Create New Cluster {layout.site} with {layout.primary.name} as "
                       f"primary master (POST {CLUSTER})")
    else:
        existing = {t.name.lower(): t for t in document.traffic_nodes}
        wanted_health = HealthSettings.model_validate(layout.health_body())
        if document.health != wanted_health:
            health = layout.health_body()
            changes.append("~ health checks: " + "; ".join(_diff(document.health,
                                                                 wanted_health)))
    edits: list[NodeEdit] = []
    for node in layout.traffic_nodes:
        body = layout.traffic_node_body(node, choice.prefixes)
        current = existing.get(node.name.lower())
        if current is None:
            edits.append(NodeEdit(node.name, body, add=True))
            changes.append(f"+ traffic node {node.name}: prefixes {_text(body['prefixes'])}, "
                           f"timezone {body['timezone']}, region {body['region']}")
            continue
        if not reset:
            body = {**current.model_dump(mode="json", exclude={"guid"}),
                    "prefixes": body["prefixes"]}
        wanted = TrafficNode.model_validate({**body, "guid": current.guid})
        if wanted != current:
            edits.append(NodeEdit(current.name, body, add=False))
            changes.append(f"~ traffic node {current.name}: "
                           + "; ".join(_diff(current, wanted, skip=("guid",))))
    selection: dict[str, Any] | None = layout.selection_body(choice)
    wanted_selection = SelectionSettings.model_validate(selection)
    if document is None:
        changes.append(f"~ method for choosing traffic nodes: {choice.describe()}")
    elif document.selection == wanted_selection:
        selection = None
    else:
        old = document.selection
        parts = _diff(old, wanted_selection, skip=("method",))
        if old.method != wanted_selection.method:
            parts.insert(0, f"{old.method.value} → {wanted_selection.method.value}")
        changes.append("~ method for choosing traffic nodes: " + "; ".join(parts))
    return ConfigPlan(create=create, health=health, nodes=tuple(edits), selection=selection,
                      changes=tuple(changes))


async def configure_cluster(api: AtlasClient, layout: DemoLayout, choice: MethodChoice,
                            say: Say, *, reset: bool) -> tuple[ConfigPlan, ClusterOut]:
    """Make the cluster what ``layout`` and ``choice`` say, Sync Now, wait until synced.

    Returns what was changed and the cluster status once every traffic node is online
    and holds the new revision. Raises :class:`DemoError` when anything fails.
    """
    try:
        status, etag = await api.call(ClusterOut, "GET", CLUSTER)
        if status.role is ClusterRole.STANDALONE:
            document = None
        elif status.role is ClusterRole.PRIMARY and status.document is not None:
            document = status.document
            say(f"{layout.primary.name} is the primary master of {status.site_hostname} "
                f"(revision {status.revision}, method {current_method(document)})")
        else:
            raise DemoError(f"{layout.primary.name} is a {status.role.value} node, not the "
                            "primary master; remove the demo directory to start afresh")
        plan = plan_configuration(layout, choice, document, reset=reset)
        for line in plan.changes or ("nothing to change: the cluster already uses "
                                     f"{choice.describe()}",):
            say(f"  {line}")
        if plan.create is not None:
            _, etag = await api.call(ChangeOut, "POST", CLUSTER, json_body=plan.create,
                                     if_match="rev-0")
        if plan.health is not None:
            _, etag = await api.call(ChangeOut, "PUT", f"{CLUSTER}/health-settings",
                                     json_body=plan.health, if_match=etag)
        for edit in plan.nodes:
            if edit.add:
                _, etag = await api.call(ChangeOut, "POST", f"{CLUSTER}/traffic-nodes",
                                         json_body=edit.body, if_match=etag)
            else:
                _, etag = await api.call(ChangeOut, "PUT", node_path(edit.name),
                                         json_body=edit.body, if_match=etag)
        if plan.selection is not None:
            _, etag = await api.call(ChangeOut, "PUT", f"{CLUSTER}/selection",
                                     json_body=plan.selection, if_match=etag)
        revision = int(etag.removeprefix("rev-")) if etag and etag.startswith("rev-") else None
        say(f"Sync Now: revision {revision if revision is not None else '?'} to "
            f"{len(layout.traffic_nodes)} traffic nodes")
        report, _ = await api.call(SyncReportOut, "POST", f"{CLUSTER}/sync",
                                   timeout=SYNC_TIMEOUT)
    except ClientError as exc:
        raise DemoError(f"configuring the cluster through the REST API failed: "
                        f"{exc.message}") from None
    if not report.ok:
        failed = [f"{r.name}: {r.reason or ''} {r.message or ''}".strip()
                  for r in report.results if not r.ok]
        raise DemoError(f"Sync Now failed: {report.summary}; " + "; ".join(failed))
    return plan, await wait_synced(api)


def synced_problems(status: ClusterOut) -> list[str]:
    """Why the cluster is not yet fully synced (empty: every traffic node is online,
    viable — or drained, when an operator turned Accepting off — and holds the current
    revision)."""
    def ready(t: TrafficNodeStatusOut) -> bool:
        drained = not t.accepting and t.state == NotViable.NOT_ACCEPTING.value
        return (t.online and (t.state == VIABLE or drained)
                and t.acknowledged_revision == status.revision and not t.needs_sync)

    waiting = [f"{t.name}: {t.state}, revision {t.acknowledged_revision}"
               for t in status.traffic_nodes if not ready(t)]
    if not status.traffic_nodes:
        waiting.append("no traffic nodes")
    if status.sync_needed and not waiting:
        waiting.append("a sync is needed")
    return waiting


async def wait_synced(api: AtlasClient, timeout: float = SYNC_TIMEOUT) -> ClusterOut:
    """Poll ``GET /api/v1/cluster`` until every traffic node is online, viable and holds
    the current revision."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _ = await api.call(ClusterOut, "GET", CLUSTER)
        except ClientError as exc:
            raise DemoError(f"GET {CLUSTER} failed: {exc.message}") from None
        waiting = synced_problems(status)
        if not waiting:
            return status
        if time.monotonic() > deadline:
            raise DemoError(f"traffic nodes not online and synced to revision "
                            f"{status.revision} within {timeout:g} s: " + "; ".join(waiting))
        await asyncio.sleep(POLL_INTERVAL)


__all__ = [
    "CLUSTER",
    "ConfigPlan",
    "NodeEdit",
    "configure_cluster",
    "current_method",
    "plan_configuration",
    "synced_problems",
    "wait_synced",
]
