"""The ``tracklink`` command: ``plugins``, ``doctor`` and ``demo``.

``tracklink plugins [--json]`` lists every tracker plugin found (built-in or third-party): whether its
SDK is installed and which version, whether it is ready, and whether the current ``report_to`` selects
it or why not, then the matrix of media types x trackers (native, the fallback, or dropped), read from
the trackers' declarations (``Tracker.media_support()``). ``tracklink doctor [--json]`` adds each tracker's environment variables (secret ones
as set/unset only), its rank policy, and checks the values. Neither imports torch or any SDK.
``tracklink demo`` trains a small model: the trainer package adds it through the ``tracklink.commands``
entry-point group (see ``tracklink.trainer.demo``), so this module never imports the trainer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .delivery import DeliverySettings
from .errors import ReportToError
from .followers import stays_in_process
from .journal import JournalError, JournalSettings
from .media import KINDS, outcome
from .registry import TrackerSpec, discover
from .resolve import ENV_REPORT_TO, NOT_GIVEN, Resolution, resolve_report_to
from .sync import SyncError, status, sync

__all__ = ["COMMAND_GROUP", "doctor_report", "main", "media_matrix", "plugin_rows"]

logger = logging.getLogger("tracklink")

#: Entry-point group of packages that add a ``tracklink`` subcommand.
COMMAND_GROUP = "tracklink.commands"


def _resolve(report_to: Any, env: Mapping[str, str], specs: dict[str, TrackerSpec]) -> tuple[Resolution | None, str | None]:
    try:
        return resolve_report_to(report_to, env, specs), None
    except ReportToError as exc:
        return None, str(exc)


#: A hook-only plugin (not a ``Tracker``) gets media values as they are, in its ``on_log``.
AS_IS = "as is (on_log)"


def media_matrix(plugin: Any) -> dict[str, str] | None:
    """What each media kind becomes at ``plugin`` (a tracker class, or a hook plugin): ``native``, the
    fallback (:func:`tracklink.media.outcome`), ``dropped``; ``None`` when the plugin did not load."""
    if plugin is None:
        return None
    support = getattr(plugin, "media_support", None)
    if isinstance(plugin, type) and callable(support):
        can = support()
        return {kind: outcome(kind, can) for kind in KINDS}
    return dict.fromkeys(KINDS, AS_IS)


def plugin_rows(report_to: Any = NOT_GIVEN, env: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One row per tracker plugin, plus the report_to resolution error (if any)."""
    env = os.environ if env is None else env
    specs = discover()
    resolution, error = _resolve(report_to, env, specs)
    rows = []
    for name, spec in specs.items():
        problem = spec.availability()
        ready = None if problem else spec.ready(env)
        selected = resolution is not None and name in resolution.names
        if selected:
            reason = "selected by report_to"
        elif resolution is not None:
            reason = resolution.skipped.get(name, "not selected")
        else:
            reason = "report_to could not be resolved"
        rows.append({
            "name": name,
            "source": spec.source,
            "distribution": spec.distribution,
            "plugin": spec.value,
            "installed": problem is None,
            "sdk": spec.sdk,
            "sdk_version": spec.sdk_version,
            "sdk_min_version": spec.sdk_min_version,
            "extra": spec.extra,
            "install": spec.install_hint() if problem else None,
            "ready": problem is None and ready is None,
            "not_ready_reason": problem or ready,
            "selected": selected,
            "reason": reason,
            "rank_policy": spec.rank_policy,
            "auto": spec.auto,
            "media": media_matrix(None if spec.load_error else spec.load()),
        })
    return rows, error


