"""``tracklink sync RUN_DIR``: send what a run's journal holds and its trackers did not accept.

For each journal of the run (one per training session and process, oldest first) and each tracker with a
cursor in it, the events after the cursor are replayed into the tracker through the tracker contract, as
during training: ``setup`` re-attaches to the tracker's run by the identity the journal kept (a run recorded
offline, or a tracker that never got its run set up, gets a new run), then the metrics, texts, summaries and
checkpoint hand-offs follow in order, and the run is closed with the status the journal recorded (``killed``
when the process died without one). The cursor moves after each batch the tracker accepted, so an interrupted
sync goes on where it stopped when run again. ``--to NAMES`` replays the whole run into other trackers.

Duplicates: a tracker that re-attaches resumes at the step of its first pending event, re-sending that step's
earlier events; the backend keeps each point once where it can tell (see docs/journal.md, per tracker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .delivery import deliver_events
from .journal import Cursor, EmptyJournal, Event, JournalError, JournalFile, journal_files
from .registry import discover
from .resolve import resolve_report_to
from .run import RunArgs
from .state import SEARCH_STATE_KEY, TrainerControl, TrainerState
from .tracker import RunEnd

logger = logging.getLogger("tracklink")

__all__ = ["SyncError", "status", "sync"]

#: Events handed to a tracker between two cursor moves.
BATCH = 1000


class SyncError(Exception):
    """``tracklink sync`` cannot go on (a journal that cannot be read, a run still being written, a tracker
    that is not installed)."""


class _ReplayArgs(RunArgs):
    """The run's arguments as the journal kept them (redacted), with the hyper-parameter views trackers log."""

    _tracklink_hparams: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    _tracklink_replay = False  # re-attached after events its run may hold (RunInfo.replay)


def _args(begin: Event | None, run_dir: Path, report_to: list[str]) -> _ReplayArgs:
    data = begin.data if begin is not None else {}
    run = data.get("run") or {}
    output_dir = run.get("output_dir") or str(run_dir)
    args = _ReplayArgs(output_dir=output_dir, run_name=run.get("run_name"), project=run.get("project"),
                       config=data.get("config") or {}, init_kwargs=run.get("init_kwargs") or {}, report_to=report_to)
    args.logging_dir = run.get("logging_dir")
    args._tracklink_hparams = (dict(data.get("config") or {}), dict(data.get("args_config") or {}),
                               dict(data.get("model_config") or {}))
    return args


def _trial_state(begin: Event | None) -> TrainerState:
    """A state that tells trackers what the journal's run was: a trial of a hyper-parameter search keeps its
    trial name, parameters and search (MLflow's parent run, the trial as run name, DVCLive's and TensorBoard's
    per-trial directories), as when it was logged live."""
    state = TrainerState()
    run = (begin.data.get("run") if begin is not None else None) or {}
    state.trial_name = run.get("trial_name")
    state.trial_params = run.get("trial_params") or None
    state.is_hyper_param_search = bool(run.get("is_hyper_param_search"))
    if run.get("search"):
        state.stateful_callbacks[SEARCH_STATE_KEY] = {"args": {}, "attributes": dict(run["search"])}
    return state


