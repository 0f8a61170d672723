"""The reliability contract (DESIGN §5), proved with deliberately failing, slow and secret-seeing test
trackers through tracklink's real Trainer.

Bad inputs tried here: ``TRACKLINK_ON_ERROR=explode`` (ValueError naming the value and the accepted
policies); ``TRACKLINK_TRACKER_MAX_ERRORS=0`` (ValueError, too small).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tracklink
from helpers import SECRET_ENV, SECRET_ENV_VAR, SECRETS, make_trainer, raise_at, stop_at
from tracker_doubles import ArgsDumpingTracker, FailingTracker, RecordingTracker, SlowTracker, read_records

TESTS = Path(__file__).resolve().parent.parent


def _metric_steps(records: list[dict], key: str = "train/loss") -> list[int]:
    return [r["step"] for r in records if r["kind"] == "metrics" and key in r["metrics"]]


# -- isolation -------------------------------------------------------------------------------------


def test_tracker_raising_on_every_call_does_not_stop_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    failing = FailingTracker()
    recorder = RecordingTracker(tmp_path / "ok.jsonl")
    caplog.set_level(logging.WARNING, logger="tracklink")
    trainer = make_trainer(tmp_path / "out", callbacks=[failing, recorder])
    result = trainer.train()
    assert result.global_step == 20
    # reported once with its name and a traceback, then switched off after 3 errors
    first = [r for r in caplog.records if "tracker 'failing' failed" in r.getMessage()]
    assert len(first) == 1 and "Traceback" in first[0].getMessage()
    assert any("tracker 'failing' switched off" in r.getMessage() for r in caplog.records)
    assert failing.finished == ["failed"], "a switched-off tracker closes its run as failed, once"
    summary = trainer.state.stateful_callbacks["TracklinkHub"]["attributes"]["tracker_failures"]
    assert "failing" in summary and "3 error(s)" in summary["failing"] and "planted failure" in summary["failing"]
    assert any(r.getMessage().startswith("tracklink: tracker 'failing': 3 error(s)") for r in caplog.records)
    # the healthy tracker next to it got everything
    assert _metric_steps(read_records(recorder.path)) == [5, 10, 15, 20]


class InlineFailingTracker(FailingTracker):
    # fails on the training thread, so its failures are known when checkpoint-20 is written (an
    # asynchronous tracker's may still be queued then: the summary holds the failures seen so far)
    inline = True


def test_failure_summary_is_saved_in_checkpoints(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", callbacks=[InlineFailingTracker()])
    trainer.train()
    state = tracklink.TrainerState.load_from_json(str(tmp_path / "out" / "checkpoint-20" / "trainer_state.json"))
    assert "failing" in state.stateful_callbacks["TracklinkHub"]["attributes"]["tracker_failures"]


def test_setup_failure_is_isolated(tmp_path: Path) -> None:
    failing = FailingTracker(fail_setup=True)
    trainer = make_trainer(tmp_path / "out", callbacks=[failing])
    assert trainer.train().global_step == 20
    assert "ConnectionError" in trainer.callback_handler.tracker_failures()["failing"]


def test_raise_policy_stops_training_and_still_fires_on_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLINK_ON_ERROR", "raise")
    failing = FailingTracker()
    recorder = RecordingTracker(tmp_path / "rec.jsonl")
    trainer = make_trainer(tmp_path / "out", callbacks=[failing, recorder], max_steps=200)
    with pytest.raises(tracklink.TrackerError, match="tracker 'failing' failed in on_log"):
        trainer.train()
    assert trainer.state.global_step < 200
    assert failing.finished == ["failed"]
    assert read_records(recorder.path)[-1] == {**read_records(recorder.path)[-1], "kind": "finish", "status": "failed"}


@pytest.mark.parametrize(("name", "value"), [("TRACKLINK_ON_ERROR", "explode"), ("TRACKLINK_TRACKER_MAX_ERRORS", "0")])
def test_bad_delivery_settings_fail_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name) as info:
        make_trainer(tmp_path / "out", callbacks=[RecordingTracker(tmp_path / "x.jsonl")])
    if name == "TRACKLINK_ON_ERROR":
        assert "warn, raise" in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_user_callback_errors_keep_transformers_semantics(tmp_path: Path) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")

    trainer = make_trainer(tmp_path / "out", callbacks=[recorder, raise_at(7, ValueError("user callback failed"))])
    with pytest.raises(ValueError, match="user callback failed"):
        trainer.train()
    records = read_records(recorder.path)
    assert records[-1]["kind"] == "finish" and records[-1]["status"] == "failed"
    assert _metric_steps(records) == [5]


def test_keyboard_interrupt_marks_the_run_killed(tmp_path: Path) -> None:
    recorder = RecordingTracker(tmp_path / "rec.jsonl")

    class Interrupt(tracklink.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 12:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "out", callbacks=[recorder, Interrupt()]).train()
    records = read_records(recorder.path)
    assert records[-1]["status"] == "killed"
    assert _metric_steps(records) == [5, 10]


# -- non-blocking delivery ---------------------------------------------------------------------------


def test_slow_tracker_runs_behind_the_training_thread_in_order(tmp_path: Path) -> None:
    ref: list = []
    slow = SlowTracker(tmp_path / "slow.jsonl", delay=0.1, trainer_ref=ref)
    trainer = make_trainer(tmp_path / "out", callbacks=[slow], eval_strategy="no", save_strategy="no")
    ref.append(trainer)
    trainer.train()
    records = read_records(slow.path)
    metrics = [r for r in records if r["kind"] == "metrics"]
    # four training logs, then the epoch of the final summary log (the summary keys go to log_summary)
    assert [r["step"] for r in metrics] == [5, 10, 15, 20, 20], "delivered in order, nothing dropped"
    assert all(r["thread"].startswith("tracklink-") for r in records)
    # while the tracker slept on the step-5 log, training had already moved on
    assert metrics[0]["live_step"] > 5
    assert records[-1]["kind"] == "finish", "on_train_end waits for the queue to drain"


def test_tracker_gets_a_snapshot_not_the_live_state(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    class Peek(tracklink.Tracker):
        name = "peek"

        def on_log(self, args, state, control, logs=None, **kwargs):
            time.sleep(0.05)
            seen.append((state.global_step, len(state.log_history)))

    trainer = make_trainer(tmp_path / "out", callbacks=[Peek()], eval_strategy="no", save_strategy="no")
    trainer.train()
    assert [step for step, _ in seen] == [5, 10, 15, 20, 20]
    assert [n for _, n in seen] == [1, 2, 3, 4, 5]


def test_rotation_waits_for_a_tracker_still_uploading(tmp_path: Path) -> None:
    uploaded: list[list[str]] = []

    class Uploader(tracklink.Tracker):
        name = "uploader"

        def log_checkpoint(self, path: str, state) -> None:
            time.sleep(0.2)  # a slow upload; rotation must not delete the directory meanwhile
            uploaded.append(sorted(os.listdir(path)))

    trainer = make_trainer(tmp_path / "out", callbacks=[Uploader()], eval_strategy="no", save_steps=5,
                           save_total_limit=1)
    trainer.train()
    assert len(uploaded) == 4
    assert all("model.safetensors" in files and "trainer_state.json" in files for files in uploaded)
    # the run journal (tracklink-journal/) lives beside the checkpoints; rotation leaves it alone
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-20", "tracklink-journal"]


def test_inline_tracker_runs_on_the_training_thread(tmp_path: Path) -> None:
    class InlineRecorder(RecordingTracker):
        name = "inline"
        inline = True

    recorder = InlineRecorder(tmp_path / "inline.jsonl")
    make_trainer(tmp_path / "out", callbacks=[recorder], max_steps=5, eval_strategy="no", save_strategy="no").train()
    assert {r["thread"] for r in read_records(recorder.path)} == {"MainThread"}


# -- redaction ---------------------------------------------------------------------------------------


def test_no_secret_reaches_a_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    spy = ArgsDumpingTracker(tmp_path / "spy.jsonl")
    trainer = make_trainer(tmp_path / "out", callbacks=[spy], secrets=True)
    trainer.train()
    text = spy.path.read_text()
    for secret in SECRETS:
        assert secret not in text, secret
    records = read_records(spy.path)
    setup = next(r for r in records if r["kind"] == "setup")
    assert setup["params"]["learning_rate"] == 0.1 and setup["params"]["max_steps"] == 20
    assert setup["params"]["hub_token"] == "<redacted>"
    assert setup["params"]["service_password"] == "<redacted>"
    assert setup["params"]["database_url"] == "postgresql://<redacted>@db.internal:5432/runs"
    assert setup["name"] == "run-<redacted>"
    raw = next(r for r in records if r["kind"] == "raw_args")
    assert raw["args"]["hub_token"] == "<redacted>" and raw["args"]["learning_rate"] == 0.1
    # the user's objects are untouched
    assert trainer.args.hub_token.startswith("sk-arg-SECRET")
    # and the checkpoint's training_args.json is redacted too (trackers may upload checkpoints)
    args_file = (tmp_path / "out" / "checkpoint-20" / "training_args.json").read_text()
    assert all(secret not in args_file for secret in SECRETS)


# -- resume identity ---------------------------------------------------------------------------------


def test_resume_reattaches_to_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "out"

    first = RecordingTracker(tmp_path / "first.jsonl")
    make_trainer(out, callbacks=[first, stop_at(15)]).train()
    run_id = read_records(first.path)[0]["run_id"]
    saved = tracklink.TrainerState.load_from_json(str(out / "checkpoint-10" / "trainer_state.json"))
    assert saved.stateful_callbacks["RecordingTracker"]["attributes"]["run"] == {"run_id": run_id}

    second = RecordingTracker(tmp_path / "second.jsonl")
    make_trainer(out, callbacks=[second]).train(resume_from_checkpoint=str(out / "checkpoint-10"))
    records = read_records(second.path)
    assert records[0]["kind"] == "setup" and records[0]["run_id"] == run_id
    assert records[0]["resumed"] is True and records[0]["start_step"] == 10
    assert _metric_steps(records) == [15, 20]


# -- processes: SIGTERM and interpreter exit ------------------------------------------------------------


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from helpers import make_trainer
        from tracker_doubles import RecordingTracker, SlowTracker
        import tracklink
    """) + textwrap.dedent(body))
    return path


