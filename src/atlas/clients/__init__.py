"""The customer client and the representative console, as a library and as CLIs.

* :mod:`~atlas.clients.control` — the control connection to the master
  (:func:`~atlas.clients.control.connect`, :class:`~atlas.clients.control.ControlClient`):
  hello, login, keep-alive, reconnect, home node directives, one event stream.
* :mod:`~atlas.clients.streams` — publishing and viewing one stream on a traffic node,
  reconnecting to the same node within a bounded window.
* :mod:`~atlas.clients.session` — the event loop both clients share, and one started
  session's streams; :mod:`~atlas.clients.customer`,
  :mod:`~atlas.clients.representative` — what only each of them does.
* :mod:`~atlas.clients.screen` (test pattern, desktop) and
  :mod:`~atlas.clients.screen_codec` (key and delta frame payloads).
* :mod:`~atlas.clients.host` (what ``hello`` reports; ``--tz-offset``,
  ``--source-address``), :mod:`~atlas.clients.network` (CA, DNS server, source address),
  :mod:`~atlas.clients.dns_directives` (``a_record``/``srv``/``anycast`` lookups).
* :mod:`~atlas.clients.report` (``--json`` lines, status lines),
  :mod:`~atlas.clients.live_view`, :mod:`~atlas.clients.stats`,
  :mod:`~atlas.clients.errors` (one-line failures and exit codes).

The CLIs are ``atlas customer`` and ``atlas rep`` (:mod:`atlas.cli.clients`).
"""