def status(target: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per journal and tracker: events pending, whether its run was closed, its identity."""
    rows = []
    for path in _files(target):
        try:
            journal = _open(path)
        except EmptyJournal:
            continue
        try:
            alive = journal.writer_alive()
            for cursor in journal.cursors():
                rows.append({"journal": str(path), "tracker": cursor.tracker, "pending": cursor.pending,
                             "position": cursor.position, "last": cursor.last, "closed": cursor.closed,
                             "live": cursor.live, "identity": cursor.identity, "writing": alive})
        finally:
            journal.close()
    return rows


def sync(target: str | os.PathLike[str], to: Sequence[str] = (), *, progress: bool = True) -> dict[str, int]:
    """Replay every tracker's pending events (or, with ``to``, the whole run into those trackers); returns the
    events sent per tracker. Raises :class:`SyncError` or :class:`JournalError` (nothing half-replayed:
    cursors stay where the trackers' acceptance left them)."""
    files = _files(target)
    sent: dict[str, int] = {}
    specs = discover()
    names: list[str] = []
    if to:
        resolution = resolve_report_to(list(to), specs=specs)
        names = list(resolution.names)
    for path in files:
        try:
            journal = _open(path, check=True)
        except EmptyJournal as exc:
            logger.info("tracklink: sync: %s", exc)
            continue
        try:
            if journal.writer_alive():
                raise SyncError(f"{path} is still being written by process {journal.meta.get('pid')}; sync it after "
                                "that run ended")
            cursors = [journal.add_tracker(n) for n in names] if to else journal.cursors()
            for cursor in cursors:
                if cursor.pending == 0 and (cursor.closed or cursor.last == 0):
                    continue
                spec = specs.get(cursor.tracker)
                if spec is None:
                    raise SyncError(f"{path}: tracker {cursor.tracker!r} is not installed here; known trackers: "
                                    f"{', '.join(specs)}")
                count = replay(journal, cursor, spec, progress)
                sent[cursor.tracker] = sent.get(cursor.tracker, 0) + count
        finally:
            journal.close()
    return sent


def _files(target: str | os.PathLike[str]) -> list[Path]:
    files = journal_files(target)
    if not files:
        raise SyncError(f"{target}: no run journal there (expected {Path(target) / 'tracklink-journal'}/*.sqlite)")
    return files


def _open(path: Path, check: bool = False) -> JournalFile:
    try:
        return JournalFile(path, check=check)
    except JournalError:
        raise
    except Exception as exc:
        raise JournalError(f"{path} cannot be opened as a journal ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def _in_directory(path: Any) -> Iterator[None]:
    """Run in the training's working directory when it exists here (relative paths in identities)."""
    previous = os.getcwd()
    target = str(path) if isinstance(path, str) and os.path.isdir(path) else None
    if target:
        os.chdir(target)
    try:
        yield
    finally:
        if target:
            os.chdir(previous)


def replay(journal: JournalFile, cursor: Cursor, spec: Any, progress: bool, *, follow: float | None = None,
           stop: threading.Event | None = None, batch_size: int | None = None) -> int:
    """Send ``cursor``'s pending events of ``journal`` to a tracker made from ``spec`` and close its run; returns
    the events sent. With ``follow`` (seconds between looks), go on with the events written meanwhile until the
    journal is closed or its writer died (tracklink.follow); ``stop`` ends that early, between two batches,
    leaving the run open and the rest in the journal."""
    batch_size = batch_size or BATCH
    begin = journal.first("begin")
    run_dir = journal.path.parent.parent
    with _in_directory(journal.meta.get("cwd")):
        tracker = spec.create()
        args = _args(begin, run_dir, [cursor.tracker])
        state = _trial_state(begin)
        control = TrainerControl()
        after = cursor.position
        replayed_begin = False
        identity = cursor.identity or _carried_identity(journal, cursor.tracker)
        first = journal.event(cursor.position + 1)
        if identity is not None and first is not None and first.kind == "begin":
            # a continuation (events after the end of a session, e.g. an evaluation after train()): re-attach at
            # its step, as the live tracker did, and leave alone what the run holds
            state.global_step = first.step
            after = first.id
            tracker.load_state({"attributes": {"run": identity}})
            tracker.on_train_begin(args, state, control)
        elif identity is not None and first is None:
            # everything was accepted, the run was not closed (the process died first): re-attach to close it
            last = journal.event(cursor.position)
            state.global_step = last.step if last is not None else 0
            tracker.load_state({"attributes": {"run": identity}})
            tracker.on_train_begin(args, state, control)
        elif identity is not None and first is not None:
            # re-attach; the backend drops (or keeps once) what it holds from the first pending step on
            start = journal.step_start(first.id)
            after = max(start - 1, begin.id if begin is not None else 0)
            state.global_step = first.step - 1  # resumed before that step: the backend drops what it holds after it
            args._tracklink_replay = True
            tracker.load_state({"attributes": {"run": identity}})
            tracker.on_train_begin(args, state, control)
        elif begin is not None:
            after = begin.id
            replayed_begin = True
            state.global_step = begin.step
            tracker.on_train_begin(args, state, control)
        identity = tracker.identity
        if identity is not None and identity != cursor.identity:
            journal.move(cursor.tracker, cursor.position, identity=identity)  # a rerun re-attaches, never duplicates
        total = journal.count(after)
        bar = tqdm(total=total, unit="event", desc=f"{cursor.tracker} {journal.path.name}", disable=not progress,
                   file=sys.stderr, leave=True)
        sent = int(replayed_begin)
        ended = False
        try:
            stopped = False
            while not stopped:
                # looked at before the events are read: a journal closed after this look still has its last
                # events read below, then the loop ends
                writing = follow is not None and journal.writer_alive()
                batch: list[Event] = []
                for event in journal.events(after):
                    batch.append(event)
                    if len(batch) >= batch_size:
                        ended = deliver_events(tracker, batch, args, state, control) or ended
                        sent, after = sent + len(batch), batch[-1].id
                        _accepted(journal, cursor.tracker, tracker, after)
                        bar.update(len(batch))
                        batch = []
                        stopped = stop is not None and stop.is_set()
                        if stopped:
                            break
                if batch and not stopped:
                    ended = deliver_events(tracker, batch, args, state, control) or ended
                    sent, after = sent + len(batch), batch[-1].id
                    _accepted(journal, cursor.tracker, tracker, after)
                    bar.update(len(batch))
                stopped = stopped or (stop is not None and stop.is_set())
                if not writing:
                    break
                if not stopped:
                    time.sleep(follow or 0.0)
            # a follower stopped before the end of what its journal holds (or will hold): its run is closed as
            # killed and the cursor stays, so tracklink sync re-attaches to it for the rest
            incomplete = stopped and (journal.count(after) > 0 or journal.writer_alive())
            if tracker.is_active:
                # no end event: an evaluation after train() in a process that exited normally (its journal was
                # closed), or a process that died (kill -9, OOM): closed as killed
                clean = not incomplete and (ended or journal.closed())
                tracker.close(_run_end("success" if clean else "killed", state))
            if incomplete:
                return sent
            if tracker.unsent_count():
                raise SyncError(f"tracker {cursor.tracker!r} still holds {tracker.unsent_count()} point(s) its backend "
                                "did not take; run tracklink sync again when it answers")
            journal.move(cursor.tracker, journal.last, identity=tracker.identity, closed=True)
        finally:
            bar.close()
    logger.log(logging.INFO if follow is None else logging.DEBUG, "tracklink: sync: %d event(s) of %s sent to %s",
               sent, journal.path, cursor.tracker)
    return sent


def _carried_identity(journal: JournalFile, tracker: str) -> dict[str, Any] | None:
    """A continuation journal of a tracker that had no run yet when it was written (offline): the run that the
    sync of the journal it continues created."""
    previous = journal.meta.get("continues")
    if not isinstance(previous, str) or not (journal.path.parent / previous).is_file():
        return None
    earlier = _open(journal.path.parent / previous)
    try:
        cursor = earlier.cursor(tracker)
        return cursor.identity if cursor is not None else None
    finally:
        earlier.close()


def _run_end(status: str, state: TrainerState) -> Any:
    return RunEnd(status, step=state.global_step, epoch=state.epoch)


def _accepted(journal: JournalFile, name: str, tracker: Any, position: int) -> None:
    if not tracker.unsent_count():
        journal.move(name, position, identity=tracker.identity)
