"""The guide's cluster test, automated (``atlas cluster test PLAN``).

Guide, "Perform a … Cluster Test": verify the current settings and status, identify the
expected node of a test client, run a test connection from where that client would be,
and check which node it really used. "It is impossible to give a detailed and rigorous
set of testing steps" by hand; this package does them for every probe of a plan:

* :mod:`~atlas.cluster_test.plan` — the plan file (TOML): probe clients, the test
  representative, where the site is. Pure; every bad value is named.
* :mod:`~atlas.cluster_test.verdict` — pure decisions: what the pre-check reports, which
  nodes a probe may land on, which node a ``get_connected_clients`` listing shows it
  used, pass or fail and why.
* :mod:`~atlas.cluster_test.probe` — one real test connection: a customer and a test
  representative in a real session, from the probe's source address and UTC offset.
* :mod:`~atlas.cluster_test.runner` — the whole test over the site's REST API.
"""
