"""The run journal (tracklink.journal) and ``tracklink sync`` without a tracker SDK: the test plugin's
``testrecorder`` tracker (an entry-point plugin, as a third-party tracker would be) records every contract call
to a JSON-lines file, so what a live run, an offline run and a sync delivered can be compared exactly.

Covered: what the journal holds (events, cursors, identities; no secret; an identity committed before the
backend gets its first point), the cursor of a tracker that fails,
offline recording and its sync (equal to a live run's), ``--to``, ``--status``, an interrupted sync rerun, a
second sync that sends nothing, corrupt / truncated / foreign-format journals (a clear error, nothing
replayed), a full disk (a warning, delivery from memory), ``TRACKLINK_JOURNAL=0``, the commit interval
setting, and one journal per process under the rank policies.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tracklink
from tracker_doubles import FailingTracker, RecordingTracker, read_records
from tracklink import cli
from tracklink import sync as sync_module
from tracklink.delivery import deliver_events
from tracklink.handler import CallbackHandler
from tracklink.journal import JOURNAL_DIR, Journal, JournalFile, JournalSettings, journal_files
from tracklink.process import ProcessInfo
from tracklink.run import RunArgs
from tracklink.state import TrainerControl, TrainerState

SECRET = "sk-journal-SECRET-7f3a9c"


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "recorder.jsonl"
    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_OUT", str(out))
    monkeypatch.setenv("MY_SERVICE_API_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    return out


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("source") == "tracker"]


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a backend keeps of the calls (no thread names)."""
    return [{k: v for k, v in r.items() if k not in ("thread",)} for r in rows]