@pytest.mark.slow
def test_sigterm_flushes_every_metric_and_marks_the_run_killed(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        class Pace(tracklink.TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                time.sleep(0.02)
            def on_log(self, args, state, control, logs=None, **kwargs):
                print("LOGGED", state.global_step, flush=True)
        slow = SlowTracker(sys.argv[2], delay=0.3)   # queue grows behind the training thread
        trainer = make_trainer(sys.argv[1], callbacks=[slow, Pace()], max_steps=100000, eval_strategy="no",
                               save_strategy="no", logging_steps=2)
        trainer.train()
    """)
    records_path = tmp_path / "rec.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(records_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logged: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("LOGGED"):
            logged.append(int(line.split()[1]))
            if len(logged) >= 15:
                break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    logged += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("LOGGED")]
    assert proc.returncode == 143, err
    records = read_records(records_path)
    delivered = _metric_steps(records)
    assert set(logged) <= set(delivered), f"lost: {sorted(set(logged) - set(delivered))}"
    assert records[-1]["kind"] == "finish" and records[-1]["status"] == "killed"


@pytest.mark.slow
def test_interpreter_exit_drains_and_closes(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        slow = SlowTracker(sys.argv[2], delay=0.2)
        trainer = make_trainer(sys.argv[1], callbacks=[slow])
        trainer.evaluate()   # opens the run lazily; nobody closes it explicitly
        trainer.log({"custom": 1.0})
    """)
    records_path = tmp_path / "rec.jsonl"
    subprocess.run([sys.executable, str(script), str(tmp_path / "out"), str(records_path)], check=True,
                   capture_output=True, timeout=120)
    records = read_records(records_path)
    assert [r["kind"] for r in records] == ["setup", "metrics", "metrics", "finish"]
    assert "eval/loss" in records[1]["metrics"] and records[2]["metrics"] == {"train/custom": 1.0, "train/epoch": 0}
    assert records[-1]["status"] == "success"
