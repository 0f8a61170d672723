"""Trackers in processes of their own (``TRACKLINK_DELIVERY=process``): the follower process.

The training process records every event in the run journal, as offline, builds no tracker, and starts one
process per tracker (``python -m tracklink.follow JOURNAL TRACKER``, see tracklink.followers). That process
replays the journal into its tracker while the journal is being written, the way ``tracklink sync`` replays it
afterwards: same setup, same batches, same cursor. An SDK's work (serialising, files, sqlite, HTTP) then runs
outside the training process and its interpreter lock, on another core where the machine has one.

A follower stops when the journal is closed (the end of the training session) and it delivered everything, or
when its writer died (then the tracker's run is closed as ``killed``, as ``tracklink sync`` would). SIGTERM
(the training process stopping it at exit) ends it after the batch it is delivering.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence

from .journal import EmptyJournal, JournalFile
from .log import ensure_default_logging
from .registry import discover
from .sync import SyncError, replay

logger = logging.getLogger("tracklink")

__all__ = ["follow", "main"]

#: Seconds between two looks at the journal for new events.
POLL_S = 0.1
#: Events handed to the tracker between two cursor moves (and two looks at a request to stop).
BATCH = 200

#: Set when the training process stops this follower (SIGTERM): the batch being delivered is finished, the
#: tracker's run closed as ``killed``, and the rest left in the journal.
_stopping = threading.Event()


def follow(path: str | os.PathLike[str], tracker: str, poll: float = POLL_S) -> int:
    """Replay journal ``path`` into ``tracker`` while it is written, until it is closed or its writer died;
    returns the events sent. Raises what ``tracklink sync`` raises (the cursor stays where the tracker's
    acceptance left it)."""
    journal = JournalFile(path)
    try:
        while journal.first("begin") is None:  # the training process commits its first event soon
            if not journal.writer_alive() or _stopping.is_set():
                return 0
            time.sleep(poll)
        cursor = journal.cursor(tracker)
        spec = discover().get(tracker)
        if cursor is None or spec is None:
            raise SyncError(f"{path}: tracker {tracker!r} has no cursor in this journal or is not installed here")
        return replay(journal, cursor, spec, progress=False, follow=poll, stop=_stopping,
                      batch_size=BATCH)
    finally:
        journal.close()


def _stop(signum: int, frame: object) -> None:
    _stopping.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracklink.follow",
                                     description="Deliver one tracker's events from a run journal being written.")
    parser.add_argument("journal")
    parser.add_argument("tracker")
    ns = parser.parse_args(argv)
    ensure_default_logging()
    signal.signal(signal.SIGTERM, _stop)
    try:
        follow(ns.journal, ns.tracker)
    except EmptyJournal:
        return 0
    except Exception as exc:
        logger.error("tracklink: tracker %r (in its own process) failed: %s: %s; its events are kept in the run "
                     "journal %s", ns.tracker, type(exc).__name__, exc, ns.journal)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
