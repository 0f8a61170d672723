"""The run journal: every event a run's trackers are to receive, kept on disk until they have it.

A journal is one SQLite database (write-ahead log mode, Python's standard library) per training session,
in ``<run dir>/tracklink-journal/``. The hub records each event a tracker handles (``on_train_begin`` with the
run's redacted configuration, ``on_log``, ``on_predict``, ``on_save``, ``on_train_end``, ``on_exception``)
on the training thread by handing it to the journal's writer thread, which inserts the events in batches and
commits at least every ``TRACKLINK_JOURNAL_COMMIT_MS`` milliseconds (default 200), at every checkpoint save
and at the end. **An event is durable once the commit that holds it returned**; a tracker's worker delivers
an event only after that commit, so a tracker never holds an event the journal lost.

Each tracker has a *cursor* in the journal: the id of the last event its SDK accepted (moved only after the
SDK call returned, and only while the tracker holds nothing back in a spool of its own), and the *identity*
of its run (MLflow run id, W&B run id, TensorBoard directory, ...). ``tracklink sync RUN_DIR``
(:mod:`tracklink.sync`) replays what lies after each cursor and re-attaches to the run by that identity.

Nothing here imports :mod:`sqlite3` at import time (``import tracklink`` stays light): the journal is opened
on ``on_train_begin``.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .envvars import EnvVar, truthy
from .journal_media import read_media, write_media
from .media import Media
from .redact import current_secrets, redact, redact_text
from .shaping import hyperparameters
from .shutdown import on_exit
from .state import SEARCH_STATE_KEY, saved_attributes
from .values import as_number

logger = logging.getLogger("tracklink")

__all__ = [
    "ENV_VARS",
    "FORMAT",
    "JOURNALED",
    "JOURNAL_DIR",
    "EmptyJournal",
    "Journal",
    "JournalError",
    "JournalFile",
    "JournalSettings",
    "journal_event_data",
    "journal_files",
    "latest_journal",
    "register_journal",
]

#: The folder of a run's directory that holds its journals (one file per training session and process).
JOURNAL_DIR = "tracklink-journal"
#: Seconds the writer lets a stream of events gather before taking them (nothing waits on it meanwhile: a
#: tracker ready to deliver, a checkpoint and the end ask for a commit, which is served at once).
GATHER_S = 0.005
#: The journal format this tracklink writes and reads.
FORMAT = 1
#: The hub events that go into the journal (the ones the tracker contract is driven by).
JOURNALED = frozenset({"on_train_begin", "on_log", "on_predict", "on_save", "on_train_end", "on_exception"})
#: Events by their journal kind.
KINDS = {"on_train_begin": "begin", "on_log": "log", "on_predict": "predict", "on_save": "save",
         "on_train_end": "end", "on_exception": "end"}

#: Accepted values of ``TRACKLINK_DELIVERY``.
DELIVERY_MODES = ("thread", "process")

ENV_VARS = (
    EnvVar("TRACKLINK_JOURNAL", "1", "0/false: no journal; trackers get events from memory only (as before "
           "the journal existed). See docs/journal.md.", kind="bool"),
    EnvVar("TRACKLINK_JOURNAL_COMMIT_MS", "200", "Milliseconds between the journal's commits at most (an "
           "event is durable once its commit returned; commits also happen at every checkpoint and at the end).",
           kind="number", minimum=1),
    EnvVar("TRACKLINK_RETRY_BUDGET", "300", "Seconds a tracker whose backend does not answer (connection refused, "
           "timeout) is retried with backoff from the journal before it is switched off; its events wait in the "
           "journal meanwhile, and for `tracklink sync` after.", kind="number", minimum=0),
    EnvVar("TRACKLINK_OFFLINE", "0", "1/true: record every event in the journal only; no tracker is contacted "
           "during training. Send them later with `tracklink sync RUN_DIR`.", kind="bool"),
    EnvVar("TRACKLINK_DELIVERY", "thread", "Where trackers run: `thread` (a worker thread each, in the training "
           "process) or `process` (a process each, following the run journal while it is written; the training "
           "process only records). See docs/performance.md.", choices=DELIVERY_MODES),
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, step INTEGER NOT NULL, "
    "epoch REAL, time REAL NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cursors (tracker TEXT PRIMARY KEY, position INTEGER NOT NULL DEFAULT 0, "
    "identity TEXT, closed INTEGER NOT NULL DEFAULT 0, live INTEGER NOT NULL DEFAULT 1)",
)


class JournalError(Exception):
    """A journal that cannot be read: corrupt, truncated, not a journal, or written in another format."""


class EmptyJournal(JournalError):
    """A journal file that holds nothing: its process ended while creating it (before its first commit)."""


class JournalSettings:
    """``TRACKLINK_JOURNAL``, ``TRACKLINK_JOURNAL_COMMIT_MS``, ``TRACKLINK_OFFLINE`` and ``TRACKLINK_DELIVERY``,
    checked."""

    def __init__(self, enabled: bool = True, interval: float = 0.2, offline: bool = False,
                 retry_budget: float = 300.0, processes: bool = False) -> None:
        self.enabled = enabled
        self.interval = interval
        self.offline = offline
        self.retry_budget = retry_budget
        self.processes = processes  # TRACKLINK_DELIVERY=process: trackers follow the journal from processes

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JournalSettings:
        env = os.environ if env is None else env
        for var in ENV_VARS:
            problem = var.problem(env)
            if problem:
                raise ValueError(problem)
        enabled = (env.get("TRACKLINK_JOURNAL") or "1").strip() == "" or truthy(env.get("TRACKLINK_JOURNAL") or "1")
        offline = truthy(env.get("TRACKLINK_OFFLINE"))
        raw = (env.get("TRACKLINK_JOURNAL_COMMIT_MS") or "").strip()
        interval = float(raw) / 1000 if raw else 0.2
        budget = (env.get("TRACKLINK_RETRY_BUDGET") or "").strip()
        retry_budget = float(budget) if budget else 300.0
        if offline and not enabled:
            raise ValueError("TRACKLINK_OFFLINE=1 records the run in the journal, but TRACKLINK_JOURNAL=0 switches "
                             "the journal off; accepted: TRACKLINK_JOURNAL=1 (the default) with TRACKLINK_OFFLINE=1")
        processes = (env.get("TRACKLINK_DELIVERY") or "").strip().lower() == "process"
        if processes and not enabled:
            raise ValueError("TRACKLINK_DELIVERY=process delivers from the run journal, but TRACKLINK_JOURNAL=0 "
                             "switches the journal off; accepted: TRACKLINK_JOURNAL=1 (the default) with "
                             "TRACKLINK_DELIVERY=process, or TRACKLINK_DELIVERY=thread")
        if processes and offline:
            raise ValueError("TRACKLINK_DELIVERY=process delivers while training, but TRACKLINK_OFFLINE=1 delivers "
                             "nothing until `tracklink sync`; accepted: one of them")
        return cls(enabled, interval, offline, retry_budget, processes)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _connect(path: Path | str, *, create: bool) -> Any:
    import sqlite3

    if not create and not os.path.isfile(path):
        raise JournalError(f"{path}: no such journal")
    connection = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    return connection


class Journal:
    """The writer of one journal file (see the module documentation). Made by :meth:`create`; its methods
    never raise into training: a write that fails (a full disk) switches the journal off with a warning, and
    delivery goes on from memory."""

    def __init__(self, path: Path, connection: Any, interval: float, trackers: Mapping[str, bool]) -> None:
        self.path = path
        self.run_dir = path.parent.parent
        self.interval = interval
        self.failed: str | None = None
        self._db = connection
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self.last = 0  # the id of the last event recorded (training thread)
        self.committed = 0  # the id of the last event committed (writer thread)
        self._cond = threading.Condition()
        self._closed = False
        self._asked = False  # a commit was asked for by a waiting tracker and has not happened yet
        # events handed over by the training thread; the writer is woken through _ops only when it said it was
        # idle, so a stream of log calls costs the training thread no wake-up (a system call) per event
        self._incoming: collections.deque[tuple[Any, ...]] = collections.deque()
        self._idle = True
        self.trackers = dict(trackers)  # name -> live (False: offline, only recorded)
        self._thread = threading.Thread(target=self._work, name="tracklink-journal", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, run_dir: str | os.PathLike[str], trackers: Mapping[str, bool], *, interval: float,
               rank: int = 0, world_size: int = 1, continues: str | None = None) -> Journal | None:
        """A new journal file in ``run_dir``/tracklink-journal, or ``None`` (with a warning) when it cannot be
        written: the run then delivers from memory."""
        folder = Path(run_dir) / JOURNAL_DIR
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        suffix = _rank_suffix(rank, world_size)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for n in itertools.count():
                path = folder / f"{stamp}-{n:03d}-{os.getpid()}{suffix}.sqlite"  # sorts by time, then n
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    break
                except FileExistsError:
                    continue
            db = _connect(path, create=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            meta = {"format": FORMAT, "tracklink": _version(), "created": time.time(), "host": _host(),
                    "pid": os.getpid(), "cwd": os.getcwd(), "rank": rank, "world_size": world_size, "closed": False,
                    "continues": continues}
            db.execute("BEGIN")  # the tables and what describes the journal in one transaction: all or nothing
            for statement in _SCHEMA:
                db.execute(statement)
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, _dumps(v)) for k, v in meta.items()])
            db.executemany("INSERT INTO cursors (tracker, position, live) VALUES (?, 0, ?)",
                           [(name, int(live)) for name, live in trackers.items()])
            db.execute("COMMIT")
        except Exception as exc:  # a full disk, a read-only directory: training goes on without the journal
            logger.warning("tracklink: the run journal cannot be written in %s (%s: %s); events are delivered from "
                           "memory only", folder, type(exc).__name__, exc)
            return None
        return cls(path, db, interval, trackers)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the training thread -----------------------------------------------------------------------

    def record(self, event: str, step: int, epoch: Any, data: Mapping[str, Any], when: float | None = None) -> int:
        """Hand one event to the writer; returns its id (its place in the journal). Cheap: no I/O here. ``when``
        (seconds since the epoch, now by default) is the time trackers were given with the event."""
        if self._closed:
            return 0
        seq = next(self._ids)
        self.last = seq
        self._hand(("event", seq, KINDS[event], step, epoch, data, time.time() if when is None else when))
        return seq

    def record_values(self, event: str, step: int, epoch: Any, key: str, values: Any,
                      when: float | None = None) -> int:
        """:meth:`record` for ``on_log``/``on_predict``: ``values`` (the event's snapshot copy, never changed
        afterwards) is filtered and redacted on the writer thread, not on the training thread."""
        if self._closed:
            return 0
        seq = next(self._ids)
        self.last = seq
        self._hand(("values", seq, KINDS[event], step, epoch, key, values, time.time() if when is None else when))
        return seq

    def _hand(self, item: tuple[Any, ...]) -> None:
        self._incoming.append(item)
        if self._idle:
            self._idle = False
            self._ops.put(("wake", None))

    def commit(self, timeout: float | None = 10.0) -> bool:
        """Commit everything recorded so far now and wait for it (at a checkpoint, at the end, and on a tracker's
        worker when its run identity must be durable before its backend gets points)."""
        if self.failed or self._closed:
            return False
        done = threading.Event()
        self._ops.put(("commit", done))
        return done.wait(timeout)

    def request_commit(self) -> None:
        """Ask for a commit without waiting (a barrier wants the events behind it delivered soon)."""
        if not self.failed and not self._closed:
            self._ops.put(("commit", None))

    # -- the trackers' worker threads ----------------------------------------------------------------

    def wait_committed(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until event ``seq`` is durable (or the journal was switched off)."""
        if seq <= self.committed or self.failed or self._closed:
            return True
        if not self._asked:  # a tracker is ready for it: commit what is queued now rather than at the deadline
            self._asked = True
            self._ops.put(("commit", None))
        with self._cond:
            return self._cond.wait_for(lambda: seq <= self.committed or self.failed is not None or self._closed,
                                       timeout)

    def advance(self, tracker: str, seq: int, closed: bool = False) -> None:
        """``tracker``'s SDK accepted every event up to ``seq`` (and closed its run when ``closed``)."""
        self._ops.put(("cursor", tracker, seq, closed))

    def identify(self, tracker: str, identity: Mapping[str, Any] | None) -> None:
        self._ops.put(("identity", tracker, _dumps(dict(identity)) if identity is not None else None))

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is left, mark the journal closed and stop the writer."""
        if self._closed:
            return
        done = threading.Event()
        self._ops.put(("close", done))
        done.wait(timeout)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._closed = True
        with self._cond:
            self._cond.notify_all()

    def pending(self) -> dict[str, int]:
        """Events each tracker has not accepted yet (read from the file: call after :meth:`commit`)."""
        return {c.tracker: c.pending for c in self._cursors()}

    def identities(self) -> dict[str, dict[str, Any]]:
        """The run identity of each tracker that has one, as stored in the file (by the processes following
        it, or at a commit); also from a journal that failed later (what it holds stays readable)."""
        return {c.tracker: c.identity for c in self._cursors(even_failed=True) if c.identity is not None}

    def _cursors(self, even_failed: bool = False) -> list[Cursor]:
        if self.failed and not even_failed:
            return []
        try:
            file = JournalFile(self.path)
            try:
                return file.cursors()
            finally:
                file.close()
        except Exception as exc:
            logger.debug("tracklink: reading the journal's cursors failed: %r", exc)
            return []

    # -- the writer thread -------------------------------------------------------------------------

    def _work(self) -> None:
        events: list[tuple[Any, ...]] = []
        cursors: dict[str, tuple[int, bool]] = {}
        identities: dict[str, str | None] = {}
        waiting: list[threading.Event] = []
        deadline: float | None = None
        while True:
            if self._incoming:
                self._take(events)
                if deadline is None and events:
                    deadline = time.monotonic() + self.interval
                if not self._asked and self._ops.empty() and deadline is not None \
                        and time.monotonic() + GATHER_S < deadline:
                    time.sleep(GATHER_S)  # a stream of events: let it gather (no wake-up per event)
                    continue
            else:
                self._idle = True
                if self._incoming:  # handed over while the writer was saying it is idle
                    self._idle = False
                    continue
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                op = self._ops.get(timeout=timeout) if timeout != 0.0 else self._ops.get_nowait()
            except queue.Empty:
                op = ("commit", None)
            self._idle = False
            kind = op[0]
            if kind == "wake":
                continue
            if kind == "cursor":
                _, name, seq, closed = op
                old = cursors.get(name)
                cursors[name] = (max(seq, old[0]) if old else seq, closed or bool(old and old[1]))
                if deadline is None:
                    deadline = time.monotonic() + self.interval
                continue
            if kind == "identity":
                identities[op[1]] = op[2]
                if deadline is None:
                    deadline = time.monotonic() + self.interval
                continue
            self._take(events)  # a commit holds every event recorded before it was asked for
            # commit, or close
            if op[1] is not None:
                waiting.append(op[1])
            if kind == "commit" and not events and not cursors and not identities:
                self._asked = False
                for done in waiting:
                    done.set()
                waiting.clear()
                deadline = None
                continue
            self._write(events, cursors, identities, close=kind == "close")
            events, cursors, identities, deadline = [], {}, {}, None
            if kind == "close":  # closed (the write-ahead log checkpointed into the file) before anyone is told
                try:
                    self._db.close()
                except Exception:
                    pass
            for done in waiting:
                done.set()
            waiting.clear()
            if kind == "close":
                return

    def _take(self, events: list[tuple[Any, ...]]) -> None:
        """Turn the events handed over so far into rows (values filtered and redacted, media stored beside the
        journal, JSON text) and add them to ``events``."""
        incoming = self._incoming
        while incoming:
            op = incoming.popleft()
            if op[0] == "values":
                _, seq, ekind, step, epoch, key, values, when = op
                skipped: list[str] = []
                media: dict[str, Media] = {}
                data: dict[str, Any] = {key: _plain(values, skipped, media)}
                if media and not self.failed:
                    try:
                        data["media"] = write_media(self.path, seq, media, current_secrets(), skipped)
                    except OSError as exc:  # a full disk: like a failed commit, delivery goes on from memory
                        self._fail(exc)
                if skipped:
                    data["not_journaled"] = skipped
            else:
                _, seq, ekind, step, epoch, data, when = op
            if self.failed:
                continue
            try:
                text = _dumps(data)
            except (TypeError, ValueError) as exc:  # never expected: values are plain by now
                text = _dumps({"unjournaled": repr(exc)})
            events.append((seq, ekind, int(step or 0), _epoch(epoch), when, text))

    def _fail(self, exc: BaseException) -> None:
        self.failed = f"{type(exc).__name__}: {exc}"
        logger.warning("tracklink: the run journal %s cannot be written any more (%s); training continues and "
                       "trackers get events from memory only (what a tracker does not receive in this process "
                       "is lost)", self.path, self.failed)
        with self._cond:
            self._cond.notify_all()

    def _write(self, events: list[tuple[Any, ...]], cursors: dict[str, tuple[int, bool]],
               identities: dict[str, str | None], close: bool = False) -> None:
        if self.failed:
            return
        db = self._db
        try:
            db.execute("BEGIN")
            if events:
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", events)
            for name, identity in identities.items():
                db.execute("UPDATE cursors SET identity = ? WHERE tracker = ?", (identity, name))
            for name, (seq, closed) in cursors.items():
                db.execute("UPDATE cursors SET position = MAX(position, ?), closed = MAX(closed, ?) WHERE tracker = ?",
                           (seq, int(closed), name))
            if close:
                db.execute("UPDATE meta SET value = 'true' WHERE key = 'closed'")
            db.execute("COMMIT")
        except Exception as exc:  # SQLITE_FULL, an I/O error: fall back to delivery from memory
            try:
                db.execute("ROLLBACK")
            except Exception:
                pass
            self._fail(exc)
            return
        self._asked = False
        if events:
            with self._cond:
                self.committed = events[-1][0]
                self._cond.notify_all()


def _rank_suffix(rank: int, world_size: int) -> str:
    """What a journal's file name ends with (before ``.sqlite``) in a run of several processes."""
    return f"-rank{rank}" if world_size > 1 else ""


