"""Trackers in processes of their own (``TRACKLINK_DELIVERY=process``, tracklink.follow and
tracklink.followers), without a tracker SDK:
the test plugin's ``testrecorder`` is an entry-point plugin, so the follower process finds it as it finds any
installed tracker, and it records every contract call to a JSON-lines file the test reads back.

Covered: a followed run delivers what a live run delivers (from another process), a follower too slow for
``TRACKLINK_DRAIN_TIMEOUT`` (counted at the end of training, stopped at exit, the rest sent by ``tracklink
sync``), a training process killed with SIGKILL (its follower delivers what was committed and closes the run as
killed), a tracker whose setup fails in its process (training goes on; the events stay in the journal), a
tracker that uploads checkpoints (stays in the training process), and the bad settings tried:
``TRACKLINK_DELIVERY=processes`` / ``=1`` (not a mode), ``=process`` with ``TRACKLINK_OFFLINE=1`` and with
``TRACKLINK_JOURNAL=0`` (each refused before any step, naming the value and what is accepted).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_journal import SECRET, comparable, disk_full_after, log_run, masked, only_journal, records

import tracklink
from tracklink import cli, followers
from tracklink.journal import JournalSettings
from tracklink.run import RUN_FILE


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "recorder.jsonl"
    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_OUT", str(out))
    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_CHECKPOINTS", "0")  # uploads no checkpoint: may leave the process
    monkeypatch.setenv("MY_SERVICE_API_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    return out


def test_a_followed_run_delivers_what_a_live_run_delivers_from_another_process(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_run(tmp_path / "live")
    live = records(recorder)
    assert live[0]["thread"] == "tracklink-testrecorder"
    recorder.unlink()

    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    with tracklink.init(report_to=["testrecorder"], dir=tmp_path / "probe") as run:
        assert run.trackers == {} and run.hub.followed == {"testrecorder": "main"}, "not built in this process"
    recorder.unlink()
    log_run(tmp_path / "process")
    followed = records(recorder)
    assert followed[0]["thread"] == "MainThread", "set up in the follower process, not on a worker thread here"
    assert comparable(followed) == masked(comparable(live))
    assert followers._followers == [], "train() waited for its follower"
    journal = only_journal(tmp_path / "process")
    try:
        (cursor,) = journal.cursors()
        assert (cursor.pending, cursor.closed, cursor.live) == (0, True, True)
        assert cursor.identity == {"run_id": "testrecorder-run"}
    finally:
        journal.close()


SLOW_RUN = textwrap.dedent('''
    import sys, tracklink
    with tracklink.init(report_to=["testrecorder"], dir=sys.argv[1]) as run:
        for step in range(600):
            run.log({"loss": float(step)}, step=step)
    print("train() returned", flush=True)
''')


def test_a_follower_too_slow_for_the_drain_timeout_is_counted_stopped_at_exit_and_synced_later(
        recorder: Path, tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    env = {**os.environ, "TRACKLINK_DELIVERY": "process", "TRACKLINK_DRAIN_TIMEOUT": "0.5",
           "TRACKLINK_TESTPLUGIN_DELAY": "0.02", "TRACKLINK_LOG_LEVEL": "warning"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train() returned" in done.stdout
    # at the end of training: counted, and the follower goes on
    assert "tracker 'testrecorder', in its own process, has" in done.stderr
    assert "left to deliver after TRACKLINK_DRAIN_TIMEOUT=0.5s" in done.stderr
    # at exit: the same timeout, then stopped after its batch; what is left is counted and kept
    stopped = next(line for line in done.stderr.splitlines() if "was still delivering" in line)
    left = int(stopped.split("stopped: ")[1].split(" event(s)")[0])
    assert 0 < left < 602 and f"tracklink sync {tmp_path / 'run'}" in stopped
    before = records(recorder)
    assert (before[-1]["call"], before[-1]["status"], before[-1]["exit_code"]) == ("finish", "killed", 130), \
        "the stopped follower closed its run as killed"
    assert len([r for r in before if r["call"] == "log_metrics"]) == 600 - left + 1  # and the end event is left

    env["TRACKLINK_TESTPLUGIN_DELAY"] = "0"
    synced = subprocess.run([sys.executable, "-m", "tracklink", "sync", "--quiet", str(tmp_path / "run")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert synced.returncode == 0, synced.stderr
    steps = [r["step"] for r in records(recorder) if r["call"] == "log_metrics"]
    assert sorted(set(steps)) == list(range(600)), "every point arrived"
    assert len(steps) - len(set(steps)) <= 1, "at most the first pending step is sent again"
    assert records(recorder)[-1]["status"] == "success"


KILLED_RUN = textwrap.dedent('''
    import os, signal, sys, time, tracklink
    run = tracklink.init(report_to=["testrecorder"], dir=sys.argv[1])
    for step in range(20):
        run.log({"loss": float(step)}, step=step)
    run.hub.journal.commit()
    os.kill(os.getpid(), signal.SIGKILL)
''')


def test_a_killed_training_process_leaves_its_follower_to_deliver_the_journal_and_close_the_run_as_killed(
        recorder: Path, tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    env = {**os.environ, "TRACKLINK_DELIVERY": "process"}
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env, timeout=120)
    assert killed.returncode == -9
    deadline = time.monotonic() + 60
    while not any(r["call"] == "finish" for r in records(recorder)) and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = records(recorder)
    assert [r["step"] for r in rows if r["call"] == "log_metrics"] == list(range(20))
    assert rows[-1]["status"] == "killed"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        journal = only_journal(tmp_path / "run")
        try:
            (cursor,) = journal.cursors()
        finally:
            journal.close()
        if cursor.closed:
            break
        time.sleep(0.1)
    assert (cursor.pending, cursor.closed) == (0, True), "nothing is left for tracklink sync"


def test_a_tracker_that_fails_in_its_process_leaves_training_alone_and_its_events_in_the_journal(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_FAIL_SETUP", "1")
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        log_run(tmp_path / "run", steps=12)
    warning = next(r.getMessage() for r in caplog.records if "in its own process, stopped" in r.getMessage())
    assert "exit code 1" in warning and "with 15 event(s) not delivered" in warning
    assert f"tracklink sync {tmp_path / 'run'}" in warning
    assert records(recorder) == []

    monkeypatch.delenv("TRACKLINK_TESTPLUGIN_FAIL_SETUP")
    assert cli.main(["sync", "--quiet", str(tmp_path / "run")]) == 0
    assert [r["step"] for r in records(recorder) if r["call"] == "log_metrics"] == list(range(12))


def test_a_journal_that_fills_the_disk_stops_the_followers_at_once_and_says_what_they_missed(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # about 800 of the 3,000 events fit, committed every 50 ms: several commits reach the file, whatever the speed
    disk_full_after(monkeypatch, pages=64)
    monkeypatch.setenv("TRACKLINK_JOURNAL_COMMIT_MS", "50")
    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tracklink"), \
            tracklink.init(report_to=["testrecorder"], dir=tmp_path / "run") as run:
        for step in range(3000):
            run.log({"loss": 1.0 / (step + 1), "note": "x" * 200}, step=step)
            time.sleep(0.001)  # several commits before the disk is full
    assert time.monotonic() - start < 60, "not the 600 s drain timeout: the followers were stopped"
    error = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "could not be written" in error and "full" in error and "(testrecorder)" in error
    assert "TRACKLINK_DELIVERY=thread" in error
    rows = records(recorder)
    steps = [r["step"] for r in rows if r["call"] == "log_metrics"]
    assert steps == list(range(len(steps))) and 0 < len(steps) < 3000, "what was committed, in order"
    assert rows[-1]["status"] == "killed", "the follower closed its run as killed"
    assert followers._followers == []


@pytest.mark.parametrize("resume_with", ["thread", "process", "process, the journal deleted"])
def test_a_followed_run_keeps_its_identity_in_the_run_file_for_a_resume_with_either_delivery(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resume_with: str) -> None:
    """The training process asks the journal for the identities its followers stored: ``run.identities`` and the
    run file hold them as with threads, so a resume re-attaches whichever delivery it uses, and without the
    earlier session's journal."""
    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    run_dir = tmp_path / "run"
    with tracklink.init(report_to=["testrecorder"], dir=run_dir) as run:
        for step in range(5):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
    identity = {"run_id": "testrecorder-run"}
    assert run.identities == {"testrecorder": identity}
    saved = json.loads((run_dir / RUN_FILE).read_text())
    assert saved["trackers"] == {"TestRecorderTracker": {"args": {}, "attributes": {"run": identity}}}
    first = records(recorder)
    assert first[0]["call"] == "setup" and first[0]["resume"] is None

    if resume_with == "thread":
        monkeypatch.delenv("TRACKLINK_DELIVERY")
    elif resume_with == "process, the journal deleted":
        shutil.rmtree(run_dir / "tracklink-journal")
    recorder.unlink()
    with tracklink.init(report_to=["testrecorder"], dir=run_dir, resume=True) as run:
        run.log({"loss": 0.1}, step=5)
    again = records(recorder)
    assert again[0]["call"] == "setup" and again[0]["resume"] == identity, "re-attached to the first run"
    assert [r["step"] for r in again if r["call"] == "log_metrics"] == [5]
    assert json.loads((run_dir / RUN_FILE).read_text())["trackers"]["TestRecorderTracker"]["attributes"]["run"] \
        == identity


