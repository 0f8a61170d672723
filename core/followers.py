"""The training process's side of ``TRACKLINK_DELIVERY=process``: start one follower process per tracker
(tracklink.follow) when a journal is created, wait for them at the end of each training session, and reap them at
interpreter exit.

The training process waits for its followers at the end of each session and at interpreter exit, within
``TRACKLINK_DRAIN_TIMEOUT``; a follower still delivering at exit is stopped (it finishes the batch it is
delivering, closes its tracker's run as ``killed``), and what it did not deliver stays in the journal for
``tracklink sync``, counted in a warning. Followers run in a session of their own, so a Ctrl-C meant for training
does not reach them mid-batch; they notice the end of the session from the journal.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .delivery import DeliverySettings
from .journal import JournalError, JournalFile
from .shutdown import on_exit
from .tracker import Tracker

logger = logging.getLogger("tracklink")

__all__ = ["Follower", "followers_of", "reap_all", "start_followers", "stays_in_process", "stop_followers",
           "wait_followers"]

#: Seconds a stopped follower gets to close its tracker's run before it is killed.
STOP_GRACE_S = 10.0
#: The distributed launcher's variables: a follower replays one process's journal on its own, like ``sync``.
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                  "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


def stays_in_process(tracker: Any, inline: bool) -> str | None:
    """Why a tracker cannot be delivered from a process of its own (``TRACKLINK_DELIVERY=process``), or None."""
    if not isinstance(tracker, Tracker):
        return "it is not a tracklink.Tracker, so it cannot be replayed from the run journal"
    if inline:
        return "it runs on the training thread"
    try:
        if tracker.uploads_checkpoints:
            return "it uploads checkpoints, which checkpoint rotation must wait for"
    except Exception:
        return "whether it uploads checkpoints cannot be told"
    return None


class Follower:
    """One tracker's process, following one journal."""

    def __init__(self, tracker: str, journal: Path, process: subprocess.Popen[bytes]) -> None:
        self.tracker = tracker
        self.journal = journal
        self.process = process

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def pending(self) -> int:
        """Events of its journal its tracker has not accepted (0 when the journal cannot be read)."""
        try:
            file = JournalFile(self.journal)
        except JournalError:
            return 0
        try:
            cursor = file.cursor(self.tracker)
            return cursor.pending if cursor is not None else 0
        finally:
            file.close()


_followers: list[Follower] = []


def start_followers(journal: Path, trackers: Sequence[str]) -> list[Follower]:
    """Start one follower per tracker for ``journal`` (just created, its cursors in place)."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}
    started = []
    for name in trackers:
        command = [sys.executable, "-m", "tracklink.follow", str(journal), name]
        try:
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            logger.warning("tracklink: tracker %r cannot be started in a process of its own (%s); its events are "
                           "kept in the run journal %s. Send them with: tracklink sync %s", name, exc, journal,
                           journal.parent.parent)
            continue
        started.append(Follower(name, journal, process))
    _followers.extend(started)
    if started:
        on_exit("followers", reap_all)
    return started


def followers_of(journal: Path) -> list[Follower]:
    """The followers of ``journal`` not reaped yet."""
    return [f for f in _followers if f.journal == journal]


def wait_followers(journal: Path, timeout: float) -> list[Follower]:
    """Wait (at most ``timeout`` seconds in all) for the followers of ``journal``, which was closed; the ones
    that have not finished are returned, still running. A follower that failed is reported here."""
    deadline = time.monotonic() + timeout
    mine = followers_of(journal)
    for follower in mine:
        try:
            follower.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            continue
    left = [f for f in mine if f.running]
    for follower in mine:
        if follower.running:
            continue
        _followers.remove(follower)
        code = follower.process.returncode
        pending = follower.pending()
        if code != 0 or pending:
            logger.warning("tracklink: tracker %r, in its own process, stopped (exit code %s) with %d event(s) not "
                           "delivered; they are kept in the run journal. Send them with: tracklink sync %s",
                           follower.tracker, code, pending, journal.parent.parent)
    return left


def reap_all(timeout: float | None = None) -> None:
    """At interpreter exit (after the journals were closed): wait for every follower within
    ``TRACKLINK_DRAIN_TIMEOUT``, then stop the ones still delivering; what they did not deliver is counted and
    stays in the journal."""
    if timeout is None:
        try:
            timeout = DeliverySettings.from_env().drain_timeout
        except ValueError:  # an invalid setting was reported when training started
            timeout = DeliverySettings.drain_timeout
    deadline = time.monotonic() + timeout  # one timeout for all of them, as for the trackers' queues
    for journal in list(dict.fromkeys(f.journal for f in _followers)):
        left = wait_followers(journal, max(0.0, deadline - time.monotonic()))
        stop_followers(left, f"was still delivering after TRACKLINK_DRAIN_TIMEOUT={timeout:g}s")


def stop_followers(followers: Sequence[Follower], why: str) -> None:
    """Stop ``followers`` (SIGTERM: each finishes the batch it delivers and closes its run as ``killed``; killed
    after :data:`STOP_GRACE_S`) and count what each did not deliver."""
    for follower in followers:
        follower.process.send_signal(signal.SIGTERM)
    for follower in followers:
        try:
            follower.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            follower.process.kill()
            follower.process.wait()
        if follower in _followers:
            _followers.remove(follower)
        pending = follower.pending()
        if pending:
            logger.warning("tracklink: tracker %r, in its own process, %s and was stopped: %d event(s) not delivered "
                           "are kept in the run journal. Send them with: tracklink sync %s", follower.tracker, why,
                           pending, follower.journal.parent.parent)