def doctor_report(report_to: Any = NOT_GIVEN, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``plugin_rows`` plus each tracker's environment variables and the problems found."""
    env = os.environ if env is None else env
    rows, error = plugin_rows(report_to, env)
    specs = discover()
    problems = [error] if error else []
    try:
        settings = DeliverySettings.from_env()
    except ValueError as exc:
        problems.append(str(exc))
        settings = None
    try:
        journal: JournalSettings | None = JournalSettings.from_env(env)
    except ValueError as exc:
        problems.append(str(exc))
        journal = None
    for row in rows:
        spec = specs[row["name"]]
        row["delivery"], refused = _delivery(spec, journal) if row["selected"] and row["installed"] else (None, None)
        variables = []
        for var in spec.env_vars:
            value = env.get(var.name)
            entry = {
                "name": var.name,
                "set": value is not None,
                "secret": var.secret,
                "default": var.default,
                "help": var.help,
                "read_by": var.read_by,
                "problem": var.problem(env),
            }
            if not var.secret:
                entry["value"] = value
            variables.append(entry)
        row["env"] = variables
        found = spec.env_problems(env) if row["installed"] else []
        if row["selected"] and not found:
            # what only a connection attempt can tell (a tracking server that does not answer)
            check = getattr(spec.load(), "connection_problems", None)
            found = list(check(env)) if callable(check) else []
        # settings of a tracker that is not selected cannot break this training: warnings only
        row["problems"] = found if row["selected"] else []
        row["warnings"] = [] if row["selected"] else found
        if refused:  # training would fail the same way
            row["problems"].append(refused)
        problems.extend(f"{row['name']}: {p}" for p in row["problems"])
    return {
        "report_to": env.get(ENV_REPORT_TO) if report_to is NOT_GIVEN else report_to,
        "report_to_origin": ENV_REPORT_TO if report_to is NOT_GIVEN and env.get(ENV_REPORT_TO) else
        ("default" if report_to is NOT_GIVEN else "--report-to"),
        "selected": [r["name"] for r in rows if r["selected"]],
        "delivery": None if settings is None else settings.__dict__,
        "trackers": rows,
        "problems": problems,
    }


def _delivery(spec: TrackerSpec, journal: JournalSettings | None) -> tuple[str, str | None]:
    """How a selected tracker would receive its events in a training started with these settings, and why;
    with the problem, when its settings are refused. Only ``TRACKLINK_DELIVERY=process`` builds the tracker (its
    settings tell whether it uploads checkpoints, which keeps it in the training process); building one reads
    its environment and imports no SDK."""
    if journal is None:
        return "unknown: the journal settings are invalid", None
    if journal.offline:
        return "none during training: recorded in the run journal for `tracklink sync` (TRACKLINK_OFFLINE=1)", None
    if spec.inline:
        return "inline, on the training thread", None
    if not journal.processes:
        return "a worker thread of the training process", None
    try:
        reason = stays_in_process(spec.create(), spec.inline)
    except (ValueError, TypeError) as exc:  # its settings: training would fail the same way
        refused = f"the tracker cannot be built ({type(exc).__name__}: {exc})"
        return f"unknown: {refused}", refused
    except Exception as exc:  # e.g. a tracker built only inside a Flyte task: not a problem of these settings
        return f"unknown: the tracker can only be built where it runs ({type(exc).__name__}: {exc})", None
    if reason is None:
        return "a process of its own, following the run journal (TRACKLINK_DELIVERY=process)", None
    return f"a worker thread of the training process, although TRACKLINK_DELIVERY=process: {reason}", None


def _print_table(rows: list[dict[str, Any]], out: Any) -> None:
    headers = ("name", "source", "installed", "sdk_version", "ready", "selected", "reason")
    table = [[str(h) for h in headers]]
    for row in rows:
        table.append([
            row["name"], row["source"], "yes" if row["installed"] else "no", row["sdk_version"] or "-",
            "yes" if row["ready"] else "no", "yes" if row["selected"] else "no", row["reason"],
        ])
    widths = [max(len(line[i]) for line in table) for i in range(len(headers) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths)] + [line[-1]]
        print("  ".join(cells).rstrip(), file=out)


def _print_media(rows: list[dict[str, Any]], out: Any) -> None:
    """The media matrix: one line per tracker, one column per kind."""
    table = [["media", *KINDS]]
    for row in rows:
        media = row.get("media")
        table.append([row["name"], *((media or {}).get(kind, "?") for kind in KINDS)])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    print("\nmedia values at each tracker (native, the fallback it gets, or dropped):", file=out)
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip(), file=out)


def _cmd_plugins(ns: argparse.Namespace) -> int:
    report_to = NOT_GIVEN if ns.report_to is None else ns.report_to
    rows, error = plugin_rows(report_to)
    if ns.json:
        json.dump({"trackers": rows, "error": error}, sys.stdout, indent=2)
        print()
    else:
        _print_table(rows, sys.stdout)
        _print_media(rows, sys.stdout)
        if error:
            print(f"\nreport_to error: {error}", file=sys.stdout)
    return 1 if error else 0


