"""Server-rendered HTML for /login: one Jinja environment, the navigation, forms, flashes.

Every /login page is a template that extends ``layout.html`` and is answered with
:func:`render`. The navigation follows the guide's /login menu (Status, My Account,
Configuration, Users & Security, Management → Software Management, Security, Site
Configuration, Cluster, Failover, API Configuration). Entries whose page is not built
yet carry a short "available once …" text and link to ``/login/pending/<key>``, so the
menu never holds a dead link. A feature adds a page (route, login guard and menu entry
at once) with ``atlas.web.login.add_page``; the menu lives in :class:`NavRegistry`.

Autoescape is on for every template: any value rendered is HTML-escaped unless it is
explicitly marked safe (which no page does).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from atlas.node.app import NODE

WEB_DIR = Path(__file__).parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
STATIC_PREFIX = "/static"
PENDING_PREFIX = "/login/pending/"


# --- who is looking ----------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """The administrator a /login page is rendered for (set by the login guard)."""

    username: str
    csrf_token: str
    session_key: str  # the session's token digest: keys per-session scratch data


VIEWER: web.RequestKey[Viewer] = web.RequestKey("atlas_login_viewer", Viewer)


def viewer_of(request: web.Request) -> Viewer | None:
    return request.get(VIEWER)


# --- navigation --------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A top-level tab of the /login menu."""

    key: str
    title: str


@dataclass(frozen=True)
class NavEntry:
    """One page in the /login menu.

    ``path`` is None while the page is not built; the menu then links to a short page
    showing ``pending`` ("Available once …").
    """

    section: str
    key: str
    title: str
    path: str | None = None
    pending: str = ""
    order: int = 100

    @property
    def href(self) -> str:
        return self.path if self.path is not None else PENDING_PREFIX + self.key

    @property
    def built(self) -> bool:
        return self.path is not None


SECTIONS: tuple[Section, ...] = (
    Section("status", "Status"),
    Section("account", "My Account"),
    Section("configuration", "Configuration"),
    Section("users", "Users & Security"),
    Section("management", "Management"),
)

# The guide's menu. Built pages replace these entries (same key) through add_page.
DEFAULT_ENTRIES: tuple[NavEntry, ...] = (
    NavEntry("status", "information", "Information", order=10,
             pending="Available once the node status page is built."),
    NavEntry("account", "account", "My Account", order=10,
             pending="Available once the account page is built."),
    NavEntry("configuration", "configuration", "Options", order=10,
             pending="Available once the support site options (session queues, "
                     "peer-to-peer and STUN settings) can be configured here."),
    NavEntry("users", "users", "Users", order=10,
             pending="Available once representative and administrator accounts can be "
                     "managed here."),
    NavEntry("management", "software", "Software Management", order=10,
             pending="Available once software updates can be managed from /login."),
    NavEntry("management", "security", "Security", order=20,
             pending="Available once the security settings page is built."),
    NavEntry("management", "site", "Site Configuration", order=30,
             pending="Available once the support site hostname can be set here."),
    NavEntry("management", "cluster", "Cluster", order=40,
             pending="Available once cluster management is built: creating a cluster, "
                     "adding traffic nodes, Sync Now and the Status History."),
    NavEntry("management", "failover", "Failover", order=50,
             pending="Available once failover between a primary and a backup master "
                     "is built."),
    NavEntry("management", "api", "API Configuration", order=60,
             pending="Available once API accounts can be managed here."),
)


@dataclass
class NavRegistry:
    """The /login menu of one application: sections and their entries, by key."""

    sections: tuple[Section, ...] = SECTIONS
    _entries: dict[str, NavEntry] = field(default_factory=dict)

    @classmethod
    def default(cls) -> NavRegistry:
        reg = cls()
        for e in DEFAULT_ENTRIES:
            reg.add(e)
        return reg

    def add(self, entry: NavEntry) -> None:
        """Add an entry, or replace the one with the same key (a pending one, usually)."""
        if entry.section not in {s.key for s in self.sections}:
            known = ", ".join(s.key for s in self.sections)
            raise ValueError(f"unknown /login section {entry.section!r}; known: {known}")
        old = self._entries.get(entry.key)
        if old is not None and old.built and entry.built and old.path != entry.path:
            raise ValueError(f"/login menu entry {entry.key!r} is already at {old.path}")
        if old is not None and not entry.pending:
            entry = replace(entry, pending=old.pending)
        self._entries[entry.key] = entry

    def get(self, key: str) -> NavEntry | None:
        return self._entries.get(key)

    def entries(self, section: str) -> list[NavEntry]:
        found = [e for e in self._entries.values() if e.section == section]
        return sorted(found, key=lambda e: (e.order, e.title))

    def landing(self, section: str) -> NavEntry | None:
        """Where a section's tab leads: its first built page, else its first entry."""
        entries = self.entries(section)
        built = [e for e in entries if e.built]
        candidates = built or entries
        return candidates[0] if candidates else None

    def active(self, path: str) -> NavEntry | None:
        """The entry a request path belongs to: the longest entry path it lies under."""
        best: NavEntry | None = None
        for e in self._entries.values():
            href = e.href
            if path == href or path.startswith(href.rstrip("/") + "/"):
                if best is None or len(href) > len(best.href):
                    best = e
        return best


NAV: web.AppKey[NavRegistry] = web.AppKey("atlas_login_nav", NavRegistry)


def nav(app: web.Application) -> NavRegistry:
    """The app's menu, created with the guide's default entries on first use (at setup)."""
    reg = app.get(NAV)
    if reg is None:
        reg = NavRegistry.default()
        app[NAV] = reg
    return reg