def masked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A live run's calls with the secret masked in texts, as the journal keeps them (a live tracker gets logged
    text as it is; the journal never holds a secret)."""
    return [r if r["call"] != "log_text" else {**r, "texts": {k: v.replace(SECRET, "<redacted>")
                                                               for k, v in r["texts"].items()}} for r in rows]


def log_run(directory: Path, steps: int = 30, **init: Any) -> None:
    config = {"lr": 0.01, "api_key": SECRET, "layers": 3}
    with tracklink.init(project="journal", name="r", config=config, report_to=["testrecorder"], dir=directory,
                        **init) as run:
        for step in range(steps):
            run.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
            if step % 10 == 9:
                run.log({"note": f"token {SECRET} at step {step}"}, step=step)


def only_journal(directory: Path) -> JournalFile:
    files = journal_files(directory)
    assert len(files) == 1, files
    return JournalFile(files[0], check=True)


def test_a_live_run_journals_every_event_and_its_cursor_reaches_the_end(recorder: Path, tmp_path: Path) -> None:
    log_run(tmp_path / "run")
    journal = only_journal(tmp_path / "run")
    try:
        events = list(journal.events())
        kinds = [e.kind for e in events]
        assert kinds[0] == "begin" and kinds[-1] == "end" and kinds.count("log") == 33
        assert [e.id for e in events] == list(range(1, len(events) + 1))  # event ids: the journal's order
        (cursor,) = journal.cursors()
        assert (cursor.tracker, cursor.position, cursor.pending, cursor.closed) == ("testrecorder", len(events), 0, True)
        assert cursor.identity == {"run_id": "testrecorder-run"}
        assert journal.meta["format"] == 1 and journal.meta["closed"] is True
    finally:
        journal.close()
    # secrets never reach the journal: neither the config's api_key nor an environment secret inside a text
    for path in (tmp_path / "run" / JOURNAL_DIR).iterdir():
        assert SECRET.encode() not in path.read_bytes(), path


def test_offline_records_only_and_sync_equals_a_live_run(recorder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    log_run(tmp_path / "live")
    live = comparable(records(recorder))
    recorder.unlink()

    monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    log_run(tmp_path / "offline")
    assert records(recorder) == [], "offline: the tracker is not contacted during training"
    monkeypatch.delenv("TRACKLINK_OFFLINE")

    assert cli.main(["sync", "--status", str(tmp_path / "offline")]) == 0
    assert "testrecorder" in capsys.readouterr().out
    assert cli.main(["sync", "--quiet", str(tmp_path / "offline")]) == 0
    assert "event(s) sent to testrecorder" in capsys.readouterr().out
    assert comparable(records(recorder)) == masked(live)
    # a second sync has nothing left to send
    assert cli.main(["sync", "--quiet", str(tmp_path / "offline")]) == 0
    assert "nothing pending" in capsys.readouterr().out
    assert comparable(records(recorder)) == masked(live)


@pytest.mark.sdk("tensorboard")
def test_sync_to_replays_the_whole_run_into_another_tracker(recorder: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    log_run(tmp_path / "live")
    live = comparable(records(recorder))
    recorder.unlink()
    # the same run, recorded live into TensorBoard only, then replayed into testrecorder
    with tracklink.init(project="journal", name="r", config={"lr": 0.01, "api_key": SECRET, "layers": 3},
                        report_to=["tensorboard"], dir=tmp_path / "tb") as run:
        for step in range(30):
            run.log({"loss": 1.0 / (step + 1), "acc": step / 30}, step=step)
            if step % 10 == 9:
                run.log({"note": f"token {SECRET} at step {step}"}, step=step)
    assert records(recorder) == []
    sent = sync_module.sync(tmp_path / "tb", ["testrecorder"], progress=False)
    assert sent == {"testrecorder": 35}
    assert comparable(records(recorder)) == masked(live)


def test_an_interrupted_sync_goes_on_where_it_stopped(recorder: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    log_run(tmp_path / "run", steps=60)
    monkeypatch.delenv("TRACKLINK_OFFLINE")
    from tracklink_testplugin.recorder import TestRecorderTracker

    calls = {"n": 0}
    original = TestRecorderTracker.log_metrics

    def flaky(self: Any, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        calls["n"] += 1
        if calls["n"] == 25:
            raise ConnectionError("the backend went away")
        original(self, metrics, step, epoch)

    monkeypatch.setattr(sync_module, "BATCH", 10)
    monkeypatch.setattr(TestRecorderTracker, "log_metrics", flaky)
    with pytest.raises(ConnectionError):
        sync_module.sync(tmp_path / "run", progress=False)
    journal = only_journal(tmp_path / "run")
    (cursor,) = journal.cursors()
    journal.close()
    assert cursor.position == 21 and cursor.identity  # the begin event, then two accepted batches of 10 == {"run_id": "testrecorder-run"} and not cursor.closed
    monkeypatch.setattr(TestRecorderTracker, "log_metrics", original)
    sync_module.sync(tmp_path / "run", progress=False)
    rows = records(recorder)
    setups = [r for r in rows if r["call"] == "setup"]
    assert len(setups) == 2 and setups[1]["start_step"] > 0, "the rerun re-attached, it did not start a new run"
    steps = [r["step"] for r in rows if r["call"] == "log_metrics"]
    assert sorted(set(steps)) == list(range(60)), "every step arrived"
    resent = len(steps) - 60
    assert 0 <= resent <= 10, "at most one batch is sent twice"
    assert [r["call"] for r in rows].count("finish") == 1


def test_a_failing_tracker_keeps_its_events_in_the_journal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    failing = FailingTracker()
    hub = CallbackHandler(require_flow=False)
    hub.add_tracker(failing, "failing")
    args = RunArgs(output_dir=str(tmp_path / "run"), run_name="r", project=None, config={}, init_kwargs={},
                   report_to=["failing"])
    state, control = TrainerState(), TrainerControl()
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        hub.call_event("on_train_begin", args, state, control)
        for step in range(5):
            state.global_step = step
            hub.call_event("on_log", args, state, control, logs={"loss": 1.0})
        hub.on_train_end(args, state, control)
    line = next(r.getMessage() for r in caplog.records if "kept in the run journal" in r.getMessage())
    assert "'failing'" in line and f"tracklink sync {tmp_path / 'run'}" in line
    journal = only_journal(tmp_path / "run")
    (cursor,) = journal.cursors()
    journal.close()
    assert cursor.pending > 0 and cursor.position < cursor.last


@pytest.mark.parametrize("damage", ["garbage", "truncated", "format", "not-a-journal"])
def test_a_damaged_or_foreign_journal_is_a_clear_error(recorder: Path, tmp_path: Path, damage: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    log_run(tmp_path / "run", steps=2000, )
    (path,) = journal_files(tmp_path / "run")
    if damage == "garbage":
        path.write_bytes(b"this is not a database at all" * 100)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "format":
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
        db.commit()
        db.close()
    else:
        path.unlink()
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE other (x)")
        db.commit()
        db.close()
    before = len(records(recorder))
    assert cli.main(["sync", "--quiet", "--to", "testrecorder", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    expected = {"garbage": "corrupt", "truncated": "corrupt", "format": "format 99",
                "not-a-journal": "not a tracklink journal"}[damage]
    assert expected in error and str(path) in error
    assert len(records(recorder)) == before, "nothing was replayed"


def disk_full_after(monkeypatch: pytest.MonkeyPatch, pages: int) -> None:
    """New journals fill up ("database or disk is full", SQLite's own error) after ``pages`` more pages."""
    created = Journal.create

    def tiny(*args: Any, **kwargs: Any) -> Journal | None:
        journal = created(*args, **kwargs)
        assert journal is not None
        count = journal._db.execute("PRAGMA page_count").fetchone()[0]
        journal._db.execute(f"PRAGMA max_page_count = {count + pages}")
        return journal

    monkeypatch.setattr(Journal, "create", staticmethod(tiny))


def test_a_full_disk_falls_back_to_delivery_from_memory(recorder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    disk_full_after(monkeypatch, pages=2)
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        log_run(tmp_path / "run", steps=3000)
    assert any("cannot be written any more" in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
    steps = [r["step"] for r in records(recorder) if r["call"] == "log_metrics"]
    assert sorted(set(steps)) == list(range(3000)), "every event still reached the tracker"
    assert [r["call"] for r in records(recorder)][-1] == "finish"


def test_journal_off_and_settings(recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_JOURNAL", "0")
    log_run(tmp_path / "run", steps=3)
    assert not (tmp_path / "run" / JOURNAL_DIR).exists()
    assert len([r for r in records(recorder) if r["call"] == "log_metrics"]) == 3
    assert JournalSettings.from_env({"TRACKLINK_JOURNAL_COMMIT_MS": "50"}).interval == 0.05
    for env, expected in (({"TRACKLINK_JOURNAL_COMMIT_MS": "soon"}, "TRACKLINK_JOURNAL_COMMIT_MS='soon'"),
                          ({"TRACKLINK_OFFLINE": "maybe"}, "TRACKLINK_OFFLINE='maybe'"),
                          ({"TRACKLINK_OFFLINE": "1", "TRACKLINK_JOURNAL": "0"}, "TRACKLINK_JOURNAL=0")):
        with pytest.raises(ValueError, match=expected):
            JournalSettings.from_env(env)


def test_offline_journals_follow_the_rank_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    # the second process of a two-node job: local main of its node, not the world main
    hub = CallbackHandler(process=ProcessInfo(rank=1, local_rank=0, world_size=2), require_flow=False)
    assert hub.add_offline("codecarbon", "local_main") and not hub.add_offline("mlflow", "main")
    args = RunArgs(output_dir=str(tmp_path / "run"), run_name=None, project=None, config={}, init_kwargs={},
                   report_to=[])
    state, control = TrainerState(), TrainerControl()
    hub.call_event("on_train_begin", args, state, control)
    hub.call_event("on_log", args, state, control, logs={"loss": 1.0})
    hub.on_train_end(args, state, control)
    assert hub.journal is not None
    hub.journal.close()
    (path,) = journal_files(tmp_path / "run")
    assert path.stem.endswith("-rank1")
    journal = JournalFile(path)
    assert [(c.tracker, c.live, c.pending) for c in journal.cursors()] == [("codecarbon", False, 3)]
    journal.close()
    # a process whose trackers' policies all exclude it keeps no journal
    other = CallbackHandler(process=ProcessInfo(rank=1, local_rank=1, world_size=2), require_flow=False)
    assert not other.add_offline("codecarbon", "local_main")
    other.call_event("on_train_begin", RunArgs(output_dir=str(tmp_path / "other"), run_name=None, project=None,
                                               config={}, init_kwargs={}, report_to=[]), state, control)
    assert other.journal is None and not (tmp_path / "other").exists()


def test_events_after_the_end_of_training_go_to_a_continuation_journal(tmp_path: Path) -> None:
    """The trainer's evaluate() after train(): the session's journal was closed at the end; the evaluation's
    events go to a new file that starts with the session's begin event and the run identity (nothing pending)."""
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    hub = CallbackHandler(require_flow=False)
    hub.add_tracker(recorder, "recording")
    args = RunArgs(output_dir=str(tmp_path / "run"), run_name="r", project=None, config={"lr": 1}, init_kwargs={},
                   report_to=[])
    state, control = TrainerState(), TrainerControl()
    hub.call_event("on_train_begin", args, state, control)
    hub.call_event("on_log", args, state, control, logs={"loss": 1.0})
    hub.on_train_end(args, state, control)
    state.global_step = 7
    hub.call_event("on_log", args, state, control, logs={"eval_loss": 0.5})
    assert hub.wait_for_trackers(30)
    hub.journal.commit()
    first, second = journal_files(tmp_path / "run")
    files = [JournalFile(first), JournalFile(second)]
    try:
        assert [e.kind for e in files[0].events()] == ["begin", "log", "end"]
        events = list(files[1].events())
        assert [e.kind for e in events] == ["begin", "log"] and events[1].data == {"logs": {"eval_loss": 0.5}}
        assert events[0].data == next(iter(files[0].events())).data
        for journal in files:
            (cursor,) = journal.cursors()
            assert cursor.pending == 0 and cursor.identity == {"run_id": recorder.run_id}
    finally:
        for journal in files:
            journal.close()
    assert [r["metrics"] for r in read_records(recorder.path) if r["kind"] == "metrics"] == [
        {"train/loss": 1.0}, {"eval/loss": 0.5}]


class SlowToSetUp(RecordingTracker):
    """Sets its run up slowly (the journal commits the first events meanwhile), then looks at what the journal
    file holds, from a connection of its own, when its backend accepts its first point: what a SIGKILL at that
    moment would leave for ``tracklink sync``."""

    name = "slowsetup"

    def __init__(self, path: Path, run_dir: Path) -> None:
        super().__init__(path)
        self.run_dir = run_dir
        self.seen: list[Any] = []

    def setup(self, run: tracklink.RunInfo) -> None:
        time.sleep(0.6)
        super().setup(run)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        if not self.seen:
            (path,) = journal_files(self.run_dir)
            journal = JournalFile(path)
            try:
                self.seen.append({c.tracker: c.identity for c in journal.cursors()})
            finally:
                journal.close()
        super().log_metrics(metrics, step, epoch)


def test_a_run_identity_is_durable_before_its_backend_gets_a_point(tmp_path: Path) -> None:
    """A process killed right after a tracker's backend took its first points must leave that run's identity in
    the journal: without it ``tracklink sync`` starts a second run and the backend holds those points twice."""
    slow = SlowToSetUp(tmp_path / "slow.jsonl", tmp_path / "run")
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[slow]) as run:
        for step in range(20):
            run.log({"loss": float(step)}, step=step)
    assert slow.seen == [{"slowsetup": {"run_id": slow.run_id}}]


class SecondSetupFails(RecordingTracker):
    name = "secondfails"

    def setup(self, run: tracklink.RunInfo) -> None:
        if self.run_id is not None:
            raise RuntimeError("the second run cannot be set up (planted)")
        super().setup(run)


def test_a_new_session_never_stores_the_last_runs_identity_in_its_journal(tmp_path: Path) -> None:
    """The same tracker in a second run whose setup fails: its new journal must not name the first run, or
    ``tracklink sync`` would put the second run's events into the first."""
    tracker = SecondSetupFails(tmp_path / "rec.jsonl")
    for name in ("first", "second"):
        with tracklink.init(report_to="none", dir=tmp_path / name, callbacks=[tracker]) as run:
            run.log({"loss": 1.0}, step=1)
    identities = {}
    for name in ("first", "second"):
        journal = only_journal(tmp_path / name)
        (cursor,) = journal.cursors()
        journal.close()
        identities[name] = cursor.identity
    assert identities == {"first": {"run_id": tracker.run_id}, "second": None}


class Stamping(RecordingTracker):
    """A tracker with a batch path of its own that keeps, per point, the time ``logged_at`` gives it."""

    name = "stamping"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.stamps: list[tuple[int, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self.stamps.append((step, self.logged_at()))

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics, step, None)  # as the base class does

    def log_metrics_batch(self, points: list[tuple[dict[str, float], int, float | None]]) -> None:
        self.stamps += [(step, self.logged_at(index)) for index, (_, step, _) in enumerate(points)]


def test_points_carry_the_time_they_were_logged_live_and_in_a_replay(tmp_path: Path) -> None:
    """A backend that keeps a point once per (key, step, time, value) stores a point sent again after a crash
    once only if the replay stamps it as the live delivery did: both use the time of the log call."""
    live = Stamping(tmp_path / "live.jsonl")
    logged: list[tuple[float, float]] = []
    with tracklink.init(report_to="none", dir=tmp_path / "run", callbacks=[live]) as run:
        for step in range(40):
            before = time.time()
            run.log({"loss": float(step)}, step=step)
            logged.append((before, time.time()))
            time.sleep(0.002 if step % 10 else 0.3)  # single events and batches (the worker lingers for more)
        before = time.time()
        run.log({"train_runtime": 1.5, "train_loss": 0.25}, step=40)  # the summary: log_summary -> log_metrics
        logged.append((before, time.time()))
    assert [s for s, _ in live.stamps] == list(range(41))
    assert all(lo <= when <= hi for (_, when), (lo, hi) in zip(live.stamps, logged, strict=True)), \
        "stamped with the time of the log call, not of the delivery"
    journal = only_journal(tmp_path / "run")
    events = [e for e in journal.events() if e.kind == "log"]
    assert [e.when for e in events] == [when for _, when in live.stamps], "the journal keeps the same times"
    replayed = Stamping(tmp_path / "replayed.jsonl")
    begin = journal.first("begin")
    assert begin is not None
    args = RunArgs(output_dir=str(tmp_path / "run"), run_name=None, project=None, config={}, init_kwargs={},
                   report_to=[])
    deliver_events(replayed, [begin, *events], args, TrainerState(), TrainerControl())
    journal.close()
    assert replayed.stamps == live.stamps


class Flaky(RecordingTracker):
    """Its backend goes away while ``down`` is set: every call raises ConnectionError, as an SDK does."""

    name = "flaky"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = threading.Event()

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        if self.down.is_set():
            raise ConnectionError("connection refused (planted)")
        super().log_metrics(metrics, step, epoch)


def test_a_tracker_whose_backend_is_down_waits_in_the_journal_and_catches_up_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # a queue of 20 events that would stall training within a second if the outage's events waited in memory
    monkeypatch.setenv("TRACKLINK_QUEUE_SIZE", "20")
    monkeypatch.setenv("TRACKLINK_QUEUE_TIMEOUT", "5")
    flaky = Flaky(tmp_path / "flaky.jsonl")
    with caplog.at_level(logging.WARNING, logger="tracklink"), tracklink.init(
            report_to="none", dir=tmp_path / "run", callbacks=[flaky]) as run:
        for step in range(400):
            if step == 50:
                assert run.wait(30)
                flaky.down.set()
            if step == 300:
                flaky.down.clear()
            run.log({"loss": float(step)}, step=step)
            if 50 <= step < 300:
                time.sleep(0.005)  # the outage lasts about a second and a quarter: several retries
    assert "cannot reach its backend" in caplog.text and "caught up" in caplog.text
    assert run.failures() == {}, "an outage is not a tracker error"
    steps = [r["step"] for r in read_records(flaky.path) if r["kind"] == "metrics"]
    assert steps == list(range(400)), "every event, in order, once"
    assert [r["kind"] for r in read_records(flaky.path)][-1] == "finish"
    journal = only_journal(tmp_path / "run")
    (cursor,) = journal.cursors()
    journal.close()
    assert cursor.pending == 0 and cursor.closed


class SlowThenDown(RecordingTracker):
    """Sets its run up slowly (the events behind the begin event reach its worker together), then its backend
    never answers."""

    name = "slowthendown"

    def setup(self, run: tracklink.RunInfo) -> None:
        time.sleep(0.5)
        super().setup(run)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        raise ConnectionError("connection refused (planted)")


def test_a_backend_down_within_a_batch_neither_counts_the_batch_as_errors_nor_reopens_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The first event of a batch finds the backend down: the rest of the batch waits in the journal. Before,
    each of them counted as an error, the tracker was switched off and its run closed, and then the retry from
    the journal set a second run up (with Comet: a second experiment left running in the process)."""
    monkeypatch.setenv("TRACKLINK_RETRY_BUDGET", "1")
    down = SlowThenDown(tmp_path / "down.jsonl")
    with caplog.at_level(logging.WARNING, logger="tracklink"), tracklink.init(
            report_to="none", dir=tmp_path / "run", callbacks=[down]) as run:
        for step in range(10):
            run.log({"loss": float(step)}, step=step)
        time.sleep(2.0)  # the run goes on past the retry budget
    assert [r["kind"] for r in read_records(down.path)] == ["setup", "finish"], "one run, set up once, closed once"
    assert "cannot reach its backend" in caplog.text and "errors, the limit is" not in caplog.text
    journal = only_journal(tmp_path / "run")
    (cursor,) = journal.cursors()
    journal.close()
    assert cursor.pending == cursor.last - cursor.position >= 10, "every log waits in the journal"


def test_a_backend_down_past_the_retry_budget_leaves_its_events_in_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TRACKLINK_RETRY_BUDGET", "1")
    flaky = Flaky(tmp_path / "flaky.jsonl")
    with caplog.at_level(logging.WARNING, logger="tracklink"), tracklink.init(
            report_to="none", dir=tmp_path / "run", callbacks=[flaky]) as run:
        for step in range(100):
            if step == 10:
                assert run.wait(30)
                flaky.down.set()
            run.log({"loss": float(step)}, step=step)
            time.sleep(0.03)
    assert "did not answer for 1 s" in caplog.text
    line = next(r.getMessage() for r in caplog.records if "kept in the run journal. Send them" in r.getMessage())
    assert "'flaky'" in line and f"tracklink sync {tmp_path / 'run'}" in line
    assert [r["step"] for r in read_records(flaky.path) if r["kind"] == "metrics"] == list(range(10))
    journal = only_journal(tmp_path / "run")
    (cursor,) = journal.cursors()
    journal.close()
    assert cursor.pending == cursor.last - cursor.position > 90


def test_a_journal_its_process_never_committed_is_skipped(recorder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Killed while creating its journal (an empty file, created before the first commit): nothing to replay, and
    the run's other journals are still synced."""
    log_run(tmp_path / "run", steps=3)
    (tmp_path / "run" / JOURNAL_DIR / "20990101T000000-000-1.sqlite").write_bytes(b"")
    assert cli.main(["sync", "--quiet", "--to", "testrecorder", str(tmp_path / "run")]) == 0
    assert "nothing pending" in capsys.readouterr().out  # the live run's journal: testrecorder has it all


def log_media_run(directory: Path, artifact: Path) -> None:
    np = pytest.importorskip("numpy")
    pixels = (np.arange(8 * 6 * 3).reshape(8, 6, 3) % 256).astype(np.uint8)
    extra: dict[str, Any] = {}
    try:
        from PIL import Image as PILImage
    except ImportError:
        pass
    else:  # an encoded image that is not a PNG: the journal keeps its bytes as logged
        jpeg = artifact.with_name("photo.jpg")
        if not jpeg.exists():
            PILImage.fromarray(pixels).save(jpeg, format="JPEG")
        extra["photo"] = tracklink.Image(jpeg)
    with tracklink.init(project="journal", name="media", report_to=["testrecorder"], dir=directory) as run:
        for step in range(3):
            run.log({**extra, "loss": 1.0 / (step + 1),
                     "samples": tracklink.Image(pixels + step, caption=f"step {step} {SECRET}"),
                     "weights": tracklink.Histogram(np.linspace(-1, 1, 101) * (step + 1), bins=16),
                     "preds": tracklink.Table(columns=["id", "label", "image"],
                                              rows=[[1, f"cat {SECRET}", tracklink.Image(pixels)], [2, "dog", None]]),
                     "report": tracklink.Text(f"step {step}"),
                     "weights.bin": tracklink.File(artifact)}, step=step)


def test_media_values_are_journaled_beside_the_journal_and_replayed_like_live(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(b"\x00\x01weights" * 100)
    log_media_run(tmp_path / "live", artifact)
    live = comparable(records(recorder))
    assert {r["call"] for r in live} >= {"log_media", "log_artifact", "log_text"}
    recorder.unlink()

    monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    log_media_run(tmp_path / "offline", artifact)
    monkeypatch.delenv("TRACKLINK_OFFLINE")
    artifact.write_bytes(b"changed after the run")  # the journal kept the file as it was logged
    (path,) = journal_files(tmp_path / "offline")
    folder = path.with_name(path.stem + ".media")
    names = sorted(p.name for p in folder.iterdir())
    assert len([n for n in names if n.endswith(".png")]) == 6 and len([n for n in names if "weights.bin" in n]) == 3
    assert len([n for n in names if n.endswith(".img")]) == (3 if importlib.util.find_spec("PIL") else 0)
    assert not [n for n in names if n.endswith(".tmp")]
    journal = JournalFile(path, check=True)
    rows = [e.data for e in journal.events() if e.kind == "log"]
    journal.close()
    assert SECRET not in json.dumps(rows), "captions and table cells are masked in the journal"
    assert "not_journaled" not in rows[0]

    assert cli.main(["sync", "--quiet", str(tmp_path / "offline")]) == 0
    replayed = comparable(records(recorder))

    def without_secret_text(rows: list[dict[str, Any]]) -> str:
        return json.dumps(rows, sort_keys=True).replace(SECRET, "<redacted>")

    assert json.loads(without_secret_text(replayed)) == json.loads(without_secret_text(live))


def test_a_missing_media_file_is_named_and_the_rest_replayed(recorder: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    np = pytest.importorskip("numpy")
    monkeypatch.setenv("TRACKLINK_OFFLINE", "1")
    with tracklink.init(report_to=["testrecorder"], dir=tmp_path / "run") as run:
        run.log({"loss": 0.5, "samples": tracklink.Image(np.zeros((4, 4), dtype=np.uint8))}, step=1)
    monkeypatch.delenv("TRACKLINK_OFFLINE")
    (path,) = journal_files(tmp_path / "run")
    (png,) = path.with_name(path.stem + ".media").glob("*.png")
    png.unlink()
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        assert cli.main(["sync", "--quiet", str(tmp_path / "run")]) == 0
    assert "'samples'" in caplog.text and png.name in caplog.text
    calls = {r["call"]: r for r in records(recorder)}
    assert calls["log_metrics"]["metrics"] == {"train/loss": 0.5} and "log_media" not in calls


def test_events_left_by_a_drain_timeout_stay_in_the_journal_and_sync_sends_them_once(
        recorder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TRACKLINK_DRAIN_TIMEOUT", "0.5")
    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_DELAY", "0.02")
    with caplog.at_level(logging.WARNING, logger="tracklink"):
        with tracklink.init(report_to=["testrecorder"], dir=tmp_path / "run") as run:
            for step in range(200):
                run.log({"loss": float(step)}, step=step)
    warning = next(r.getMessage() for r in caplog.records if "fell behind" in r.getMessage())
    assert "stay in the run journal for `tracklink sync`" in warning
    assert "kept in the run journal for tracklink sync" in run.failures()["testrecorder"]
    assert f"Send them with: tracklink sync {tmp_path / 'run'}" in caplog.text
    live = [r["step"] for r in records(recorder) if r["call"] == "log_metrics"]
    assert 0 < len(live) < 200
    assert [r["call"] for r in records(recorder)][-1] == "finish", "the run was closed"

    monkeypatch.setenv("TRACKLINK_TESTPLUGIN_DELAY", "0")
    assert cli.main(["sync", "--quiet", str(tmp_path / "run")]) == 0
    steps = [r["step"] for r in records(recorder) if r["call"] == "log_metrics"]
    assert sorted(set(steps)) == list(range(200)), "every point arrived"
    assert len(steps) - 200 <= len(steps) - len(set(steps)) <= 1, "at most the first pending step is sent again"
