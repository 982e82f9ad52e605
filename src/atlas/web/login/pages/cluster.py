"""Management → Cluster (guide: "/login > Management > Cluster").

One page with the guide's sections:

* **Cluster :: Status** — the Current Status sentence for this node's role, Sync Now
  (progress node by node without a reload, polled by ``static/cluster.js``), Disable
  Cluster (after a confirmation step; each notification result is shown and unreachable
  nodes are named) and the Status History table, newest first.
* **Cluster :: Master Node Configuration** — Create New Cluster on a standalone node,
  Update Primary Node on the primary; the master fallback client limit with the guide's
  note.
* **Cluster :: Traffic Nodes** — the table with the Accepting New Client Connections
  checkbox (guide: "takes effect automatically via Ajax"), Edit Node, Remove Node, Add
  New Traffic Node, and the Method for Choosing Traffic Nodes.

On a traffic node the sections are read-only and point to the primary master.

Every form carries the document revision it was drawn from; a save from an older
revision is refused (someone else changed the cluster meanwhile) and nothing is
overwritten. After a change the sync-needed warning stays until the next successful
sync (:func:`atlas.store.config_store.sync_needed`).

The work itself is :mod:`atlas.node.cluster`'s; form ↔ document is in
:mod:`.cluster_forms`, what the tables show in :mod:`.cluster_view`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from atlas.model.config import ClusterConfig
from atlas.node import cluster, roles
from atlas.node.app import NODE
from atlas.node.cluster import DisableReport
from atlas.node.peers import NoPreSharedKey
from atlas.node.roles import Role, WrongRole
from atlas.node.runtime import Node
from atlas.node.sync import SyncInProgress, SyncReport, node_label, sync_status
from atlas.store import config_store, history
from atlas.store.config_store import StaleRevision
from atlas.store.db import Database
from atlas.web.login.guard import add_page, admin_route
from atlas.web.login.pages import cluster_forms as cf
from atlas.web.login.pages import cluster_view as cv
from atlas.web.login.state import LOGIN_STATE, OneTimeStore
from atlas.web.rendering import VIEWER, Form, flash, read_form, render, see_other

log = logging.getLogger("atlas.web.login")

PATH = cv.PATH
MASTER_PATH = PATH + "/master"
NODE_PATH = cv.NODE_PATH
REMOVE_PATH = cv.REMOVE_PATH
METHOD_PATH = PATH + "/method"
ACCEPTING_PATH = PATH + "/accepting"
SYNC_PATH = PATH + "/sync"
SYNC_STATUS_PATH = PATH + "/sync/status"
DISABLE_PATH = PATH + "/disable"
LEAVE_PATH = PATH + "/leave"

TITLE = "Management :: Cluster"
HISTORY_ROWS = 25
HISTORY_ROWS_ALL = 500
SYNC_FORM_WAIT = 45.0  # a form post (no JavaScript) waits this long for Sync Now
ACCEPTING_TIMEOUT = 5.0  # telling a traffic node its new Accepting flag
MAX_JSON_NAME = 256

PATHS = {
    "page": PATH, "master": MASTER_PATH, "node": NODE_PATH, "remove": REMOVE_PATH,
    "method": METHOD_PATH, "accepting": ACCEPTING_PATH, "sync": SYNC_PATH,
    "sync_status": SYNC_STATUS_PATH, "disable": DISABLE_PATH, "leave": LEAVE_PATH,
    "security": "/login/management/security",
}

FALLBACK_NOTE = (
    "When a client is unable to successfully choose a viable default traffic node (due to "
    "temporary mis-configurations, DNS problems, software-mismatches, etc.), it will have "
    "to fall back to using the master node as its default traffic node. To avoid "
    "overloading the master node with too much network traffic, this value can be used to "
    "limit the concurrent number of clients that will fall back to using the master node "
    "in this capacity."
)
SYNC_NOTE = "This command will sync all configuration data on the master node with the " \
            "traffic nodes."
DISABLE_NOTE = (
    "This command will remove all nodes, including this one, from the cluster. This node "
    "will attempt to notify the traffic nodes that they are no longer in a cluster. If this "
    "node is unable to notify a traffic node, then you will have to log in to the traffic "
    "node and remove the traffic node from the cluster manually. The cluster status "
    "history below will show the result of the notification attempts."
)
PREFIXES_HELP = (
    "When this field is populated, the master node attempts to assign a client to this "
    "traffic node if the client's IP address matches one of the network address prefixes. "
    "If the client's IP address matches more than one traffic node's network address "
    "prefixes, the client is assigned to the traffic node with the longest matching "
    "prefix. If the matching prefixes are of equal length, one of the matching traffic "
    "nodes is chosen at random. If a client's IP address does not match any network "
    "address prefixes, the client is assigned using the Method for Choosing Traffic Nodes."
)
PREFIXES_FORMAT = (
    "Enter network address prefixes, one per line, in the form of ip.add.re.ss[/netmask]. "
    "Netmask is optional and can be given in either dotted-decimal format or as an integer "
    "bitmask. If netmask is omitted, a single IP address is assumed. IPv6 prefixes take an "
    "integer length (2001:db8::/32). You may leave this field blank."
)


def _stale_message(exc: StaleRevision, *, form: bool = True) -> str:
    """Someone else saved the document after this page was drawn; nothing was saved."""
    head = (
        f"Nothing was saved: someone else changed the cluster configuration meanwhile "
        f"(this page showed revision {exc.expected}; it is now revision {exc.current})."
    )
    if form:
        return (f"{head} Your input is kept below. Check the current configuration on the "
                "Cluster page; saving this form again replaces their change with yours.")
    return f"{head} Check the current configuration below and try again if you still want to."


# --- per-application state: the running Sync Now, Disable Cluster results -------------


@dataclass
class ClusterPageState:
    """What the cluster page keeps between requests (in memory, per application).

    ``sync_task`` is owned here and cancelled when the application shuts down.
    """

    sync_task: asyncio.Task[SyncReport | None] | None = None
    sync_error: str | None = None
    disable_reports: OneTimeStore[DisableReport] = field(default_factory=OneTimeStore)

    def sync_running(self) -> bool:
        return self.sync_task is not None and not self.sync_task.done()


CLUSTER_PAGE: web.AppKey[ClusterPageState] = web.AppKey("atlas_cluster_page", ClusterPageState)


def _node(request: web.Request) -> Node:
    return request.config_dict[NODE]


def _author(request: web.Request) -> str:
    return request[VIEWER].username


# --- the page ---------------------------------------------------------------------------


def _mark_stale(form: Form, exc: StaleRevision) -> None:
    """Tell the form it was drawn from an older revision; keep the input, offer the new one."""
    form.error("", _stale_message(exc))
    form.values["revision"] = str(exc.current)


def _page(
    request: web.Request,
    *,
    master_form: Form | None = None,
    method_form: Form | None = None,
    notice: str | None = None,
    status: int = 200,
) -> web.Response:
    node = _node(request)
    db = node.db
    state = request.config_dict[CLUSTER_PAGE]
    login = request.config_dict[LOGIN_STATE]
    st = cluster.status(node)
    config = config_store.load(db)
    revision = config.revision if config is not None else config_store.current_revision(db)
    if master_form is None:
        if config is not None and st.role is Role.PRIMARY:
            master_form = Form(cf.master_values(config))
        else:
            ident = node.identity
            master_form = Form(cf.new_cluster_values(
                ident.name, str(ident.public), str(ident.internal)))
    if method_form is None:
        method_form = Form(cf.method_values(config) if config is not None else {})
    full_history = request.query.get("history") == "all"
    rows = history.recent(db, HISTORY_ROWS_ALL if full_history else HISTORY_ROWS + 1)
    more_history = not full_history and len(rows) > HISTORY_ROWS
    running = state.sync_running() or st.sync.running
    report = state.disable_reports.take(request[VIEWER].session_key, login.now())
    return render(
        request, "login/cluster.html", title=TITLE, status=status,
        role=st.role.value, st=st, config=config, revision=revision,
        rows=cv.node_rows(config if st.role in (Role.PRIMARY, Role.TRAFFIC) else None, st,
                          node.software_version),
        master_link=cv.master_link(config, st.master),
        history_rows=rows[:HISTORY_ROWS] if more_history else rows,
        more_history=more_history,
        sync=cv.sync_json(st.sync, running), sync_error=state.sync_error,
        psk_set=node.psk is not None,
        master_form=master_form, method_form=method_form,
        methods=cf.METHODS, method_label=cf.method_label,
        disable_report=report, notice=notice, paths=PATHS,
        fallback_note=FALLBACK_NOTE, sync_note=SYNC_NOTE, disable_note=DISABLE_NOTE,
    )


async def cluster_page(request: web.Request) -> web.StreamResponse:
    return _page(request)


def _wrong_role(request: web.Request, exc: WrongRole) -> web.Response:
    return _page(request, notice=cf.sentence(f"Nothing was changed: {exc}"), status=409)


# --- Create New Cluster / Update Primary Node -------------------------------------------


async def save_master(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    db = node.db
    form = await read_form(request)
    form.values.pop("csrf_token", None)
    role = roles.current_role(db)
    expected = cf.revision_of(form)
    if role is Role.STANDALONE:
        return await _create_cluster(request, form, expected)
    if role is not Role.PRIMARY:
        return _wrong_role(request, WrongRole(role, "Changing the master node configuration",
                                              "the primary master node"))
    config = config_store.load(db)
    if config is None or expected is None:
        form.error("", "This form is out of date: reload the page and try again.")
        return _page(request, master_form=form, status=400)
    if expected != config.revision:
        _mark_stale(form, StaleRevision(config.revision, expected))
        return _page(request, master_form=form, status=409)
    updated = cf.updated_primary(form, config)
    if updated is None:
        return _page(request, master_form=form, status=400)
    try:
        saved = config_store.save(db, updated, expected_revision=expected,
                                  author=_author(request))
    except StaleRevision as exc:
        _mark_stale(form, exc)
        return _page(request, master_form=form, status=409)
    history.record(db, f"Cluster: {_author(request)} updated the primary master node "
                       f"{saved.primary.name} ({saved.primary.public}).")
    log.info("primary master node updated",
             extra={"admin": _author(request), "revision": saved.revision})
    flash(request, "The primary master node has been updated.")
    return see_other(PATH)


async def _create_cluster(
    request: web.Request, form: Form, expected: int | None
) -> web.StreamResponse:
    node = _node(request)
    new = cf.read_new_cluster(form)
    if not form.ok:
        return _page(request, master_form=form, status=400)
    try:
        saved = cluster.create_cluster(
            node, new.site_hostname, primary_name=new.name, public=new.public,
            internal=new.internal,
            selection={"master_fallback_limit": new.master_fallback_limit},
            author=_author(request),
        )
    except ValidationError as exc:
        cf.describe_validation(exc, form, cf.MASTER_FIELD_PATHS)
        return _page(request, master_form=form, status=400)
    except WrongRole as exc:
        return _wrong_role(request, exc)
    log.info("cluster created", extra={"admin": _author(request),
                                       "site": saved.site_hostname})
    del expected  # a standalone node has no document to be stale against
    flash(request, f"This node is now the primary master node of the cluster "
                   f"{saved.site_hostname}. Add its traffic nodes below, then click Sync Now.")
    return see_other(PATH)


# --- Add / Edit / Remove Traffic Node ---------------------------------------------------


def _node_page(request: web.Request, form: Form, *, editing: str | None,
               status: int = 200) -> web.Response:
    title = "Edit Traffic Node" if editing is not None else "Add Traffic Node"
    return render(
        request, "login/cluster_node.html", title=f"{TITLE} :: {title}", status=status,
        form=form, editing=editing, heading=title, paths=PATHS,
        prefixes_help=PREFIXES_HELP, prefixes_format=PREFIXES_FORMAT,
    )


def _require_primary_config(db: Database, operation: str) -> ClusterConfig:
    roles.require_role(db, operation, Role.PRIMARY)
    config = config_store.load(db)
    if config is None:
        raise WrongRole(Role.STANDALONE, operation, "a cluster configuration")
    return config


async def node_form(request: web.Request) -> web.StreamResponse:
    """Cluster :: Add Traffic Node (no ``name``) or Edit Node (``?name=``)."""
    try:
        config = _require_primary_config(_node(request).db, "Adding or editing traffic nodes")
    except WrongRole as exc:
        return _wrong_role(request, exc)
    name = request.query.get("name")
    if name is None:
        return _node_page(request, Form(cf.node_values(None, config.revision)), editing=None)
    index = cf.find_traffic_node(config, name)
    if index is None:
        flash(request, f"There is no traffic node named “{name}” (it may have been removed).")
        return see_other(PATH)
    target = config.traffic_nodes[index]
    return _node_page(request, Form(cf.node_values(target, config.revision)),
                      editing=target.name)


async def save_node(request: web.Request) -> web.StreamResponse:
    db = _node(request).db
    form = await read_form(request)
    form.values.pop("csrf_token", None)
    original = form.values.get("original_name")
    editing = original if original else None
    try:
        config = _require_primary_config(db, "Adding or editing traffic nodes")
    except WrongRole as exc:
        return _wrong_role(request, exc)
    expected = cf.revision_of(form)
    if expected is None:
        form.error("", "This form is out of date: reload the page and try again.")
        return _node_page(request, form, editing=editing, status=400)
    index: int | None = None
    if editing is not None:
        index = next((i for i, n in enumerate(config.traffic_nodes) if n.name == editing),
                     None)
        if index is None:
            form.error("", f"Nothing was saved: the traffic node “{editing}” no longer exists "
                           "(someone else removed or renamed it). Go back to the Cluster page.")
            return _node_page(request, form, editing=editing, status=409)
    if expected != config.revision:
        _mark_stale(form, StaleRevision(config.revision, expected))
        return _node_page(request, form, editing=editing, status=409)
    entry = cf.read_node(form)
    updated = cf.with_node(form, config, entry, index)
    if updated is None:
        return _node_page(request, form, editing=editing, status=400)
    try:
        saved = config_store.save(db, updated, expected_revision=expected,
                                  author=_author(request))
    except StaleRevision as exc:
        _mark_stale(form, exc)
        return _node_page(request, form, editing=editing, status=409)
    new_index = index if index is not None else len(saved.traffic_nodes) - 1
    stored = saved.traffic_nodes[new_index]
    verb = "updated" if editing is not None else "added"
    history.record(db, f"Cluster: {_author(request)} {verb} traffic node "
                       f"{node_label(stored)}.")
    log.info(f"traffic node {verb}", extra={"admin": _author(request), "node": stored.name,
                                            "revision": saved.revision})
    flash(request, f"Traffic node “{stored.name}” {verb}. Click Sync Now so the traffic "
                   "nodes get the change.")
    for notice in cf.prefix_notices(form):
        flash(request, f"Network Address Prefixes of “{stored.name}”: {notice}.")
    return see_other(PATH)


async def remove_confirm(request: web.Request) -> web.StreamResponse:
    try:
        config = _require_primary_config(_node(request).db, "Removing traffic nodes")
    except WrongRole as exc:
        return _wrong_role(request, exc)
    index = cf.find_traffic_node(config, request.query.get("name", ""))
    if index is None:
        flash(request, "There is no such traffic node (it may have been removed already).")
        return see_other(PATH)
    return render(
        request, "login/cluster_confirm.html", title=f"{TITLE} :: Remove Node",
        action="remove", target=config.traffic_nodes[index], revision=config.revision,
        paths=PATHS, config=config,
    )


async def remove_node(request: web.Request) -> web.StreamResponse:
    db = _node(request).db
    form = await read_form(request)
    try:
        config = _require_primary_config(db, "Removing traffic nodes")
    except WrongRole as exc:
        return _wrong_role(request, exc)
    name = form.value("name")
    index = next((i for i, n in enumerate(config.traffic_nodes) if n.name == name), None)
    if index is None:
        flash(request, f"There is no traffic node named “{name}” (it may have been removed "
                       "already).")
        return see_other(PATH)
    expected = cf.revision_of(form)
    target = config.traffic_nodes[index]
    try:
        if expected is None:
            raise StaleRevision(config.revision, 0)
        config_store.save(db, cf.without_node(config, index), expected_revision=expected,
                          author=_author(request))
    except StaleRevision as exc:
        return _page(request, notice=_stale_message(exc, form=False), status=409)
    history.record(db, f"Cluster: {_author(request)} removed traffic node "
                       f"{node_label(target)}.")
    log.info("traffic node removed", extra={"admin": _author(request), "node": target.name})
    flash(request, f"Traffic node “{target.name}” removed from the cluster configuration. "
                   "Log in to that node to remove it from the cluster there.")
    return see_other(PATH)


# --- Method for Choosing Traffic Nodes --------------------------------------------------


async def save_method(request: web.Request) -> web.StreamResponse:
    db = _node(request).db
    form = await read_form(request)
    form.values.pop("csrf_token", None)
    try:
        config = _require_primary_config(db, "Choosing the method for traffic nodes")
    except WrongRole as exc:
        return _wrong_role(request, exc)
    expected = cf.revision_of(form)
    if expected is None or expected != config.revision:
        _mark_stale(form, StaleRevision(config.revision, expected or 0))
        return _page(request, method_form=form, status=409)
    updated = cf.with_method(form, config)
    if updated is None:
        return _page(request, method_form=form, status=400)
    try:
        saved = config_store.save(db, updated, expected_revision=expected,
                                  author=_author(request))
    except StaleRevision as exc:
        _mark_stale(form, exc)
        return _page(request, method_form=form, status=409)
    label = cf.method_label(saved.selection.method.value)
    history.record(db, f"Cluster: {_author(request)} set the Method for Choosing Traffic "
                       f"Nodes to {label}.")
    flash(request, f"Method for Choosing Traffic Nodes saved: {label}.")
    return see_other(PATH)


# --- Accepting New Client Connections (at once, via fetch) ------------------------------


def _wants_json(request: web.Request) -> bool:
    return request.content_type == "application/json" or "application/json" in \
        request.headers.get("Accept", "")


async def _accepting_input(request: web.Request) -> tuple[str, bool, int | None] | str:
    """``(name, accepting, revision)`` from a JSON body or a form; else the problem."""
    if request.content_type == "application/json":
        try:
            data = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            return "The request body is not JSON."
        if not isinstance(data, dict):
            return "Expected a JSON object with name, accepting and revision."
        name, accepting, revision = data.get("name"), data.get("accepting"), data.get("revision")
        if not isinstance(name, str) or not name or len(name) > MAX_JSON_NAME:
            return "Expected the traffic node's name."
        if not isinstance(accepting, bool):
            return "Expected accepting: true or false."
        if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)):
            return "Expected revision: the configuration revision the page shows."
        return name, accepting, revision
    form = await read_form(request)
    return form.value("name"), form.value("accepting") == "on", cf.revision_of(form)


def _accepting_answer(
    request: web.Request, status: int, body: dict[str, Any]
) -> web.StreamResponse:
    if _wants_json(request):
        return web.json_response(body, status=status)
    flash(request, str(body.get("message") or body.get("error")))
    return see_other(PATH)


async def set_accepting(request: web.Request) -> web.StreamResponse:
    """The Accepting checkbox: saved at once and pushed to the traffic node (fast path).

    Optimistic concurrency: the page sends the revision it shows; if the document has
    changed since, nothing is saved (409) and the page reverts the checkbox.
    """
    node = _node(request)
    db = node.db
    parsed = await _accepting_input(request)
    if isinstance(parsed, str):
        return _accepting_answer(request, 400, {"error": parsed})
    name, accepting, expected = parsed
    try:
        config = _require_primary_config(db, "Setting Accepting New Client Connections")
    except WrongRole as exc:
        return _accepting_answer(request, 409, {"error": cf.sentence(f"Nothing was changed: "
                                                                     f"{exc}")})
    target = next((n for n in config.traffic_nodes if n.name == name), None)
    if target is None:
        return _accepting_answer(request, 404, {
            "error": f"There is no traffic node named “{name}” (it may have been removed or "
                     "renamed): reload the page.",
        })
    if expected is None or expected != config.revision:
        return _accepting_answer(request, 409, {
            "error": f"Not changed: the cluster configuration changed since this page was "
                     f"loaded (revision {config.revision} now, the page shows "
                     f"{expected if expected is not None else 'none'}). Reload the page and "
                     "try again.",
            "accepting": target.accepting, "revision": config.revision,
        })
    try:
        result = await cluster.set_accepting(node, target.name, accepting,
                                             author=_author(request), timeout=ACCEPTING_TIMEOUT)
    except StaleRevision as exc:
        return _accepting_answer(request, 409, {"error": str(exc), "revision": exc.current})
    except cluster.UnknownTrafficNode as exc:
        return _accepting_answer(request, 404, {"error": cf.sentence(str(exc))})
    except WrongRole as exc:
        return _accepting_answer(request, 409, {"error": cf.sentence(str(exc))})
    log.info("traffic node accepting changed",
             extra={"admin": _author(request), "node": target.name, "accepting": accepting,
                    "confirmed": result.confirmed})
    draining = None
    if result.confirmed:
        if accepting:
            message = f"“{result.name}” is accepting new client connections (the node " \
                      "confirmed it)."
        else:
            left = result.sessions_left
            draining = left if left else None
            message = (f"“{result.name}” no longer accepts new client connections (the node "
                       f"confirmed it); {left if left is not None else 'an unknown number of'} "
                       "sessions left.")
    else:
        what = "accepts" if accepting else "no longer accepts"
        message = (f"Saved: “{result.name}” {what} new client connections in the cluster "
                   f"configuration, but the node could not be told at once ({result.reason}). "
                   "It gets the change at the next Sync Now.")
    needing = config_store.nodes_needing_sync(db)
    return _accepting_answer(request, 200, {
        "name": result.name, "accepting": result.accepting, "revision": result.revision,
        "confirmed": result.confirmed, "sessions_left": result.sessions_left,
        "draining_sessions": draining, "message": message,
        "sync_needed": bool(needing), "nodes_needing_sync": needing,
    })


# --- Sync Now ---------------------------------------------------------------------------


async def _run_sync(node: Node, state: ClusterPageState) -> SyncReport | None:
    try:
        return await cluster.sync_now(node)
    except (WrongRole, SyncInProgress, NoPreSharedKey) as exc:
        state.sync_error = cf.sentence(str(exc))
        return None


def _start_sync(request: web.Request) -> tuple[int, str | None]:
    """Start Sync Now in the background; (HTTP status, problem or None)."""
    node = _node(request)
    state = request.config_dict[CLUSTER_PAGE]
    try:
        _require_primary_config(node.db, "Sync Now")
    except WrongRole as exc:
        return 409, cf.sentence(f"Sync Now was not started: {exc}")
    if node.psk is None:
        return 409, cf.sentence(f"Sync Now was not started: {NoPreSharedKey()}")
    if state.sync_running() or sync_status(node).running:
        return 409, "A data sync is already running; wait for it to finish."
    state.sync_error = None
    state.sync_task = asyncio.get_running_loop().create_task(
        _run_sync(node, state), name="cluster page: Sync Now")
    log.info("Sync Now started", extra={"admin": _author(request)})
    return 202, None


def _sync_body(request: web.Request) -> dict[str, Any]:
    node = _node(request)
    state = request.config_dict[CLUSTER_PAGE]
    st = sync_status(node)
    running = state.sync_running() or st.running
    body = cv.sync_json(st, running)
    body["error"] = state.sync_error
    needing = config_store.nodes_needing_sync(node.db)
    body["sync_needed"] = bool(needing)
    body["nodes_needing_sync"] = needing
    body["history"] = cv.history_json(history.recent(node.db, HISTORY_ROWS))
    return body


async def start_sync(request: web.Request) -> web.StreamResponse:
    status, problem = _start_sync(request)
    if _wants_json(request) or request.headers.get("X-CSRF-Token"):
        body = _sync_body(request)
        if problem:
            body["error"] = problem
        return web.json_response(body, status=status)
    if problem:
        return _page(request, notice=problem, status=status)
    # Without JavaScript: wait for the sync (bounded), then show the result.
    task = request.config_dict[CLUSTER_PAGE].sync_task
    if task is not None:
        await asyncio.wait({task}, timeout=SYNC_FORM_WAIT)
    body = _sync_body(request)
    flash(request, body["error"] or body["summary"] or "Sync Now is running; see the Status "
                                                       "History below.")
    return see_other(PATH)


async def sync_progress(request: web.Request) -> web.StreamResponse:
    """The running (or last) Sync Now and the newest Status History rows, for polling."""
    return web.json_response(_sync_body(request))


# --- Disable Cluster / leave the cluster ------------------------------------------------


async def disable_confirm(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    try:
        config = _require_primary_config(node.db, "Disable Cluster")
    except WrongRole as exc:
        return _wrong_role(request, exc)
    return render(
        request, "login/cluster_confirm.html", title=f"{TITLE} :: Disable Cluster",
        action="disable", config=config, target=None, revision=config.revision,
        paths=PATHS, disable_note=DISABLE_NOTE,
    )


async def disable(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    try:
        report = await cluster.disable_cluster(node, author=_author(request))
    except WrongRole as exc:
        return _wrong_role(request, exc)
    log.info("cluster disabled", extra={"admin": _author(request),
                                        "unreachable": len(report.unreachable)})
    state = request.config_dict[CLUSTER_PAGE]
    login = request.config_dict[LOGIN_STATE]
    state.disable_reports.put(request[VIEWER].session_key, report, login.now())
    return see_other(PATH)


async def leave_confirm(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    role = roles.current_role(node.db)
    if role is not Role.TRAFFIC:
        return _wrong_role(request, WrongRole(role, "Removing this node from its cluster",
                                              "a traffic node"))
    return render(
        request, "login/cluster_confirm.html", title=f"{TITLE} :: Leave Cluster",
        action="leave", config=config_store.load(node.db), target=None, revision=0,
        master=roles.master_identity(node.db), paths=PATHS,
    )


async def leave(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    try:
        cluster.leave_cluster(node, author=_author(request))
    except WrongRole as exc:
        return _wrong_role(request, exc)
    log.info("left the cluster by hand", extra={"admin": _author(request)})
    flash(request, "This node is no longer in a cluster.")
    return see_other(PATH)


# --- setup ------------------------------------------------------------------------------


async def _stop_sync(app: web.Application) -> None:
    task = app[CLUSTER_PAGE].sync_task
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def setup(app: web.Application) -> None:
    app[CLUSTER_PAGE] = ClusterPageState()
    app.on_shutdown.append(_stop_sync)
    add_page(app, "management", "cluster", "Cluster", PATH, cluster_page)
    admin_route(app, "POST", MASTER_PATH, save_master)
    admin_route(app, "GET", NODE_PATH, node_form)
    admin_route(app, "POST", NODE_PATH, save_node)
    admin_route(app, "GET", REMOVE_PATH, remove_confirm)
    admin_route(app, "POST", REMOVE_PATH, remove_node)
    admin_route(app, "POST", METHOD_PATH, save_method)
    admin_route(app, "POST", ACCEPTING_PATH, set_accepting)
    admin_route(app, "POST", SYNC_PATH, start_sync)
    admin_route(app, "GET", SYNC_STATUS_PATH, sync_progress)
    admin_route(app, "GET", DISABLE_PATH, disable_confirm)
    admin_route(app, "POST", DISABLE_PATH, disable)
    admin_route(app, "GET", LEAVE_PATH, leave_confirm)
    admin_route(app, "POST", LEAVE_PATH, leave)
