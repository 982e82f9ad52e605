"""``/api/v1/cluster``: everything /login → Management → Cluster does, as JSON.

Guide: "Configure the Primary Master Node", "Configure the Traffic Nodes", "Methods for
Choosing Traffic Nodes", "Perform a … Data-Sync", "Perform a … Cluster Test".

* The configuration document is versioned: ``GET`` answers ``ETag: "rev-N"`` and every
  change needs ``If-Match`` with it (428 without, 412 when stale; the framework's
  RFC 9110 answers, rather than the 409 the issue first proposed). A change that leaves
  the document as it was saves no revision (``changed: false``).
* A bad input is 422 naming the field, in the request body's own terms
  (``prefixes``, not ``traffic_nodes.3.prefixes``), and nothing is stored.
* A node name or address already used by another node is 409 (``name_taken``,
  ``address_taken``); so is a change sent to a node that is not the primary master,
  with where to go instead.
* ``GET /api/v1/cluster/route`` is the guide's "Identify the Expected Node": a dry run of
  the traffic-node choice for a hypothetical client with the live health snapshot.

The operations themselves are in :mod:`atlas.node.cluster` (Create New Cluster, Sync
Now, Accepting, Disable Cluster) and :mod:`atlas.store.config_store` (edits).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from atlas.cluster_plan import carry_guids, same_document
from atlas.model.config import ClusterConfig, HealthSettings, SelectionSettings, TrafficNode
from atlas.model.errors import describe_errors
from atlas.node import cluster as cluster_ops
from atlas.node import roles
from atlas.node.health_monitor import TrafficNodeHealth, monitor_for
from atlas.node.peers import NoPreSharedKey
from atlas.node.roles import Role, WrongRole
from atlas.node.runtime import Node
from atlas.node.sync import SyncInProgress, SyncProgress, SyncStatus
from atlas.selection import ClientFacts, assess_viability, prefix_candidates, select_traffic_node
from atlas.selection.decision import NodeChosen
from atlas.store import config_store, history
from atlas.store.config_store import NodeStatus, StaleRevision
from atlas.web.api_v1.cluster_models import (
    AcceptingIn,
    AcceptingOut,
    ChangeOut,
    ClientOut,
    ClusterOut,
    CreateClusterIn,
    DisableReportOut,
    HistoryOut,
    HistoryRowOut,
    LimitQuery,
    MasterOut,
    NodeHealthOut,
    NodeLoadOut,
    NodeSyncOut,
    NodeSyncResultOut,
    NotifyResultOut,
    PrefixMatchOut,
    PrimaryUpdateIn,
    RevisionOut,
    RevisionsOut,
    RouteOut,
    RouteQuery,
    SyncProgressOut,
    SyncReportOut,
    SyncStatusOut,
    ThisNodeOut,
    TrafficNodePath,
    TrafficNodeStatusOut,
)
from atlas.web.api_v1.errors import ApiError, FieldProblem, conflict, not_found
from atlas.web.api_v1.routing import ApiContext, api
from atlas.web.auth import Principal

BASE = "/api/v1/cluster"
TAGS = ("cluster",)
VIABLE = "viable"


# --- helpers -----------------------------------------------------------------------------


def etag_of(revision: int) -> str:
    """The ETag of the configuration document at ``revision`` (``rev-0``: none)."""
    return f"rev-{revision}"


def _tag(node: Node) -> str:
    return etag_of(config_store.current_revision(node.db))


def _author(principal: Principal) -> str:
    if principal.kind == "api_account":
        return f"{principal.name} (API)"
    return principal.name


def _time(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)


def _not_primary(node: Node) -> ApiError:
    """409 for a change sent to a node that is not the primary master: where to go."""
    db = node.db
    role = roles.current_role(db)
    if role is Role.TRAFFIC:
        held = config_store.load(db)
        master = roles.master_identity(db)
        if held is not None:
            site, url = held.site_hostname, f"https://{held.primary.public}"
        elif master is not None:
            site, url = master.site_hostname, f"https://{master.internal}"
        else:  # pragma: no cover - a traffic node always knows its master
            site, url = "its site", "(unknown)"
        return conflict(
            f"this node is a traffic node of {site}; change the cluster on its master {url}",
            code="not_primary",
        )
    if role is Role.BACKUP:
        return conflict(
            "this node is the backup master node; change the cluster on the primary master",
            code="not_primary",
        )
    if role is Role.PRIMARY:
        return conflict("this primary master node holds no cluster configuration",
                        code="no_cluster")
    return conflict(
        "this node is not in a cluster: create one first (POST /api/v1/cluster, "
        "`atlas cluster create`)",
        code="no_cluster",
    )


def _primary_config(node: Node) -> ClusterConfig:
    """The current document of this primary master; 409 on any other node."""
    if roles.current_role(node.db) is not Role.PRIMARY:
        raise _not_primary(node)
    config = config_store.load(node.db)
    if config is None:
        raise _not_primary(node)
    return config


def _stale(exc: StaleRevision) -> ApiError:
    now = etag_of(exc.current)
    return ApiError(412, str(exc), code="precondition_failed", headers={"ETag": f'"{now}"'})


def _unprocessable(exc: ValidationError, strip: str = "") -> ApiError:
    """422 from a document validation, with paths inside ``strip`` made relative to the
    request body (``traffic_nodes.3.prefixes`` → ``prefixes``)."""
    fields: list[FieldProblem] = []
    for problem in describe_errors(exc):
        path = problem["field"]
        if strip and (path + ".").startswith(strip):
            path = path[len(strip):]
        fields.append(FieldProblem(field=path, message=problem["message"]))
    first = fields[0]
    summary = f"{first.field or 'request'}: {first.message}"
    if len(fields) > 1:
        summary += f" (and {len(fields) - 1} more)"
    return ApiError(422, summary, fields=fields)


def _validate(data: dict[str, Any], strip: str = "") -> ClusterConfig:
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise _unprocessable(exc, strip) from None


def _dump(config: ClusterConfig) -> dict[str, Any]:
    data: dict[str, Any] = config.model_dump(mode="json")
    return data


def _role_label(config: ClusterConfig, node: object) -> str:
    if node is config.primary:
        return "primary master node"
    if node is config.backup:
        return "backup master node"
    return "traffic node"


def _check_clash(
    config: ClusterConfig,
    name: str,
    addresses: tuple[object, ...],
    *,
    instead_of: object | None = None,
) -> None:
    """409 when another node (not ``instead_of``) has this name or one of these
    addresses (guide: "This name must be unique among all nodes in the cluster")."""
    other = config.node_by_name(name)
    if other is not None and other is not instead_of:
        raise conflict(
            f"name {name!r} is already used by the {_role_label(config, other)} "
            f"{other.name!r}: node names are unique in the cluster (compared ignoring case)",
            code="name_taken",
        )
    wanted = {a for a in addresses if a is not None}
    for node in config.all_nodes():
        if node is instead_of:
            continue
        for address in (node.public, node.internal):
            if address is not None and address in wanted:
                raise conflict(
                    f"address {address} is already used by the {_role_label(config, node)} "
                    f"{node.name!r}: each node has its own canonical hostname and port",
                    code="address_taken",
                )


def _find_traffic_node(config: ClusterConfig, name: str) -> tuple[int, TrafficNode]:
    found = config.node_by_name(name)
    for index, node in enumerate(config.traffic_nodes):
        if node is found:
            return index, node
    raise not_found(f"the cluster has no traffic node named {name!r}")


def _save(ctx: ApiContext, current: ClusterConfig, new: ClusterConfig) -> ChangeOut:
    """Store ``new`` as the next revision, unless it is the current document already."""
    db = ctx.node.db
    if same_document(current, new):
        ctx.set_etag(etag_of(current.revision))
        return ChangeOut(revision=current.revision, changed=False,
                         sync_needed=config_store.sync_needed(db), document=current)
    try:
        saved = config_store.save(db, new, expected_revision=current.revision,
                                  author=_author(ctx.principal))
    except StaleRevision as exc:
        raise _stale(exc) from None
    ctx.set_etag(etag_of(saved.revision))
    return ChangeOut(revision=saved.revision, changed=True,
                     sync_needed=config_store.sync_needed(db), document=saved)


# --- reading -----------------------------------------------------------------------------


def _load_out(health: TrafficNodeHealth | None) -> NodeLoadOut | None:
    if health is None or health.load is None:
        return None
    load = health.load
    return NodeLoadOut(connected_clients=load.connected_clients,
                       active_sessions=load.active_sessions, cpu_percent=load.cpu_percent)


def _health_out(h: TrafficNodeHealth | None) -> NodeHealthOut | None:
    if h is None:
        return None
    return NodeHealthOut(
        online=h.online, last_seen=_time(h.last_seen), last_check=_time(h.last_check),
        version=h.version, revision=h.revision, role=h.role, in_this_cluster=h.in_this_cluster,
        accepting=h.accepting, load=_load_out(h), error_reason=h.error_reason, error=h.error,
    )


def _sync_out(s: NodeStatus | None) -> NodeSyncOut | None:
    if s is None:
        return None
    return NodeSyncOut(
        guid=s.guid, reported_name=s.reported_name, version=s.version,
        acknowledged_revision=s.acked_revision, accepting_revision=s.accepting_revision,
        last_sync_at=_time(s.last_sync_at), last_sync_status=s.last_sync_status,
        last_error_reason=s.last_error_reason, last_error=s.last_error,
    )


def _progress_out(p: SyncProgress) -> SyncProgressOut:
    return SyncProgressOut(node=p.node, address=p.address, state=p.state.value, done=p.done,
                           total=p.total, reason=p.reason, message=p.message)


def _sync_status_out(s: SyncStatus) -> SyncStatusOut:
    return SyncStatusOut(
        running=s.running, revision=s.revision, started_at=_time(s.started_at),
        finished_at=_time(s.finished_at), done=s.done, total=s.total,
        nodes=[_progress_out(p) for p in s.nodes.values()],
    )


def _traffic_nodes_out(node: Node, status: cluster_ops.ClusterStatus,
                       config: ClusterConfig | None) -> list[TrafficNodeStatusOut]:
    if config is None or not status.nodes:
        return []
    viability = assess_viability(config, monitor_for(node).snapshot(), node.software_version,
                                 dt.datetime.now(dt.UTC))
    configured = {t.name: t for t in config.traffic_nodes}
    out: list[TrafficNodeStatusOut] = []
    for t in status.nodes:
        entry = configured.get(t.name)
        h, s = t.health, t.sync
        why = viability.not_viable.get(t.name)
        load = _load_out(h)
        out.append(TrafficNodeStatusOut(
            name=t.name,
            guid=(entry.guid if entry is not None and entry.guid else None)
            or (s.guid if s is not None else None),
            public=t.public, internal=t.internal, region=t.region, accepting=t.accepting,
            capacity=entry.capacity if entry is not None else 0,
            state=VIABLE if why is None else why.value,
            online=bool(h and h.online),
            last_seen=_time(h.last_seen) if h else None,
            version=(h.version if h else None) or (s.version if s else None),
            acknowledged_revision=s.acked_revision if s else 0,
            needs_sync=t.needs_sync,
            load=load,
            sessions_left=load.active_sessions if load is not None and not t.accepting else None,
            sync=_sync_out(s),
            health=_health_out(h),
        ))
    return out


@api.route("GET", BASE, summary="Cluster status and configuration", response=ClusterOut,
           etag=True, tags=TAGS)
async def get_cluster(ctx: ApiContext) -> ClusterOut:
    """Current Status, the configuration document with its revision (ETag ``rev-N``),
    whether a sync is needed, and every traffic node's state: online, last seen, software
    version, acknowledged revision, load and, while not accepting, the sessions left.
    ``If-None-Match`` compares the revision only: to watch live health, poll without it."""
    node = ctx.node
    status = cluster_ops.status(node)
    config = config_store.load(node.db)
    master = status.master
    ident = node.identity
    ctx.set_etag(etag_of(status.revision))
    return ClusterOut(
        role=status.role,
        description=status.description,
        this_node=ThisNodeOut(guid=ident.guid, name=ident.name, version=node.software_version,
                              public=str(ident.public)),
        site_hostname=status.site_hostname,
        revision=status.revision,
        sync_needed=status.sync_needed,
        master=MasterOut(site_hostname=master.site_hostname, name=master.name,
                         guid=master.guid, internal=master.internal) if master else None,
        member_name=status.member_name,
        document=config,
        traffic_nodes=_traffic_nodes_out(node, status, config),
        sync=_sync_status_out(status.sync),
    )


@api.route("GET", f"{BASE}/document", summary="The configuration document",
           response=ClusterConfig, etag=True, errors=(404,), tags=TAGS)
async def get_cluster_document(ctx: ApiContext) -> ClusterConfig:
    """Only the document (what ``atlas cluster export`` writes), ETag ``rev-N``; 404 when
    this node is in no cluster."""
    config = config_store.load(ctx.node.db)
    if config is None:
        raise not_found("this node is not in a cluster: it holds no configuration document")
    ctx.set_etag(etag_of(config.revision))
    return config


@api.route("GET", f"{BASE}/history", summary="Status history", response=HistoryOut,
           query=LimitQuery, tags=TAGS)
async def get_cluster_history(ctx: ApiContext, query: LimitQuery) -> HistoryOut:
    """The Status History table (time, status, message), newest first."""
    rows = history.recent(ctx.node.db, limit=query.limit)
    return HistoryOut(rows=[
        HistoryRowOut(id=r.id, time=dt.datetime.fromtimestamp(r.at, dt.UTC), status=r.status,
                      message=r.message)
        for r in rows
    ])


@api.route("GET", f"{BASE}/revisions", summary="Configuration revisions",
           response=RevisionsOut, query=LimitQuery, tags=TAGS)
async def get_cluster_revisions(ctx: ApiContext, query: LimitQuery) -> RevisionsOut:
    """Stored revisions of the document, newest first, with who saved each."""
    db = ctx.node.db
    current = config_store.current_revision(db)
    return RevisionsOut(current=current, revisions=[
        RevisionOut(revision=r.revision, kind=r.kind.value, subject=r.subject, author=r.author,
                    created_at=dt.datetime.fromtimestamp(r.created_at, dt.UTC),
                    current=r.revision == current)
        for r in config_store.history(db, limit=query.limit)
    ])


# --- Create New Cluster and the master node ---------------------------------------------


@api.route("POST", BASE, summary="Create New Cluster", body=CreateClusterIn,
           response=ChangeOut, status=201, etag=True, errors=(409,), tags=TAGS)
async def create_cluster(ctx: ApiContext, body: CreateClusterIn) -> ChangeOut:
    """Make this standalone node the primary master of a new cluster (guide: "Create New
    Cluster"). Send ``If-Match: "rev-0"`` (or ``*``)."""
    node = ctx.node
    db = node.db
    role = roles.current_role(db)
    if role is Role.PRIMARY:
        held = config_store.load(db)
        site = held.site_hostname if held is not None else "a cluster"
        raise conflict(
            f"this node is already the primary master node of {site}; change the cluster "
            "with PUT /api/v1/cluster/…, or disable it first",
            code="cluster_exists",
        )
    if role is not Role.STANDALONE:
        raise _not_primary(node)
    ctx.check_if_match(_tag(node))
    ident = node.identity
    # Guide: the internal address "can be the same as the public address": a public
    # address given without an internal one is both; neither given: this node's own.
    if body.primary.public is not None:
        public = str(body.primary.public)
        internal = str(body.primary.internal) if body.primary.internal else public
    else:
        public = str(ident.public)
        internal = str(body.primary.internal) if body.primary.internal else str(ident.internal)
    name = body.primary.name if body.primary.name is not None else ident.name
    primary: dict[str, Any] = {"name": name, "guid": ident.guid,
                               "public": public}
    if internal != public:
        primary["internal"] = internal
    whole: dict[str, Any] = {
        "site_hostname": body.site_hostname,
        "primary": primary,
        "traffic_nodes": [t.model_dump(mode="json") for t in body.traffic_nodes],
    }
    if body.backup is not None:
        whole["backup"] = body.backup.model_dump(mode="json")
    if body.selection is not None:
        whole["selection"] = body.selection.model_dump(mode="json")
    if body.health is not None:
        whole["health"] = body.health.model_dump(mode="json")
    wanted = _validate(whole)  # everything checked before anything is stored
    author = _author(ctx.principal)
    try:
        created = cluster_ops.create_cluster(
            node, wanted.site_hostname, primary_name=wanted.primary.name, public=public,
            internal=internal, traffic_nodes=wanted.traffic_nodes,
            selection=wanted.selection, health=wanted.health, author=author,
        )
    except ValidationError as exc:  # pragma: no cover - validated above
        raise _unprocessable(exc) from None
    except WrongRole:
        raise _not_primary(node) from None
    if wanted.backup is not None:
        # create_cluster takes no backup master: add it as the next revision.
        created = config_store.save(
            db, created.model_copy(update={"backup": wanted.backup}),
            expected_revision=created.revision, author=author,
        )
    ctx.set_etag(etag_of(created.revision))
    ctx.headers["Location"] = BASE
    return ChangeOut(revision=created.revision, changed=True,
                     sync_needed=config_store.sync_needed(db), document=created)


@api.route("PUT", f"{BASE}/primary", summary="Update Primary Node", body=PrimaryUpdateIn,
           response=ChangeOut, etag=True, errors=(409,), tags=TAGS)
async def update_primary(ctx: ApiContext, body: PrimaryUpdateIn) -> ChangeOut:
    """Name, public and internal address of the primary master node (its GUID stays)."""
    config = _primary_config(ctx.node)
    ctx.check_if_match(etag_of(config.revision))
    _check_clash(config, body.name, (body.public, body.internal), instead_of=config.primary)
    data = _dump(config)
    data["primary"] = {
        "name": body.name, "guid": config.primary.guid, "public": str(body.public),
        "internal": str(body.internal) if body.internal is not None else None,
    }
    return _save(ctx, config, _validate(data, "primary."))


# --- traffic nodes -------------------------------------------------------------------------


@api.route("POST", f"{BASE}/traffic-nodes", summary="Add Traffic Node", body=TrafficNode,
           response=ChangeOut, status=201, etag=True, errors=(409,), tags=TAGS)
async def add_traffic_node(ctx: ApiContext, body: TrafficNode) -> ChangeOut:
    """Add a traffic node (guide: "Cluster :: Add Traffic Node"). Leave ``guid`` out: the
    node reports it at its first data sync."""
    config = _primary_config(ctx.node)
    ctx.check_if_match(etag_of(config.revision))
    _check_clash(config, body.name, (body.public, body.internal))
    data = _dump(config)
    data["traffic_nodes"].append(body.model_dump(mode="json"))
    new = _validate(data, f"traffic_nodes.{len(config.traffic_nodes)}.")
    result = _save(ctx, config, new)
    ctx.headers["Location"] = f"{BASE}/traffic-nodes/{quote(body.name, safe='')}"
    return result


@api.route("PUT", f"{BASE}/traffic-nodes/{{name}}", summary="Edit Traffic Node",
           body=TrafficNode, path_model=TrafficNodePath, response=ChangeOut, etag=True,
           errors=(404, 409), tags=TAGS)
async def edit_traffic_node(ctx: ApiContext, body: TrafficNode,
                            path: TrafficNodePath) -> ChangeOut:
    """Replace every field of a traffic node (rename it with a new ``name``). A ``guid``
    left out keeps the one the node has."""
    config = _primary_config(ctx.node)
    ctx.check_if_match(etag_of(config.revision))
    index, target = _find_traffic_node(config, path.name)
    _check_clash(config, body.name, (body.public, body.internal), instead_of=target)
    entry = body.model_dump(mode="json")
    if body.guid is None:
        entry["guid"] = target.guid
    data = _dump(config)
    data["traffic_nodes"][index] = entry
    new = _validate(data, f"traffic_nodes.{index}.")
    return _save(ctx, config, new)


@api.route("DELETE", f"{BASE}/traffic-nodes/{{name}}", summary="Remove Traffic Node",
           path_model=TrafficNodePath, response=ChangeOut, etag=True, errors=(404, 409),
           tags=TAGS)
async def remove_traffic_node(ctx: ApiContext, path: TrafficNodePath) -> ChangeOut:
    """Remove a traffic node from the configuration (it learns at the next data sync)."""
    config = _primary_config(ctx.node)
    ctx.check_if_match(etag_of(config.revision))
    index, _ = _find_traffic_node(config, path.name)
    data = _dump(config)
    del data["traffic_nodes"][index]
    return _save(ctx, config, _validate(data))


@api.route("PUT", f"{BASE}/traffic-nodes/{{name}}/accepting",
           summary="Accepting New Client Connections", body=AcceptingIn,
           path_model=TrafficNodePath, response=AcceptingOut, etag=True, errors=(404, 409),
           tags=TAGS)
async def set_traffic_node_accepting(ctx: ApiContext, body: AcceptingIn,
                                     path: TrafficNodePath) -> AcceptingOut:
    """Takes effect at once (guide): the flag is saved and pushed to that node alone.
    ``confirmed`` says whether the node applied it; ``sessions_left`` how many sessions
    it still carries while draining."""
    node = ctx.node
    config = _primary_config(node)
    ctx.check_if_match(etag_of(config.revision))
    _, target = _find_traffic_node(config, path.name)
    try:
        result = await cluster_ops.set_accepting(node, target.name, body.accepting,
                                                 author=_author(ctx.principal))
    except cluster_ops.UnknownTrafficNode as exc:
        raise not_found(str(exc)) from None
    except StaleRevision as exc:
        raise _stale(exc) from None
    except WrongRole:
        raise _not_primary(node) from None
    ctx.set_etag(etag_of(result.revision))
    return AcceptingOut(
        name=result.name, accepting=result.accepting, revision=result.revision,
        changed=result.changed, confirmed=result.confirmed,
        sessions_left=result.sessions_left, reason=result.reason, message=result.message,
    )


# --- settings and the whole document --------------------------------------------------------


@api.route("PUT", f"{BASE}/selection", summary="Method for Choosing Traffic Nodes",
           body=SelectionSettings, response=ChangeOut, etag=True, errors=(409,), tags=TAGS)
async def set_selection(ctx: ApiContext, body: SelectionSettings) -> ChangeOut:
    """The method, the settings it needs (SRV name, shared hostname, anycast address)
    and the master fallback client limit."""
    config = _primary_config(ctx.node)
    ctx.check_if_match(etag_of(config.revision))
    data = _dump(config)
    data["selection"] = body.model_dump(mode="json")
    return _save(ctx, config, _validate(data, "selection."))


@api.route("PUT", f"{BASE}/health-settings", summary="Health check settings",
           body=HealthSettings, response=ChangeOut, etag=True, errors=(409,), tags=TAGS)
async def set_health_settings(ctx: ApiContext, body: HealthSettings) -> ChangeOut:
    """How often the master checks each traffic node, and when it counts as offline."""
    config = _primary_config(ctx.node)
    ctx.check_if_match(etag_of(config.revision))
    data = _dump(config)
    data["health"] = body.model_dump(mode="json")
    return _save(ctx, config, _validate(data, "health."))


@api.route("PUT", f"{BASE}/document", summary="Replace the whole configuration",
           body=ClusterConfig, response=ChangeOut, etag=True, errors=(409,), tags=TAGS)
async def replace_cluster_document(ctx: ApiContext, body: ClusterConfig) -> ChangeOut:
    """The whole document in one revision (``atlas cluster apply``). ``revision`` in the
    body is ignored. GUIDs left out are kept (the primary's is this node's)."""
    node = ctx.node
    config = _primary_config(node)
    ctx.check_if_match(etag_of(config.revision))
    own = node.identity.guid
    if body.primary.guid is not None and body.primary.guid != own:
        raise ApiError(422, f"primary.guid: the primary master node is this node, appliance "
                       f"GUID {own}", fields=[FieldProblem(
                           field="primary.guid",
                           message=f"the primary master node is this node, appliance GUID "
                           f"{own}: leave the GUID out or give this one")])
    desired = carry_guids(config, body)
    if desired.primary.guid is None:
        desired = desired.model_copy(
            update={"primary": desired.primary.model_copy(update={"guid": own})})
    return _save(ctx, config, _validate(desired.model_dump(mode="json")))


# --- Sync Now, Disable Cluster ------------------------------------------------------------


@api.route("POST", f"{BASE}/sync", summary="Sync Now", response=SyncReportOut,
           errors=(409,), tags=TAGS)
async def sync_cluster(ctx: ApiContext) -> SyncReportOut:
    """Push the whole document to every traffic node and answer when done, with each
    node's result. Poll ``GET /api/v1/cluster/sync`` meanwhile for progress. 409 while
    another sync runs."""
    node = ctx.node
    _primary_config(node)
    try:
        report = await cluster_ops.sync_now(node)
    except SyncInProgress as exc:
        raise conflict(str(exc), code="sync_in_progress") from None
    except NoPreSharedKey as exc:
        raise conflict(str(exc), code="psk_not_set") from None
    except WrongRole:
        raise _not_primary(node) from None
    return SyncReportOut(
        revision=report.revision,
        started_at=dt.datetime.fromtimestamp(report.started_at, dt.UTC),
        finished_at=dt.datetime.fromtimestamp(report.finished_at, dt.UTC),
        ok=report.ok, summary=report.summary,
        results=[NodeSyncResultOut(
            name=r.name, address=r.address, ok=r.ok, seconds=round(r.seconds, 3),
            revision=r.revision, guid=r.guid, reported_name=r.reported_name,
            version=r.version, reason=r.reason, message=r.message,
        ) for r in report.results],
    )


@api.route("GET", f"{BASE}/sync", summary="Data sync progress", response=SyncStatusOut,
           tags=TAGS)
async def get_sync_status(ctx: ApiContext) -> SyncStatusOut:
    """The running (or last) data sync of this master, node by node."""
    return _sync_status_out(cluster_ops.status(ctx.node).sync)


@api.route("POST", f"{BASE}/disable", summary="Disable Cluster", response=DisableReportOut,
           etag=True, errors=(409,), tags=TAGS)
async def disable_cluster(ctx: ApiContext) -> DisableReportOut:
    """Remove every node from the cluster and notify the traffic nodes; each result is
    answered and recorded in the status history. An unreachable node must be removed from
    the cluster by hand on that node."""
    node = ctx.node
    config = _primary_config(node)
    ctx.check_if_match(etag_of(config.revision))
    try:
        report = await cluster_ops.disable_cluster(node, author=_author(ctx.principal))
    except WrongRole:
        raise _not_primary(node) from None
    ctx.set_etag(_tag(node))
    return DisableReportOut(
        ok=report.ok,
        results=[NotifyResultOut(name=r.name, address=r.address, notified=r.notified,
                                 reason=r.reason, message=r.message) for r in report.results],
        unreachable=[r.name for r in report.unreachable],
    )


# --- the cluster test -----------------------------------------------------------------------


@api.route("GET", f"{BASE}/route", summary="Identify the Expected Node", response=RouteOut,
           query=RouteQuery, errors=(409,), tags=TAGS)
async def route_client(ctx: ApiContext, query: RouteQuery) -> RouteOut:
    """A dry run of the traffic-node choice for a hypothetical client (its IP address,
    UTC offset and kind) with the live health snapshot: the decision and the rule that
    made it. Takes no master fallback place."""
    node = ctx.node
    config = _primary_config(node)
    facts = ClientFacts(ip=query.ip, utc_offset_minutes=query.offset_minutes(),
                        kind=query.kind)
    health = monitor_for(node).snapshot()
    now = dt.datetime.now(dt.UTC)
    version = node.software_version
    selection = select_traffic_node(config, health, version, facts, now=now,
                                    rng=random.Random())
    viability = assess_viability(config, health, version, now)
    match = prefix_candidates(config, health, version, facts, now=now)
    return RouteOut(
        client=ClientOut(ip=facts.lookup_ip, utc_offset_minutes=facts.utc_offset_minutes,
                         kind=facts.kind),
        outcome=selection.outcome.value,
        rule=selection.rule.value,
        reason=selection.reason,
        node=selection.node_name if isinstance(selection, NodeChosen) else None,
        decision=selection.to_dict(),
        viable=list(viability.viable),
        not_viable={name: why.value for name, why in viability.not_viable.items()},
        prefix_match=PrefixMatchOut(prefix=match.prefix, nodes=list(match.nodes),
                                    matches=match.matches, skipped=list(match.skipped))
        if match is not None else None,
    )
