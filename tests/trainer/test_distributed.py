"""Two CPU processes with gloo under ``torchrun``: one model, one set of checkpoints, trackers on rank 0.

Bad behaviours caught:
- ranks ending with different weights (DDP not used, or gradients not averaged);
- every rank writing the checkpoint (model files written twice) or only one RNG file
  (``rng_state_0.pth`` and ``rng_state_1.pth`` are both needed for an exact resume);
- a ``rank_policy="main"`` tracker running (and sending metrics) on rank 1;
- ``is_world_process_zero``/``is_local_process_zero`` wrong on a rank;
- logged losses not reduced across ranks (each rank logging its own shard's loss);
- a distributed resume in a new ``torchrun`` invocation not reproducing the uninterrupted run;
- a rank aborting at exit ("terminate called without an active exception") after evaluate()/predict()
  without train(): gloo threads of a process group that outlived its destruction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch

    sys.path.insert(0, sys.argv[3])
    from helpers import ClassificationDataset, TinyClassifier

    import tracklink
    import tracklink.trainer.checkpoint as ckpt
    from tracklink import TrainerCallback
    from tracklink.trainer import Trainer, TrainingArguments

    mode, root = sys.argv[1], Path(sys.argv[2])
    rank = int(__import__("os").environ["RANK"])

    saves = []
    _save_model = ckpt.save_model
    def counting_save_model(model, directory):
        saves.append(str(directory))
        return _save_model(model, directory)
    ckpt.save_model = counting_save_model


    class FileTracker(tracklink.Tracker):
        name = "file-recorder"
        rank_policy = "main"

        def __init__(self):
            self.events = []

        def setup(self, run):
            self.events.append(["setup", run.start_step])

        def log_metrics(self, metrics, step, epoch):
            self.events.append(["metrics", step, sorted(metrics)])

        def log_summary(self, metrics, step):
            self.events.append(["summary", step, sorted(metrics)])

        def finish(self, status):
            self.events.append(["finish", status])


    class StopAfterSaveAt(TrainerCallback):
        def __init__(self, n):
            self.n = n

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == self.n:
                control.should_training_stop = True


    def train(name, callbacks=(), resume=None):
        tracker = FileTracker()
        args = TrainingArguments(
            output_dir=str(root / name), report_to="none", disable_tqdm=True, max_steps=8,
            per_device_train_batch_size=4, logging_steps=2, eval_strategy="steps", eval_steps=4,
            save_steps=2, learning_rate=0.05, seed=5, use_cpu=True,
        )
        trainer = Trainer(model_init=lambda: TinyClassifier(dropout=0.3), args=args,
                          train_dataset=ClassificationDataset(length=40),
                          eval_dataset=ClassificationDataset(length=12, seed=3),
                          callbacks=[tracker, *callbacks])
        trainer.train(resume_from_checkpoint=resume)
        # predictions gathered from uneven shards (6 + 5 samples) come back in dataset order
        test_set = ClassificationDataset(length=11, seed=9)
        predicted = trainer.predict(test_set)
        model = trainer.model.eval()
        with torch.no_grad():
            local = model(x=torch.stack([test_set[i]["x"] for i in range(11)]))["logits"].numpy()
        in_order = predicted.predictions.shape == local.shape and bool(abs(predicted.predictions - local).max() < 1e-5)
        out = root / f"{name}-rank{rank}"
        torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, f"{out}.weights.pt")
        Path(f"{out}.json").write_text(json.dumps({
            "tracker_events": tracker.events,
            "registered_trackers": list(trainer.callback_handler.trackers),
            "log_history": trainer.state.log_history,
            "is_world_process_zero": trainer.state.is_world_process_zero,
            "is_local_process_zero": trainer.state.is_local_process_zero,
            "global_step": trainer.state.global_step,
            "saves": list(saves),
            "predictions_in_order": in_order,
            "prediction_labels": predicted.label_ids.tolist(),
        }))
        saves.clear()


    if mode == "first":
        train("full")
        train("split", callbacks=[StopAfterSaveAt(4)])
    else:
        train("split", resume=True)
''')


def torchrun(script: Path, mode: str, root: Path) -> None:
    tests_dir = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_LOG_LEVEL": "warning"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), mode, str(root), str(tests_dir)],
        capture_output=True, text=True, timeout=240, env=env, cwd=root,
    )
    assert result.returncode == 0, f"torchrun {mode} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def load(root: Path, name: str, rank: int) -> tuple[dict, dict]:
    data = json.loads((root / f"{name}-rank{rank}.json").read_text())
    weights = torch.load(root / f"{name}-rank{rank}.weights.pt", weights_only=True)
    return data, weights


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(history: list[dict]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in history if "loss" in e] + [
        (e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]


def test_two_processes_with_gloo(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    torchrun(script, "first", tmp_path)

    (r0, w0), (r1, w1) = load(tmp_path, "full", 0), load(tmp_path, "full", 1)
    assert r0["global_step"] == r1["global_step"] == 8
    assert same(w0, w1)
    assert (r0["is_world_process_zero"], r0["is_local_process_zero"]) == (True, True)
    assert (r1["is_world_process_zero"], r1["is_local_process_zero"]) == (False, False)
    assert losses(r0["log_history"]) == losses(r1["log_history"])  # reduced across ranks
    assert len(losses(r0["log_history"])) == 4 + 2
    assert r0["predictions_in_order"] and r1["predictions_in_order"]
    from helpers import ClassificationDataset

    assert r0["prediction_labels"] == [int(ClassificationDataset(length=11, seed=9)[i]["labels"]) for i in range(11)]

    # trackers: on rank 0 only
    assert r0["registered_trackers"] == ["file-recorder"] and r1["registered_trackers"] == []
    assert r1["tracker_events"] == []
    events = r0["tracker_events"]
    events = events[:events.index(["finish", "success"]) + 1]  # training (a later predict() re-attaches)
    assert events[0] == ["setup", 0]
    # train logs at 2, 4, 6, 8, evaluations at 4 and 8, and the summary's epoch at 8
    assert [e[1] for e in events if e[0] == "metrics"] == [2, 4, 4, 6, 8, 8, 8]
    assert [e[1] for e in events if e[0] == "summary"] == [8]

    # one set of checkpoints, written by rank 0, with one RNG file per rank
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert r0["saves"] == [str(p) for p in checkpoints] and r1["saves"] == []
    for path in checkpoints:
        names = {p.name for p in path.iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors", "optimizer.pt",
                "trainer_state.json"} <= names
        assert "rng_state.pth" not in names
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    assert state["is_world_process_zero"] is True and state["global_step"] == 8

    # the interrupted run stopped at 4; a second torchrun resumes it to 8
    split0, _ = load(tmp_path, "split", 0)
    assert split0["global_step"] == 4
    torchrun(script, "resume", tmp_path)
    (s0, sw0), (s1, sw1) = load(tmp_path, "split", 0), load(tmp_path, "split", 1)
    assert s0["global_step"] == s1["global_step"] == 8
    assert same(sw0, sw1) and same(sw0, w0)
    strip = [{k: v for k, v in e.items() if not k.endswith(("_runtime", "_per_second"))}
             for e in s0["log_history"] if "train_runtime" not in e]
    full = [{k: v for k, v in e.items() if not k.endswith(("_runtime", "_per_second"))}
            for e in r0["log_history"] if "train_runtime" not in e]
    assert strip == full
    assert s0["tracker_events"][0] == ["setup", 4] and s1["tracker_events"] == []


STREAM_SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import torch

    sys.path.insert(0, sys.argv[3])
    from helpers import ClassificationDataset, TinyClassifier

    from tracklink.trainer import Trainer, TrainingArguments, default_data_collator

    root, rank = Path(sys.argv[2]), int(os.environ["RANK"])
    blobs = ClassificationDataset(length=22)


    class Stream(torch.utils.data.IterableDataset):
        """22 samples without a length, tagged with their index; reversed on odd epochs."""

        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            order = range(22) if self.epoch % 2 == 0 else range(21, -1, -1)
            for i in order:
                yield {**blobs[i], "idx": i}


    seen = []
    def collate(features):
        seen.append([f.pop("idx") for f in features])
        return default_data_collator(features)


    args = TrainingArguments(output_dir=str(root / "stream"), report_to="none", disable_tqdm=True, max_steps=6,
                             per_device_train_batch_size=4, logging_steps=3, save_strategy="no", use_cpu=True)
    trainer = Trainer(model=TinyClassifier(), args=args, train_dataset=Stream(), data_collator=collate)
    trainer.train()
    Path(root / f"stream-rank{rank}.json").write_text(json.dumps({"batches": seen, "step": trainer.state.global_step}))
''')


def test_a_stream_is_split_between_the_processes(tmp_path: Path) -> None:
    """Length-less training data under torchrun: each process trains on its own quarter of every chunk
    of 2 x 4 samples (not on the whole stream, as without sharding), both see the same number of batches
    (3 per pass of 22 samples: the short last chunk is completed from the first), and the dataset's
    ``set_epoch`` is called for every pass."""
    script = tmp_path / "stream_ddp.py"
    script.write_text(STREAM_SCRIPT)
    torchrun(script, "stream", tmp_path)
    r0, r1 = (json.loads((tmp_path / f"stream-rank{r}.json").read_text()) for r in (0, 1))
    assert r0["step"] == r1["step"] == 6
    assert r0["batches"] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19],
                             [21, 20, 19, 18], [13, 12, 11, 10], [5, 4, 3, 2]]
    assert r1["batches"] == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 0, 1],
                             [17, 16, 15, 14], [9, 8, 7, 6], [1, 0, 21, 20]]


EVAL_STREAM_SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import torch

    sys.path.insert(0, sys.argv[3])
    from helpers import ClassificationDataset, TinyClassifier

    import tracklink.trainer.evaluation as evaluation_module  # where evaluations compute speed metrics
    from tracklink.trainer import Trainer, TrainingArguments, default_data_collator

    mode, root, rank = sys.argv[1], Path(sys.argv[2]), int(os.environ.get("RANK", "0"))
    blobs = ClassificationDataset(length=19, seed=4)


    class Stream(torch.utils.data.IterableDataset):
        """19 samples without a length, tagged with their index."""

        def __iter__(self):
            for i in range(19):
                yield {**blobs[i], "idx": i}


    seen = []
    def collate(features):
        seen.append([f.pop("idx") for f in features])
        return default_data_collator(features)


    counted = []
    real_speed_metrics = evaluation_module.speed_metrics
    def recording_speed_metrics(prefix, start, num_samples=None, num_steps=None):
        counted.append([prefix, num_samples, num_steps])
        return real_speed_metrics(prefix, start, num_samples, num_steps)
    evaluation_module.speed_metrics = recording_speed_metrics


    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean()),
                "evaluated": int(len(prediction.label_ids))}


    torch.manual_seed(11)
    args = TrainingArguments(output_dir=str(root / mode), report_to="none", disable_tqdm=True,
                             per_device_eval_batch_size=4, use_cpu=True)
    trainer = Trainer(model=TinyClassifier(), args=args, eval_dataset=Stream(), data_collator=collate,
                      compute_metrics=accuracy)
    metrics = trainer.evaluate()
    eval_batches = list(seen)
    predicted = trainer.predict(Stream())
    Path(root / f"{mode}-rank{rank}.json").write_text(json.dumps({
        "eval_batches": eval_batches,
        "metrics": {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))},
        "test_metrics": {k: v for k, v in predicted.metrics.items() if not k.endswith(("_runtime", "_per_second"))},
        "speed_keys": sorted(k for k in metrics if k.endswith("_per_second")),
        "predictions": predicted.predictions.tolist(),
        "label_ids": predicted.label_ids.tolist(),
        "counted": counted,
    }))
''')


def test_a_length_less_eval_stream_is_split_and_gathered(tmp_path: Path) -> None:
    """Length-less evaluation data under torchrun: each process evaluates every other batch of 4 (19
    samples: rank 0 gets 3 batches, rank 1 only 2, the short last chunk is not padded), and both report
    exactly what one process reports: the loss, compute_metrics on all 19 predictions (no duplicates), the
    predictions in stream order, and the sample count of the speed metrics."""
    script = tmp_path / "eval_stream_ddp.py"
    script.write_text(EVAL_STREAM_SCRIPT)
    torchrun(script, "ddp", tmp_path)
    tests_dir = Path(__file__).resolve().parent.parent
    single = subprocess.run(
        [sys.executable, str(script), "single", str(tmp_path), str(tests_dir)], capture_output=True, text=True,
        timeout=240, cwd=tmp_path,
        env={k: v for k, v in {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_LOG_LEVEL": "warning"}.items()
             if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")},
    )
    assert single.returncode == 0, single.stderr[-5000:]
    one = json.loads((tmp_path / "single-rank0.json").read_text())
    r0, r1 = (json.loads((tmp_path / f"ddp-rank{r}.json").read_text()) for r in (0, 1))

    assert one["eval_batches"] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18]]
    assert r0["eval_batches"] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18]]
    assert r1["eval_batches"] == [[4, 5, 6, 7], [12, 13, 14, 15]]

    assert one["metrics"]["eval_evaluated"] == 19 and one["test_metrics"]["test_evaluated"] == 19
    for rank in (r0, r1):
        assert rank["metrics"] == one["metrics"]  # eval_loss, eval_accuracy, eval_evaluated, exactly
        assert rank["test_metrics"] == one["test_metrics"]
        assert rank["predictions"] == one["predictions"] and rank["label_ids"] == one["label_ids"]
        assert rank["speed_keys"] == one["speed_keys"] == ["eval_samples_per_second", "eval_steps_per_second"]
        # 19 samples each time; steps count batches of all processes (4 x 2 per step), as for sized data
        assert rank["counted"] == [["eval", 19, 3], ["test", 19, 3]]
    assert one["counted"] == [["eval", 19, 5], ["test", 19, 5]]
    from helpers import ClassificationDataset

    assert one["label_ids"] == [int(ClassificationDataset(length=19, seed=4)[i]["labels"]) for i in range(19)]


EXIT_SCRIPT = textwrap.dedent('''
    import atexit, json, os, sys
    from pathlib import Path

    mode, root, rank = sys.argv[1], Path(sys.argv[2]), int(os.environ["RANK"])


    def threads():
        names = []
        for task in os.listdir("/proc/self/task"):
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except OSError:
                pass
        return names


    if os.path.isdir("/proc/self/task"):
        # registered before the Trainer exists, so it runs after tracklink's own exit handler (LIFO)
        atexit.register(lambda: Path(root / f"{mode}-exit-rank{rank}.json").write_text(json.dumps(threads())))

    sys.path.insert(0, sys.argv[3])
    from helpers import ClassificationDataset, TinyClassifier

    from tracklink.trainer import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(root / mode), report_to="none", disable_tqdm=True,
                             per_device_eval_batch_size=4, use_cpu=True)
    trainer = Trainer(model=TinyClassifier(), args=args, eval_dataset=ClassificationDataset(length=19, seed=4))
    if mode == "predict":
        predicted = trainer.predict(ClassificationDataset(length=11, seed=9))
        assert predicted.predictions.shape[0] == 11
    else:
        metrics = trainer.evaluate()
        assert "eval_loss" in metrics
    if mode == "raise":
        raise RuntimeError("the script failed after evaluating")
    # exit right after the last collective (the gather of evaluate()/predict()), as an evaluation script does
''')


def test_evaluation_only_runs_exit_cleanly(tmp_path: Path) -> None:
    """evaluate()/predict() without train() under torchrun: the process group tracklink created is really
    destroyed at exit, so no gloo thread outlives the atexit handlers. One such thread, still releasing the
    tensors of the last gather (which needs the GIL) once the interpreter was finalising, aborted a rank
    with "terminate called without an active exception" in about one run in four: tracklink's FSDP check
    imported ``torch.distributed.nn``, whose ``group=group.WORLD`` defaults kept the destroyed group alive.
    A script that raises after evaluating fails with its own error, and exits as cleanly."""
    script = tmp_path / "exit_ddp.py"
    script.write_text(EXIT_SCRIPT)
    tests_dir = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_LOG_LEVEL": "warning"}
    for attempt, mode in enumerate(("evaluate", "predict", "evaluate", "predict", "raise")):
        for stale in tmp_path.glob(f"{mode}-exit-rank*.json"):
            stale.unlink()
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(script), mode, str(tmp_path), str(tests_dir)],
            capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
        )
        output = f"run {attempt} ({mode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        assert "terminate called" not in result.stderr, output
        assert "SIGABRT" not in result.stderr, output
        if mode == "raise":
            assert result.returncode != 0 and "the script failed after evaluating" in result.stderr, output
        else:
            assert result.returncode == 0, output
        if not Path("/proc/self/task").is_dir():
            continue
        for rank in (0, 1):
            alive = json.loads((tmp_path / f"{mode}-exit-rank{rank}.json").read_text())
            gloo = [name for name in alive if "gloo" in name]
            assert not gloo, f"rank {rank}: threads alive at exit: {alive}\n{output}"