def _cmd_doctor(ns: argparse.Namespace) -> int:
    report_to = NOT_GIVEN if ns.report_to is None else ns.report_to
    report = doctor_report(report_to)
    if ns.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 1 if report["problems"] else 0
    origin = report["report_to_origin"]
    print(f"report_to: {report['report_to'] or 'all'} ({origin})")
    print("trackers: " + (", ".join(report["selected"]) or "none"))
    print()
    _print_table(report["trackers"], sys.stdout)
    _print_media(report["trackers"], sys.stdout)
    for row in report["trackers"]:
        print(f"\n[{row['name']}] rank policy: {row['rank_policy']}; "
              + ("installed " + (row["sdk_version"] or "") if row["installed"] else f"install: {row['install']}"))
        if row["not_ready_reason"]:
            print(f"  not ready: {row['not_ready_reason']}")
        if row["delivery"]:
            print(f"  delivery: {row['delivery']}")
        for warning in row.get("warnings", []):
            print(f"  note (not selected): {warning}")
        for var in row["env"]:
            if var["secret"]:
                shown = "set (secret)" if var["set"] else "unset (secret)"
            else:
                shown = f"= {var['value']!r}" if var["set"] else f"unset (default: {var['default']!r})"
            flag = f"  <-- {var['problem']}" if var["problem"] else ""
            print(f"  {var['name']:<28} {shown}{flag}")
    if report["problems"]:
        print("\nproblems:")
        for problem in report["problems"]:
            print(f"  - {problem}")
        return 1
    print("\nno problems found")
    return 0


def _cmd_sync(ns: argparse.Namespace) -> int:
    try:
        if ns.status:
            rows = status(ns.run_dir)
            if ns.json:
                json.dump(rows, sys.stdout, indent=2, default=str)
                print()
                return 0
            for row in rows:
                state = "pending" if row["pending"] else ("done" if row["closed"] else "run not closed")
                note = " (still being written)" if row["writing"] else ""
                print(f"{row['journal']}  {row['tracker']:<12} {row['pending']:>9} event(s) pending of "
                      f"{row['last']}  {state}{note}  identity: {json.dumps(row['identity'])}")
            return 0
        names = [n.strip() for n in (ns.to or "").split(",") if n.strip()]
        sent = sync(ns.run_dir, names, progress=not ns.quiet)
    except (JournalError, SyncError, ReportToError) as exc:
        print(f"tracklink sync: {exc}", file=sys.stderr)
        return 2
    if not sent:
        print("tracklink sync: nothing pending")
    for name, count in sent.items():
        print(f"tracklink sync: {count} event(s) sent to {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracklink", description="Experiment-tracking hub for PyTorch training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("plugins", "list tracker plugins and whether report_to selects them"),
        ("doctor", "explain which trackers are active and check their settings"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--report-to", default=None,
                       help=f"report_to value to evaluate (default: ${ENV_REPORT_TO} or 'all')")
    p = sub.add_parser("sync", help="send what a run's journal holds and its trackers did not accept")
    p.add_argument("run_dir", help="the run's directory (holding tracklink-journal/), or one journal file")
    p.add_argument("--to", default=None, metavar="NAMES",
                   help="comma-separated trackers to replay the whole run into (instead of the pending events)")
    p.add_argument("--status", action="store_true", help="list, per journal and tracker, what is pending")
    p.add_argument("--json", action="store_true", help="with --status: machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for command in _command_plugins():
        command(sub)
    return parser


def _command_plugins() -> list[Any]:
    """Functions that add a subcommand (``add(subparsers)``; the parser's ``handler`` default runs it),
    found in the ``tracklink.commands`` entry-point group: ``tracklink demo`` comes from the trainer
    package this way, so the core never imports the trainer."""
    from importlib import metadata

    commands = []
    for entry_point in sorted(metadata.entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        try:
            commands.append(entry_point.load())
        except Exception as exc:  # a broken command plugin must not take the others down
            logger.warning("tracklink: command plugin %r failed to load: %s", entry_point.name, exc)
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handlers = {"plugins": _cmd_plugins, "doctor": _cmd_doctor, "sync": _cmd_sync}
    handler = handlers.get(ns.command) or ns.handler
    return int(handler(ns))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