def _host() -> str:
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket  # lazy: slow to import, needed only where os.uname is missing

    return socket.gethostname()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tracklink")
    except metadata.PackageNotFoundError:
        return "unknown"


def _epoch(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- reading ------------------------------------------------------------------------------------------


class Cursor:
    """One tracker's place in a journal."""

    def __init__(self, tracker: str, position: int, identity: dict[str, Any] | None, closed: bool, live: bool,
                 last: int) -> None:
        self.tracker = tracker
        self.position = position
        self.identity = identity
        self.closed = closed
        self.live = live
        self.last = last

    @property
    def pending(self) -> int:
        return max(0, self.last - self.position)


class Event:
    """One journal event: ``id``, ``kind`` (begin, log, predict, save, end), ``step``, ``epoch``, ``data``, and
    ``when`` it was logged (seconds since the epoch)."""

    __slots__ = ("data", "epoch", "id", "kind", "source", "step", "when")

    def __init__(self, id: int, kind: str, step: int, epoch: float | None, data: dict[str, Any],
                 source: Path | None = None, when: float | None = None) -> None:
        self.id, self.kind, self.step, self.epoch, self.data, self.when = id, kind, step, epoch, data, when
        self.source = source  # the journal file it was read from (its media files are beside it)

    def logs(self) -> dict[str, Any]:
        """A log event's values: numbers and text, and its media values read back from their files."""
        values = self.data.get("logs") or {}
        media = self.data.get("media")
        if media and self.source is not None:
            values = {**values, **read_media(self.source, media)}
        return values


class JournalFile:
    """A journal opened for reading and for moving cursors (``tracklink sync``). Refuses, with
    :class:`JournalError`, a file that is not a journal, is corrupt or truncated, or is of another format."""

    def __init__(self, path: str | os.PathLike[str], *, check: bool = False) -> None:
        import sqlite3

        self.path = Path(path)
        self._db = _connect(self.path, create=False)
        try:
            if check:
                rows = self._db.execute("PRAGMA quick_check").fetchall()
                if rows != [("ok",)]:
                    raise JournalError(f"{self.path} is corrupt ({'; '.join(str(r[0]) for r in rows[:3])}); "
                                       "nothing was replayed from it")
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                raise EmptyJournal(f"{self.path} holds nothing (its process ended while creating it)")
            if not {"meta", "events", "cursors"} <= tables:
                raise JournalError(f"{self.path} is not a tracklink journal (it has no meta/events/cursors tables)")
            self.meta = {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JournalError(f"{self.path} is corrupt or truncated ({exc}); nothing was replayed from it") from None
        except JournalError:
            self._db.close()
            raise
        version = self.meta.get("format")
        if version != FORMAT:
            self._db.close()
            raise JournalError(f"{self.path} was written by tracklink {self.meta.get('tracklink', '?')} in journal "
                               f"format {version!r}; this tracklink reads format {FORMAT}: sync it with the "
                               "tracklink version that wrote it")

    def close(self) -> None:
        self._db.close()

    @property
    def last(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def count(self, after: int = 0) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events WHERE id > ?", (after,)).fetchone()[0])

    def cursors(self) -> list[Cursor]:
        last = self.last
        out = []
        for name, position, identity, closed, live in self._db.execute(
                "SELECT tracker, position, identity, closed, live FROM cursors ORDER BY rowid"):
            out.append(Cursor(name, int(position), json.loads(identity) if identity else None, bool(closed),
                              bool(live), last))
        return out

    def cursor(self, tracker: str) -> Cursor | None:
        return next((c for c in self.cursors() if c.tracker == tracker), None)

    def add_tracker(self, tracker: str) -> Cursor:
        """A cursor at the start for a tracker the run did not have (``tracklink sync --to``)."""
        self._db.execute("INSERT OR IGNORE INTO cursors (tracker, position, live) VALUES (?, 0, 0)", (tracker,))
        found = self.cursor(tracker)
        assert found is not None
        return found

    def events(self, after: int = 0, batch: int = 2000) -> Iterator[Event]:
        """The events after id ``after``, in order (read in batches)."""
        position = after
        while True:
            rows = self._db.execute("SELECT id, kind, step, epoch, time, data FROM events WHERE id > ? ORDER BY id "
                                    "LIMIT ?", (position, batch)).fetchall()
            if not rows:
                return
            for id_, kind, step, epoch, when, data in rows:
                try:
                    payload = json.loads(data)
                except ValueError as exc:
                    raise JournalError(f"{self.path}: event {id_} cannot be read ({exc}); the journal is corrupt") from None
                yield Event(int(id_), str(kind), int(step), epoch, payload, self.path, when)
            position = int(rows[-1][0])

    def event(self, id_: int) -> Event | None:
        return next(iter(self.events(id_ - 1, batch=1)), None) if id_ > 0 else None

    def first(self, kind: str) -> Event | None:
        row = self._db.execute("SELECT id FROM events WHERE kind = ? ORDER BY id LIMIT 1", (kind,)).fetchone()
        return self.event(int(row[0])) if row else None

    def step_start(self, id_: int) -> int:
        """The id of the first event (after the ``begin``) at the step of event ``id_``: a re-attached backend that
        drops what it holds from a step on gets the whole step again."""
        event = self.event(id_)
        if event is None or event.kind == "begin":
            return id_
        row = self._db.execute(
            "SELECT MAX(id) FROM events WHERE id < ? AND (kind = 'begin' OR step != ?)", (id_, event.step)).fetchone()
        return int(row[0] or 0) + 1

    def has_end(self) -> Event | None:
        row = self._db.execute("SELECT id FROM events WHERE kind = 'end' ORDER BY id DESC LIMIT 1").fetchone()
        return self.event(int(row[0])) if row else None

    def move(self, tracker: str, position: int, *, identity: Mapping[str, Any] | None = None,
             closed: bool = False) -> None:
        """Move ``tracker``'s cursor (and store its run identity); committed at once."""
        self._db.execute("BEGIN IMMEDIATE")
        if identity is not None:
            self._db.execute("UPDATE cursors SET identity = ? WHERE tracker = ?", (_dumps(dict(identity)), tracker))
        self._db.execute("UPDATE cursors SET position = MAX(position, ?), closed = MAX(closed, ?) WHERE tracker = ?",
                         (position, int(closed), tracker))
        self._db.execute("COMMIT")

    def closed(self) -> bool:
        """Whether its writer closed it (read now: the writer may close it while this reader is open)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'closed'").fetchone()
        return bool(row) and json.loads(row[0]) is True

    def writer_alive(self) -> bool:
        """Whether the process that writes this journal still runs (same host, its pid alive, not closed)."""
        if self.meta.get("closed") is True or self.meta.get("host") != _host() or self.closed():
            return False
        pid = self.meta.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # a zombie (killed, not reaped yet) is not alive
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return True


def latest_journal(run_dir: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> str | None:
    """The name of the newest journal of ``rank`` in ``run_dir`` (the session a resumed training continues)."""
    folder = Path(run_dir) / JOURNAL_DIR
    names = sorted(p.name for p in folder.glob(f"*{_rank_suffix(rank, world_size)}.sqlite")
                   if world_size > 1 or "-rank" not in p.name)
    return names[-1] if names else None


def journal_files(target: str | os.PathLike[str]) -> list[Path]:
    """The journal files of a run directory (or a journal folder, or one journal file), oldest first. A
    directory without a journal of its own gives the journals of the runs below it (a hyper-parameter search's
    output directory holds one run directory per trial), oldest first across them."""
    path = Path(target)
    if path.is_file():
        return [path]
    folder = path if path.name == JOURNAL_DIR else path / JOURNAL_DIR
    if folder.is_dir():
        return sorted(folder.glob("*.sqlite"))
    if not path.is_dir():
        return []
    found = [Path(root) / name for root, dirs, names in os.walk(path) if os.path.basename(root) == JOURNAL_DIR
             for name in names if name.endswith(".sqlite")]
    return sorted(found, key=lambda p: (p.name, str(p)))


# -- what goes into an event ---------------------------------------------------------------------------


def _plain(values: Any, skipped: list[str], media: dict[str, Media] | None = None) -> dict[str, Any]:
    """The loggable values of a log: numbers and text (secrets masked); media values go to ``media`` (stored
    beside the journal by :func:`tracklink.journal_media.write_media`) when given, else to ``skipped``."""
    out: dict[str, Any] = {}
    if not isinstance(values, Mapping):
        return out
    secrets: list[str] | None = None
    for key, value in values.items():
        kind = type(value)
        if kind is float or kind is int or kind is bool:
            out[key if type(key) is str else str(key)] = value
            continue
        if isinstance(value, str):
            if secrets is None:  # the environment is read only for a log that holds text
                secrets = current_secrets()
            out[str(key)] = redact_text(value, secrets)
            continue
        if media is not None and isinstance(value, Media):
            media[str(key)] = value
            continue
        number = as_number(value)
        if number is None:
            skipped.append(str(key))
        else:
            out[str(key)] = number
    return out


def journal_event_data(event: str, snap: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a hub event a tracker needs, as plain JSON-able data, redacted (the training thread)."""
    if event in ("on_log", "on_predict"):
        key = "logs" if event == "on_log" else "metrics"
        skipped: list[str] = []
        data: dict[str, Any] = {key: _plain(snap.get(key), skipped)}
        if skipped:
            data["not_journaled"] = skipped
        return data
    secrets = current_secrets()
    if event == "on_train_begin":
        args = snap.get("args")
        state = snap.get("state")
        try:
            config, args_config, model_config = hyperparameters(args, snap.get("model"))
        except Exception:  # an args object without to_dict(): the run still journals its events
            config, args_config, model_config = {}, {}, {}
        return {
            "run": {
                "output_dir": str(getattr(args, "output_dir", "") or ""),
                "run_name": redact(getattr(args, "run_name", None), secrets),
                "project": redact(getattr(args, "project", None), secrets),
                "logging_dir": getattr(args, "logging_dir", None),
                "report_to": list(getattr(args, "report_to", None) or []),
                "init_kwargs": redact(dict(getattr(args, "init_kwargs", None) or {}), secrets),
                "trial_name": getattr(state, "trial_name", None),
                "trial_params": redact(dict(getattr(state, "trial_params", None) or {}), secrets),
                "is_hyper_param_search": bool(getattr(state, "is_hyper_param_search", False)),
                "search": redact(saved_attributes(state, SEARCH_STATE_KEY), secrets),
            },
            "config": config, "args_config": args_config, "model_config": model_config,
        }
    if event == "on_save":
        return {"checkpoint_dir": str(snap.get("checkpoint_dir") or "")}
    if event == "on_exception":
        exception = snap.get("exception")
        killed = isinstance(exception, (KeyboardInterrupt, SystemExit)) or type(exception).__name__ == "TrialPruned"
        return {"status": "killed" if killed else "failed",
                "error": redact(f"{type(exception).__name__}: {exception}", secrets) if exception else None}
    return {"status": "success"}


_live: list[Journal] = []


def register_journal(journal: Journal) -> None:
    """Close ``journal`` at interpreter exit (after the trackers' queues were drained)."""
    _live.append(journal)
    on_exit("journals", _close_all)


def _close_all() -> None:
    while _live:
        journal = _live.pop()
        try:
            journal.close()
        except Exception as exc:  # pragma: no cover - best effort at shutdown
            logger.debug("tracklink: closing the journal %s failed: %r", journal.path, exc)