def test_the_run_file_gets_a_followers_identity_while_the_run_goes_on(recorder: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A training killed mid-run can still be resumed with threads: the identity reaches the run file once the
    follower stored it, not only at the end."""
    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    run_file = tmp_path / "run" / RUN_FILE
    deadline = time.monotonic() + 60
    with tracklink.init(report_to=["testrecorder"], dir=tmp_path / "run") as run:
        step = 0
        while not json.loads(run_file.read_text())["trackers"]["TestRecorderTracker"]["attributes"]["run"]:
            assert time.monotonic() < deadline, "the identity never reached the run file during the run"
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            step += 1
            time.sleep(0.05)
        assert run.identities == {"testrecorder": {"run_id": "testrecorder-run"}}


def test_an_identity_once_known_stays_in_the_run_file_when_the_journal_fails_later(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from tracklink.journal import Journal

    full = threading.Event()
    write = Journal._write

    def failing_write(self: Journal, *args: Any, **kwargs: Any) -> None:
        if full.is_set():  # what SQLite raises on a full disk, in the writer thread's commit
            self._db.execute("BEGIN")
            self._db.execute("ROLLBACK")
            self._fail(sqlite3.OperationalError("database or disk is full"))
            return
        write(self, *args, **kwargs)

    monkeypatch.setattr(Journal, "_write", failing_write)
    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    run_file = tmp_path / "run" / RUN_FILE
    deadline = time.monotonic() + 60

    def saved_identity() -> Any:
        return json.loads(run_file.read_text())["trackers"]["TestRecorderTracker"]["attributes"]["run"]

    with tracklink.init(report_to=["testrecorder"], dir=tmp_path / "run") as run:
        step = 0
        while not saved_identity():
            assert time.monotonic() < deadline
            run.log({"loss": 1.0}, step=step)
            step += 1
            time.sleep(0.05)
        full.set()
        while not run.hub.journal.failed:
            assert time.monotonic() < deadline
            run.log({"loss": 1.0}, step=step)
            step += 1
            time.sleep(0.05)
    assert saved_identity() == {"run_id": "testrecorder-run"}, "finish() did not write it back as null"
    assert run.identities == {"testrecorder": {"run_id": "testrecorder-run"}}


def test_a_follower_without_run_identity_is_not_waited_for() -> None:
    hub = tracklink.CallbackHandler(require_flow=False)
    hub.add_follower("codecarbon", "main", "CodeCarbonCallback", identifies=False)
    hub.add_follower("mlflow", "main", "MLflowCallback")
    states = hub.tracker_states()
    assert states == {"CodeCarbonCallback": {"args": {}, "attributes": {"run": None}},
                      "MLflowCallback": {"args": {}, "attributes": {"run": None}}}
    assert not hub.followers_identified()
    states["MLflowCallback"]["attributes"]["run"] = {"run_id": "r1"}
    hub.restore_tracker_states(states)  # MLflow's identity becomes known
    assert hub.followers_identified(), "codecarbon's runs have no identity to wait for"


def test_an_identity_is_not_added_to_a_checkpoint_that_rotation_deleted(tmp_path: Path) -> None:
    from tracklink import Tracker

    class Identified(Tracker):
        name = "identified"

    tracker = Identified()
    tracker._tl.identity = {"run_id": "r1"}
    gone = tmp_path / "checkpoint-10"
    tracker._record_identity(str(gone), tracklink.TrainerState())
    assert not gone.exists(), "not brought back as a folder with trainer_state.json only"


def test_the_directory_lock_runs_unlocked_where_the_file_system_has_no_flock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    from tracklink.atomic import directory_lock

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")  # NFS: an exclusive lock on a read-only descriptor

    monkeypatch.setattr(fcntl, "flock", no_flock)
    ran = []
    with directory_lock(tmp_path):
        ran.append(True)
    assert ran == [True]


LOCKED_WRITER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from tracklink.atomic import atomic_write_text, directory_lock
    folder = Path(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        with directory_lock(folder):
            data = json.loads((folder / "trainer_state.json").read_text())
            data["count"] += 1
            atomic_write_text(folder / "trainer_state.json", json.dumps(data))
''')


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX: Windows runs the block unlocked")
def test_processes_adding_to_one_checkpoint_file_under_the_directory_lock_lose_no_change(tmp_path: Path) -> None:
    """Followers (and worker threads) add their identities to a checkpoint's trainer_state.json by
    read-modify-write; three processes doing it 200 times each keep every change, and leave no lock file."""
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    (folder / "trainer_state.json").write_text('{"count": 0}')
    script = tmp_path / "writer.py"
    script.write_text(LOCKED_WRITER)
    writers = [subprocess.Popen([sys.executable, str(script), str(folder), "200"]) for _ in range(3)]
    assert [w.wait(120) for w in writers] == [0, 0, 0]
    assert json.loads((folder / "trainer_state.json").read_text())["count"] == 600
    assert [p.name for p in folder.iterdir()] == ["trainer_state.json"]


def test_a_tracker_that_uploads_checkpoints_stays_in_the_training_process(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TRACKLINK_DELIVERY", "process")
    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_CHECKPOINTS", "1")
    with caplog.at_level(logging.INFO, logger="tracklink"):
        log_run(tmp_path / "run", steps=3)
    assert "tracker 'testrecorder' stays in the training process (it uploads checkpoints" in caplog.text
    assert records(recorder)[0]["thread"] == "tracklink-testrecorder"


@pytest.mark.parametrize(("env", "expected"), [
    ({"TRACKLINK_DELIVERY": "processes"}, "TRACKLINK_DELIVERY='processes' is not accepted; accepted values: thread, "
                                          "process"),
    ({"TRACKLINK_DELIVERY": "1"}, "TRACKLINK_DELIVERY='1' is not accepted"),
    ({"TRACKLINK_DELIVERY": "process", "TRACKLINK_OFFLINE": "1"}, "accepted: one of them"),
    ({"TRACKLINK_DELIVERY": "process", "TRACKLINK_JOURNAL": "0"}, "TRACKLINK_JOURNAL=0 switches the journal off"),
])
def test_bad_delivery_settings_are_refused_before_any_step(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
        JournalSettings.from_env(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"TRACKLINK_DELIVERY|TRACKLINK_JOURNAL"):
        tracklink.init(report_to=["testrecorder"], dir=tmp_path / "run")
    assert records(recorder) == [] and not (tmp_path / "run").exists()
    assert JournalSettings.from_env({"TRACKLINK_DELIVERY": "Thread"}).processes is False
    assert JournalSettings.from_env({"TRACKLINK_DELIVERY": " process "}).processes is True


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_follows_the_world_main_journal_only(recorder: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent('''
        import sys, torch.distributed as dist, tracklink
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        with tracklink.init(report_to=["testrecorder"], dir=sys.argv[1]) as run:
            assert run.trackers == {} and bool(run.hub.followed) == (rank == 0), (rank, run.hub.followed)
            for step in range(5):
                run.log({"loss": float(step), "rank": rank}, step=step)
        dist.destroy_process_group()
    '''))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_DELIVERY": "process"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path / "run")], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = records(recorder)
    assert [r["call"] for r in rows].count("setup") == 1 and rows[0]["thread"] == "MainThread"
    assert [(r["step"], r["metrics"]["train/rank"]) for r in rows if r["call"] == "log_metrics"] == [
        (s, 0) for s in range(5)]
    assert rows[-1]["status"] == "success"
