"""Flyte: run Flyte tasks locally (flytekit's local execution: calling the task function, fully offline)
that train through tracklink's Trainer, then read back the task checkpoint, restore it the way a Flyte
retry does, and read the rendered ``deck.html``. TMPDIR points into the test session's temp dir (conftest),
so flytekit's sandboxes land there.

Bad inputs handled (each has a test below):
* ``FlyteCallback()`` or ``report_to="flyte"`` outside a Flyte task (a workflow body included)
  -> RuntimeError at construction;
* ``FlyteCallback(save_log_history="yes")``                        -> TypeError;
* ``report_to="all"`` never picks flyte (the reason is listed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

import tracklink
from helpers import SECRET_ENV, SECRET_ENV_VAR, files_containing, make_trainer, raise_at

pytestmark = pytest.mark.sdk("flytekit")

flytekit = pytest.importorskip("flytekit")
from flytekit import current_context, task  # noqa: E402

SEEN: dict = {}


@task(enable_deck=True)
def train_with_deck(out: str) -> int:
    # built inside the task: report_to creates FlyteCallback here (secrets planted, see helpers)
    trainer = make_trainer(out, ["flyte"], secrets=True)
    trainer.train()
    SEEN["checkpoint_dest"] = current_context().checkpoint._checkpoint_dest
    SEEN["decks"] = {d.name: d.html for d in current_context().decks}
    return trainer.state.global_step


@task
def train_attempt(out: str, fail_at: int) -> int:
    SEEN["checkpoint_dest"] = current_context().checkpoint._checkpoint_dest
    restored = current_context().checkpoint.restore()
    SEEN["restored"] = str(restored) if restored else None
    callbacks = [raise_at(fail_at, RuntimeError(f"pod evicted at step {fail_at} (planted)"))] if fail_at else []
    trainer = make_trainer(out, ["flyte"], callbacks=callbacks)
    trainer.train(resume_from_checkpoint=restored)
    SEEN["history"] = trainer.state.log_history
    return trainer.state.global_step


@task
def train_plain(out: str) -> int:
    from tracklink.integrations import FlyteCallback

    trainer = make_trainer(out, ["flyte"], callbacks=[FlyteCallback(save_log_history=False)])
    step = trainer.train().global_step
    SEEN["failures"] = trainer.callback_handler.tracker_failures()
    return step


@pytest.fixture(autouse=True)
def _clear_seen():
    SEEN.clear()
    yield


def test_checkpoints_synced_from_the_worker_and_log_history_deck(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flytekit.core.checkpointer import SyncCheckpoint

    threads: list[str] = []
    real_save = SyncCheckpoint.save

    def save(self, cp):
        threads.append(threading.current_thread().name)
        return real_save(self, cp)

    monkeypatch.setattr(SyncCheckpoint, "save", save)
    monkeypatch.setenv(SECRET_ENV_VAR, SECRET_ENV)
    started = time.time()
    assert train_with_deck(out=str(tmp_path / "out")) == 20

    assert threads == ["tracklink-flyte", "tracklink-flyte"], "saved at steps 10 and 20, off the training thread"
    dest = Path(SEEN["checkpoint_dest"])
    assert (dest / "model.safetensors").is_file(), "the checkpoint's files are the task checkpoint, flat"
    assert json.loads((dest / "trainer_state.json").read_text())["global_step"] == 20

    table = SEEN["decks"]["Log History"]
    assert "<table" in table and "eval_loss" in table and "train_runtime" in table
    decks = [p for p in Path(tempfile.gettempdir()).rglob("deck.html") if p.stat().st_mtime >= started - 1]
    assert len(decks) == 1, decks
    rendered = decks[0].read_text()
    assert "Log History" in rendered and "eval_loss" in rendered
    assert files_containing(decks[0].parent) == []
    # the synced checkpoint is the trainer's, byte for byte: only the model's own config.json (the planted
    # model-config secret, saved as the model holds it) may contain a planted value
    assert {Path(hit.split(": ")[0]).name for hit in files_containing(dest)} <= {"config.json"}


def test_retry_resumes_from_the_restored_task_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flytekit.core.context_manager as context_manager
    from flytekit.core.checkpointer import SyncCheckpoint

    with pytest.raises(Exception, match="pod evicted at step 15"):
        train_attempt(out=str(tmp_path / "attempt1"), fail_at=15)
    first_dest = SEEN["checkpoint_dest"]
    assert SEEN["restored"] is None, "a first attempt has nothing to restore"
    assert json.loads((Path(first_dest) / "trainer_state.json").read_text())["global_step"] == 10

    # what Flyte does on a retry: the new attempt's checkpoint reads from the previous attempt's
    def retry_checkpoint(checkpoint_dest, checkpoint_src=None):
        return SyncCheckpoint(checkpoint_dest=checkpoint_dest, checkpoint_src=first_dest)

    monkeypatch.setattr(context_manager, "SyncCheckpoint", retry_checkpoint)
    assert train_attempt(out=str(tmp_path / "attempt2"), fail_at=0) == 20
    assert (Path(SEEN["restored"]) / "model.safetensors").is_file()
    steps = [h["step"] for h in SEEN["history"] if "loss" in h]
    assert steps == [5, 10, 15, 20], "restored history up to 10, then 15 and 20 trained again"
    second = Path(SEEN["checkpoint_dest"])
    assert json.loads((second / "trainer_state.json").read_text())["global_step"] == 20


def test_failing_checkpoint_sync_does_not_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flytekit.core.checkpointer import SyncCheckpoint

    def broken(self, cp):
        raise OSError("blob store unreachable (planted)")

    monkeypatch.setattr(SyncCheckpoint, "save", broken)
    assert train_plain(out=str(tmp_path / "out")) == 20
    assert "blob store unreachable (planted)" in SEEN["failures"]["flyte"]


WORKFLOW_SCRIPT = textwrap.dedent('''
    import json
    import sys

    from flytekit import current_context, task, workflow
    from flytekit.core.context_manager import FlyteContextManager

    from helpers import make_trainer
    from tracklink.integrations import FlyteCallback

    SEEN = sys.argv[1]
    records = []


    @task(enable_deck=True)
    def train(out: str) -> int:
        trainer = make_trainer(out, ["flyte"])  # report_to creates FlyteCallback here
        trainer.train()
        context = FlyteContextManager.current_context()
        records.append({"where": "task", "mode": str(context.execution_state.mode),
                        "checkpoint_dest": str(current_context().checkpoint._checkpoint_dest),
                        "decks": [deck.name for deck in current_context().decks]})
        return trainer.state.global_step


    @workflow
    def pipeline(out: str) -> int:
        return train(out=out)


    @workflow
    def callback_in_workflow_body() -> None:
        # runs twice: compiled (no execution mode), then executed locally (the workflow's mode)
        mode = str(getattr(FlyteContextManager.current_context().execution_state, "mode", None))
        try:
            FlyteCallback()
        except RuntimeError as exc:
            records.append({"where": "workflow body", "mode": mode, "error": str(exc)})


    if __name__ == "__main__":
        step = pipeline(out=sys.argv[2])
        callback_in_workflow_body()
        with open(SEEN, "w") as handle:
            json.dump({"step": step, "records": records}, handle)
''')


def test_trainer_in_a_task_run_by_a_locally_executed_workflow(tmp_path: Path) -> None:
    """``wf()`` (what ``pyflyte run`` does) runs the task body in LOCAL_WORKFLOW_EXECUTION mode; the
    callback still finds the task's checkpoint and deck there. flytekit reads the task's source, so the
    workflow lives in a script file, run in its own interpreter with its own TMPDIR."""
    script = tmp_path / "train_workflow.py"
    script.write_text(WORKFLOW_SCRIPT)
    sandbox = tmp_path / "tmp"
    sandbox.mkdir()
    env = dict(os.environ, TMPDIR=str(sandbox),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    seen_file, out = tmp_path / "seen.json", tmp_path / "out"
    result = subprocess.run([sys.executable, str(script), str(seen_file), str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads(seen_file.read_text())
    assert seen["step"] == 20

    task_record, *body_records = seen["records"]
    assert task_record["where"] == "task" and task_record["mode"] == "Mode.LOCAL_WORKFLOW_EXECUTION"
    dest = Path(task_record["checkpoint_dest"])
    assert dest.is_relative_to(sandbox) and (dest / "model.safetensors").is_file()
    assert json.loads((dest / "trainer_state.json").read_text())["global_step"] == 20
    assert (out / "checkpoint-20" / "model.safetensors").read_bytes() == (dest / "model.safetensors").read_bytes()
    assert "Log History" in task_record["decks"]
    decks = list(sandbox.rglob("deck.html"))
    assert len(decks) == 1, decks
    rendered = decks[0].read_text()
    assert "Log History" in rendered and "eval_loss" in rendered and "train_runtime" in rendered

    # a workflow body is not a task: compiled (no mode) or executed (the workflow's mode), it still fails
    assert [r["mode"] for r in body_records] == ["None", "Mode.LOCAL_WORKFLOW_EXECUTION"], body_records
    for record in body_records:
        assert "must be created inside a Flyte task" in record["error"], record


# -- bad inputs --------------------------------------------------------------------------------------


def test_outside_a_task_fails_at_construction(tmp_path: Path) -> None:
    from tracklink.integrations import FlyteCallback

    with pytest.raises(RuntimeError, match="must be created inside a Flyte task"):
        FlyteCallback()
    with pytest.raises(RuntimeError, match="must be created inside a Flyte task"):
        FlyteCallback(sync_checkpoints=False)
    with pytest.raises(RuntimeError, match="must be created inside a Flyte task"):
        make_trainer(tmp_path / "out", ["flyte"])
    with pytest.raises(TypeError, match=r"save_log_history='yes'\): expected True or False"):
        FlyteCallback(save_log_history="yes")


@pytest.mark.parametrize("mode", ["TASK_EXECUTION", "DYNAMIC_TASK_EXECUTION", "LOCAL_DYNAMIC_TASK_EXECUTION"])
def test_task_without_checkpoint_support_keeps_only_the_deck(mode: str) -> None:
    """A task (or @dynamic task) on a platform that gives it no checkpoint: syncing cannot work, the deck
    still can, and the message says so rather than "not inside a task"."""
    from flytekit.core.context_manager import ExecutionState, FlyteContextManager

    from tracklink.integrations import FlyteCallback

    context = FlyteContextManager.current_context()
    state = context.new_execution_state().with_params(mode=getattr(ExecutionState.Mode, mode),
                                                      user_space_params=context.user_space_params)
    with FlyteContextManager.with_context(context.with_execution_state(state)):
        with pytest.raises(RuntimeError, match=r"needs the task's checkpoint.*Checkpointing is not available"):
            FlyteCallback()
        assert FlyteCallback(sync_checkpoints=False).uploads_checkpoints is False


def test_report_to_all_never_picks_flyte() -> None:
    from tracklink.cli import plugin_rows

    resolution = tracklink.resolve_report_to("all", env={})
    assert "flyte" not in resolution.names
    assert "never chosen by 'all'" in resolution.skipped["flyte"]
    row = next(r for r in plugin_rows("all", env={})[0] if r["name"] == "flyte")
    assert row["auto"] is False and "inside a Flyte @task" in row["not_ready_reason"]
