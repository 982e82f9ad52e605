"""``atlas cluster test PLAN``: the guide's cluster test, automated
(:mod:`atlas.cluster_test`).

The site and API account as for every ``atlas cluster`` command (options, else the
environment, else the plan's ``url`` and ``ca_file``); the test representative's
username from ``--rep-user``, ``ATLAS_REP_USER`` or the plan, its password from
``ATLAS_REP_PASSWORD`` (else a prompt on a terminal). Prints the pre-check and a table
(probe, from, expected, actual, rule, result) and exits 0 when every probe landed where
expected, 1 otherwise; 2 for a bad plan or option, 3 refused credentials, 5 unreachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from atlas.cli.node import err
from atlas.cli.prompts import NoPassword, login_password
from atlas.cluster_test.plan import PlanError, ProbeSpec, load_plan
from atlas.cluster_test.runner import ClusterTest, TestOptions, TestReport, report_dict
from atlas.cluster_test.verdict import ProbeResult, Result, Severity
from atlas.model.timezones import format_offset
from atlas.net.api_client import (
    ENV_CA_FILE,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_URL,
    EXIT_FAILED,
    EXIT_USAGE,
    AtlasClient,
    ClientError,
    Connection,
)
from atlas.net.resolver import ENV_VAR as ENV_DNS
from atlas.net.resolver import DnsServer, Resolver

# a report piped to a file keeps its table rows whole
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

ENV_REP_USER = "ATLAS_REP_USER"
ENV_REP_PASSWORD = "ATLAS_REP_PASSWORD"  # noqa: S105 - the variable's name
STYLE = {Result.PASS: "green", Result.FAIL: "red", Result.ERROR: "red"}


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _password(user: str) -> str:
    try:
        return login_password(ENV_REP_PASSWORD,
                              f"Password of the test representative {user}: ")
    except NoPassword as exc:
        raise _fail(f"the test representative {user!r}: {exc}") from None


def _offset(p: ProbeSpec) -> str:
    minutes = p.offset_minutes()
    return "no offset" if minutes is None else f"UTC{format_offset(minutes)}"


def _results_table(report: TestReport) -> Table:
    table = Table(box=box.SIMPLE_HEAVY, title="Cluster test", title_justify="left")
    for col in ("probe", "kind", "from", "expected", "actual", "rule", "result"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        p, e = r.probe, r.expected
        kind = "rep" if p.kind.value == "representative" else "customer"
        table.add_row(
            escape(p.name), kind, escape(f"{p.source_address}  {_offset(p)}"),
            escape(e.describe().replace(", ", " ") if e else "?"), escape(r.actual or "-"),
            escape(e.rule if e else "-"),
            f"[{STYLE[r.result]}]{r.result.value.upper()}[/]",
        )
    return table


def _details(results: list[ProbeResult]) -> list[str]:
    lines = []
    for r in results:
        reason = r.expected.reason if r.expected else ""
        if r.detail:
            lines.append(f"{r.probe.name}: {r.detail}")
        elif reason:
            lines.append(f"{r.probe.name}: {reason}")
    return lines


def _print_report(report: TestReport) -> None:
    doc = report.cluster.document
    method = doc.selection.method.value if doc else "?"
    out.print(f"Site {report.cluster.site_hostname}, revision {report.cluster.revision}, "
              f"method {method}", highlight=False)
    if report.problems:
        out.print("Before the test (guide: verify the current settings and status):")
        for p in report.problems:
            style = "red" if p.severity is Severity.FAIL else "yellow"
            out.print(f"  [{style}]{escape(p.node)}: {escape(p.problem)}[/]", highlight=False)
    else:
        out.print("Before the test: every traffic node online, accepting, in sync, same "
                  "version.")
    out.print(_results_table(report))
    for line in _details(report.results):
        out.print(f"  {escape(line)}", highlight=False)
    total = len(report.results)
    good = sum(1 for r in report.results if r.result is Result.PASS)
    verdict = "[green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    out.print(f"{verdict}: {good} of {total} probes landed where expected", highlight=False)


def test_cmd(
    plan_file: Annotated[Path, typer.Argument(
        metavar="PLAN", help="Cluster test plan (TOML; `atlas demo` writes one)")],
    url: Annotated[str | None, typer.Option(
        "--url", help=f"Site URL https://HOST[:PORT] (env {ENV_URL}, else the plan's url)")] = None,
    client_id: Annotated[str | None, typer.Option(
        "--client-id", help=f"API account client id (env {ENV_CLIENT_ID})")] = None,
    client_secret: Annotated[str | None, typer.Option(
        "--client-secret", help=f"API account client secret (env {ENV_CLIENT_SECRET})")] = None,
    ca_file: Annotated[Path | None, typer.Option(
        "--ca-file", help=f"CA certificate to trust (env {ENV_CA_FILE}, else the plan's)")] = None,
    dns: Annotated[str | None, typer.Option(
        "--dns", help=f"DNS server ip[:port] (env {ENV_DNS}, else the plan's)")] = None,
    rep_user: Annotated[str | None, typer.Option(
        "--rep-user", help=f"Test representative's username (env {ENV_REP_USER}, else the "
                           f"plan's; password from ${ENV_REP_PASSWORD})")] = None,
    probe_names: Annotated[list[str] | None, typer.Option(
        "--probe", help="Run only this probe (repeatable)")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=1.0, max=600.0, help="Seconds for each test session to stream")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Run the guide's cluster test: for each probe of PLAN, the expected node (route),
    a real test session from the probe's address and UTC offset, and the node it really
    used (get_connected_clients on every node).

    Exits 0 when every probe landed where expected and no node is out of sync or on
    another version; 1 otherwise.
    """
    try:
        plan = load_plan(plan_file)
    except PlanError as exc:
        err.print(f"[bold red]error:[/] the plan {escape(str(exc.path))} is not usable:",
                  highlight=False)
        for problem in exc.problems:
            err.print(f"  {escape(problem)}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    if probe_names:
        known = {p.name for p in plan.probes}
        unknown = [n for n in probe_names if n not in known]
        if unknown:
            raise _fail(f"--probe {', '.join(unknown)}: not in the plan "
                        f"(it has {', '.join(sorted(known))})")
        plan = plan.__class__(**{**plan.__dict__, "probes": tuple(
            p for p in plan.probes if p.name in probe_names)})
    try:
        conn = Connection.resolve(url or os.environ.get(ENV_URL) or plan.url, client_id,
                                  client_secret,
                                  ca_file or (None if os.environ.get(ENV_CA_FILE)
                                              else plan.ca_file))
    except ClientError as exc:
        raise _fail(exc.message, exc.exit_code) from None
    dns_text = dns or os.environ.get(ENV_DNS) or plan.dns
    try:
        server = DnsServer.parse(dns_text) if dns_text else None
    except ValueError as exc:
        raise _fail(f"--dns {dns_text!r}: {exc}") from None
    user = (rep_user or os.environ.get(ENV_REP_USER) or plan.representative or "").strip()
    if not user:
        raise _fail(f"no test representative: pass --rep-user, set ${ENV_REP_USER} or put "
                    "representative = \"USERNAME\" in the plan")
    options = TestOptions(plan=plan, representative=user, password=_password(user),
                          dns=server, timeout=timeout)

    def progress(probe: ProbeSpec, result: ProbeResult | None) -> None:
        if as_json:
            return
        if result is None:
            err.print(f"probe {escape(probe.name)} …", highlight=False)

    async def main() -> TestReport:
        async with AtlasClient(conn, resolver=Resolver(server)) as api:
            return await ClusterTest(api, options).run(progress)

    try:
        report = asyncio.run(main())
    except ClientError as exc:
        raise _fail(exc.message, exc.exit_code) from None
    if as_json:
        print(json.dumps(report_dict(report), indent=2))
    else:
        _print_report(report)
    if report.aborted is not None:
        raise typer.Exit(report.aborted)
    if not report.passed:
        raise typer.Exit(EXIT_FAILED)