@dataclass(frozen=True)
class NavItem:
    title: str
    href: str
    active: bool
    built: bool


@dataclass(frozen=True)
class NavView:
    """The menu as one page shows it: tabs, and the active tab's sub-entries."""

    tabs: list[NavItem]
    subnav: list[NavItem]

    @property
    def show_subnav(self) -> bool:
        """A section with one page of its own name (My Account) needs no second row."""
        active = [t for t in self.tabs if t.active]
        if not self.subnav:
            return False
        return len(self.subnav) > 1 or not active or self.subnav[0].title != active[0].title


def nav_view(reg: NavRegistry, path: str) -> NavView:
    current = reg.active(path)
    tabs: list[NavItem] = []
    subnav: list[NavItem] = []
    for s in reg.sections:
        landing = reg.landing(s.key)
        if landing is None:
            continue
        entries = reg.entries(s.key)
        here = current is not None and current.section == s.key
        tabs.append(NavItem(s.title, landing.href, here, any(e.built for e in entries)))
        if current is not None and here:
            subnav = [NavItem(e.title, e.href, e.key == current.key, e.built) for e in entries]
    return NavView(tabs, subnav)


# --- forms -------------------------------------------------------------------------


@dataclass
class Form:
    """Submitted values and the problems found with them, field by field.

    Templates show ``form.value(name)`` back in the field (never for password fields) and
    ``form.errors[name]`` next to it, with the ``field``/``field_error`` macros of
    ``macros/forms.html``. ``form.errors[""]`` is a problem with the form as a whole.
    """

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_post(cls, data: MultiDictProxy[str | web.FileField] | Mapping[str, object]) -> Form:
        """Text fields of a posted form (the first value of each; uploads are ignored)."""
        values: dict[str, str] = {}
        for k in data:
            v = data.get(k)
            if isinstance(v, str) and k not in values:
                values[k] = v
        return cls(values)

    def value(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def error(self, name: str, message: str) -> None:
        """Record a problem with ``name`` (the first one found is the one shown)."""
        self.errors.setdefault(name, message)

    @property
    def ok(self) -> bool:
        return not self.errors


async def read_form(request: web.Request) -> Form:
    """The request's posted form (the login guard has already parsed and checked it)."""
    return Form.from_post(await request.post())


# --- flash messages ----------------------------------------------------------------


class FlashStore:
    """One-shot messages shown on the next page a session renders (post/redirect/get).

    In memory and bounded: at most ``max_sessions`` sessions, ``per_session`` messages each.
    """

    def __init__(self, max_sessions: int = 1000, per_session: int = 5) -> None:
        self._data: OrderedDict[str, list[str]] = OrderedDict()
        self.max_sessions = max_sessions
        self.per_session = per_session

    def push(self, key: str, message: str) -> None:
        msgs = self._data.pop(key, [])
        msgs = [*msgs, message][-self.per_session:]
        self._data[key] = msgs
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)

    def take(self, key: str) -> list[str]:
        return self._data.pop(key, [])

    def forget(self, key: str) -> None:
        self._data.pop(key, None)


FLASHES: web.AppKey[FlashStore] = web.AppKey("atlas_login_flashes", FlashStore)


def flashes(app: web.Application) -> FlashStore:
    store = app.get(FLASHES)
    if store is None:
        store = FlashStore()
        app[FLASHES] = store
    return store


def flash(request: web.Request, message: str) -> None:
    """Show ``message`` on the viewer's next rendered page."""
    v = viewer_of(request)
    if v is not None:
        request.app[FLASHES].push(v.session_key, message)


# --- formatting helpers (Jinja filters) ----------------------------------------------


def format_time(epoch: float | None) -> str:
    """``2024-05-01 13:25:45 UTC`` (the guide's Status History shows times like this)."""
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    """``3 d 4 h 5 min`` / ``12 min 3 s``: an uptime as a person reads it."""
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [(d, "d"), (h, "h"), (m, "min"), (s, "s")]
    shown = [f"{n} {u}" for n, u in parts if n][:3]
    return " ".join(shown) if shown else "0 s"


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = format_time
    env.filters["duration"] = format_duration
    env.globals["static"] = lambda name: f"{STATIC_PREFIX}/{name}"
    return env


def render_string(template: str, context: Mapping[str, object]) -> str:
    return environment().get_template(template).render(context)


def render(
    request: web.Request,
    template: str,
    *,
    title: str,
    status: int = 200,
    csrf_token: str | None = None,
    headers: Mapping[str, str] | None = None,
    **context: object,
) -> web.Response:
    """Answer with ``template`` inside the shared layout (menu, node name, flashes).

    ``csrf_token`` defaults to the viewer's session token; the login page passes its
    pre-session token. Responses are never cached: they may show secrets.
    """
    viewer = viewer_of(request)
    node = request.config_dict[NODE]
    reg = request.config_dict.get(NAV)
    menu = nav_view(reg, request.path) if (reg is not None and viewer is not None) else None
    store = request.config_dict.get(FLASHES)
    messages = store.take(viewer.session_key) if (store is not None and viewer) else []
    default_token = viewer.csrf_token if viewer else ""
    ctx: dict[str, object] = {
        "page_title": title,
        "node_name": node.identity.name,
        "viewer": viewer,
        "csrf_token": csrf_token if csrf_token is not None else default_token,
        "nav": menu,
        "flashes": messages,
    }
    ctx.update(context)
    body = render_string(template, ctx)
    resp = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    resp.headers["Cache-Control"] = "no-store"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def see_other(location: str) -> web.Response:
    """303 to a same-site path: the answer to a successful form post (post/redirect/get)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
