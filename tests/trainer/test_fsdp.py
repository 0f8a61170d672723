"""FSDP2 (``fsdp="full_shard"`` …) on two CPU processes with gloo under ``torchrun``.

Bad behaviours caught:
- sharded training computing something else than DDP on the same data (losses, final weights);
- gradient accumulation with FSDP computing other gradients than DDP's (gradients are reduced once, with
  the last micro-batch: ``set_requires_gradient_sync``);
- a host-device sync on a step that does not log (FSDP with bf16 and gradient accumulation);
- tied weights (an embedding and a head sharing one parameter) breaking the consolidated save;
- a process without evaluation data of its own leaving the others waiting in a forward;
- gradient checkpointing or bf16 under FSDP training differently from DDP;
- ``torch_compile`` on top of the sharded model training differently;
- fp16 processes disagreeing on skipping a step when only one shard of the gradients overflowed;
- a sharded checkpoint missing its DCP directories, or an intermediate one paying for a consolidated
  ``model.safetensors`` (written only at the end and with ``save_only_model``);
- consolidated weights with FSDP's prefixes, or different from the trained model;
- a resume in a new ``torchrun`` not reproducing the uninterrupted run exactly (model, optimizer,
  scheduler, RNG, data position);
- FSDP changing the event sequence or the keys of ``trainer_state.json``;
- evaluation or prediction hanging when the processes get different numbers of batches (every FSDP
  forward is a collective);
- a sharded checkpoint that cannot be resumed without FSDP.
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
    import json, os, sys
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, sys.argv[3])
    sys.path.insert(0, str(Path(sys.argv[3]) / "trainer"))
    from helpers import ClassificationDataset, TinyClassifier
    from syncs import counting_syncs
    from trainer_testlib import CheckpointableClassifier, StopAfterSaveAt

    from tracklink import TrainerCallback
    from tracklink.trainer import Trainer, TrainingArguments

    mode, root = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])


    class Events(TrainerCallback):
        def __init__(self):
            self.names = []

        def __getattribute__(self, name):
            if name.startswith("on_") and name != "on_exception":
                names = object.__getattribute__(self, "names")
                return lambda *a, **k: names.append(name)
            return object.__getattribute__(self, name)


    class StepSyncs(TrainerCallback):
        """Host syncs from on_step_begin to on_step_end (steps that do not log: logging_steps is large)."""

        def __init__(self):
            self.active, self.calls = False, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.active = True

        def on_step_end(self, args, state, control, **kwargs):
            self.active = False

        def record(self, method, caller):
            if self.active:
                self.calls.append(f"{method} from {caller}")


    def count_syncs():
        counter = StepSyncs()
        args = TrainingArguments(
            output_dir=str(root / "syncs"), report_to="none", disable_tqdm=True, max_steps=3,
            per_device_train_batch_size=4, logging_steps=100, save_strategy="no", use_cpu=True,
            gradient_accumulation_steps=2, fsdp="full_shard", bf16=True,
        )
        trainer = Trainer(model=TinyClassifier(), args=args, train_dataset=ClassificationDataset(length=40),
                          callbacks=[counter])
        with counting_syncs(counter.record):
            trainer.train()
        Path(root / f"syncs-rank{rank}.json").write_text(json.dumps(counter.calls))


    class OverflowInOneShard(TinyClassifier):
        """At the second training forward the gradient of ``extra[1]`` is inf. ``extra`` is sharded over
        the two processes, so only process 1 holds an inf gradient: both must still skip the step."""

        forwards = 0

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.extra = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x, labels=None):
            out = super().forward(x, labels)
            if self.training and labels is not None:
                OverflowInOneShard.forwards += 1
                blow = float("inf") if OverflowInOneShard.forwards == 2 else 0.0
                out["loss"] = out["loss"] + (self.extra * torch.tensor([0.0, blow])).sum()
            return out


    def first_is_best():
        """compute_metrics whose score falls with every evaluation: the first one is the best."""
        calls = []

        def metrics(prediction):
            calls.append(prediction)
            return {"score": -float(len(calls))}
        return metrics


    class TiedClassifier(torch.nn.Module):
        """A language-model-like head tied to an embedding (one Parameter under two names)."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(4, 16)
            self.body = torch.nn.Linear(8, 16)
            self.head = torch.nn.Linear(16, 4, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x, labels=None):
            logits = self.head(torch.tanh(self.body(x)))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
            return out


    def train(name, fsdp="", callbacks=(), resume=None, steps=8, model=None, metrics=None, predict_length=9,
              **extra):
        events = Events()
        settings = dict(
            output_dir=str(root / name), report_to="none", disable_tqdm=True, max_steps=steps,
            per_device_train_batch_size=4, logging_steps=2, eval_strategy="steps", eval_steps=4,
            save_steps=2, learning_rate=0.05, seed=5, use_cpu=True, fsdp=fsdp, per_device_eval_batch_size=4,
            fsdp_config={"transformer_layer_cls_to_wrap": ["Linear"]} if fsdp else None,
        )
        args = TrainingArguments(**{**settings, **extra})
        trainer = Trainer(model_init=model or (lambda: TinyClassifier(dropout=0.3)), args=args,
                          train_dataset=ClassificationDataset(length=40),
                          eval_dataset=ClassificationDataset(length=13, seed=3),
                          callbacks=[events, *callbacks], compute_metrics=metrics)
        trainer.train(resume_from_checkpoint=resume)
        # 9 samples in batches of 4: 5 (two batches) on process 0, 4 (one batch) on process 1
        predicted = trainer.predict(ClassificationDataset(length=predict_length, seed=9))
        trainer.save_model(str(root / f"{name}-final"))
        out = {
            "events": events.names,
            "log_history": trainer.state.log_history,
            "global_step": trainer.state.global_step,
            "predictions": predicted.predictions.tolist(),
            "best_model_checkpoint": trainer.state.best_model_checkpoint,
            "block_calls": getattr(trainer.model, "block_calls", None),
        }
        if rank == 0:
            weights = load_file(str(root / f"{name}-final" / "model.safetensors"))
            torch.save(weights, root / f"{name}.weights.pt")
        Path(root / f"{name}-rank{rank}.json").write_text(json.dumps(out))


    if mode == "first":
        train("ddp")
        train("fsdp", fsdp="full_shard")
        train("split", fsdp="full_shard", callbacks=[StopAfterSaveAt(4)])
        train("ddp-4", steps=4)
        train("zero2", fsdp="shard_grad_op auto_wrap", steps=4)
        train("offload", fsdp="offload", steps=4)
        train("ddp-ga", steps=4, gradient_accumulation_steps=2)
        train("fsdp-ga", fsdp="full_shard", steps=4, gradient_accumulation_steps=2)
        train("only-model", fsdp="full_shard", steps=2, save_only_model=True)
        train("best", fsdp="full_shard", steps=12, save_steps=4, load_best_model_at_end=True,
              metric_for_best_model="score", metrics=first_is_best())
        train("compiled", fsdp="full_shard", steps=4, torch_compile_backend="aot_eager")
        count_syncs()
        # one evaluation sample: process 1 has no batch of its own and must still join every forward
        train("ddp-tied", steps=4, model=TiedClassifier, predict_length=1)
        train("fsdp-tied", fsdp="full_shard", steps=4, model=TiedClassifier, predict_length=1,
              fsdp_config={"transformer_layer_cls_to_wrap": ["Linear", "Embedding"]})
        checkpointable = lambda: CheckpointableClassifier(count_calls=True)  # noqa: E731
        train("ddp-ckpt", steps=4, model=checkpointable)
        train("fsdp-gc", fsdp="full_shard", steps=4, model=checkpointable, gradient_checkpointing=True)
        train("ddp-bf16", steps=4, bf16=True)
        train("fsdp-bf16", fsdp="full_shard", steps=4, bf16=True)
        Trainer._check_precision = lambda self: None  # test seam: fp16 on CPU (the scaler logic is the same)
        train("fp16", fsdp="full_shard", steps=4, fp16=True, model=lambda: OverflowInOneShard(dropout=0.3))
    elif mode == "resume":
        train("split", fsdp="full_shard", resume=True)
    elif mode == "resume-plain":  # one process, no FSDP, from the sharded checkpoint at step 4
        train("plain", resume=str(root / "split-copy" / "checkpoint-4"))
''')


def torchrun(script: Path, mode: str, root: Path, nproc: int = 2) -> None:
    tests_dir = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_LOG_LEVEL": "warning"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         str(script), mode, str(root), str(tests_dir)],
        capture_output=True, text=True, timeout=280, env=env, cwd=root,
    )
    assert result.returncode == 0, f"torchrun {mode} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def run(root: Path, name: str, rank: int = 0) -> dict:
    return json.loads((root / f"{name}-rank{rank}.json").read_text())


def weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(root / f"{name}.weights.pt", weights_only=True)


def losses(history: list[dict]) -> list[tuple[int, str, float]]:
    return [(e["step"], k, e[k]) for e in history for k in ("loss", "eval_loss", "grad_norm") if k in e]


def close(a: list[tuple[int, str, float]], b: list[tuple[int, str, float]]) -> bool:
    return [x[:2] for x in a] == [x[:2] for x in b] and all(
        abs(x[2] - y[2]) <= 1e-5 * max(1.0, abs(y[2])) for x, y in zip(a, b))


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if not k.endswith(("_runtime", "_per_second"))}
            for e in history if "train_runtime" not in e]


def test_fsdp_training_checkpoints_and_exact_resume(tmp_path: Path) -> None:
    script = tmp_path / "train_fsdp.py"
    script.write_text(SCRIPT)
    torchrun(script, "first", tmp_path)

    ddp, fsdp = run(tmp_path, "ddp"), run(tmp_path, "fsdp")
    assert fsdp["global_step"] == 8
    assert close(losses(fsdp["log_history"]), losses(ddp["log_history"]))
    assert losses(fsdp["log_history"]) == losses(run(tmp_path, "fsdp", 1)["log_history"])
    assert fsdp["events"] == ddp["events"]
    assert [sorted(e) for e in fsdp["log_history"]] == [sorted(e) for e in ddp["log_history"]]
    ddp_w, fsdp_w = weights(tmp_path, "ddp"), weights(tmp_path, "fsdp")
    assert fsdp_w.keys() == ddp_w.keys() == {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}
    assert all(torch.allclose(fsdp_w[k], ddp_w[k], atol=1e-5) for k in ddp_w)
    for other in ("zero2", "offload", "compiled"):
        assert close(losses(run(tmp_path, other)["log_history"]), losses(run(tmp_path, "ddp-4")["log_history"]))
    assert close(losses(run(tmp_path, "fsdp-ga")["log_history"]), losses(run(tmp_path, "ddp-ga")["log_history"]))
    # fp16: only process 1's gradient shard overflows at step 2, and both skip that step
    for r in (0, 1):
        logs = [e for e in run(tmp_path, "fp16", r)["log_history"] if "loss" in e]
        assert [(e["step"], e["skipped_optimizer_steps"]) for e in logs] == [(2, 1), (4, 0)]
    assert "scaler.pt" in {p.name for p in (tmp_path / "fp16" / "checkpoint-2").iterdir()}
    # tied weights: consolidated once, under the name a plain save uses, and equal to DDP's
    tied_ddp, tied_fsdp = weights(tmp_path, "ddp-tied"), weights(tmp_path, "fsdp-tied")
    assert tied_fsdp.keys() == tied_ddp.keys() == {"embed.weight", "body.weight", "body.bias"}
    assert all(torch.allclose(tied_fsdp[k], tied_ddp[k], atol=1e-5) for k in tied_ddp)
    assert close(losses(run(tmp_path, "fsdp-tied")["log_history"]), losses(run(tmp_path, "ddp-tied")["log_history"]))
    tied_predictions = [torch.tensor(run(tmp_path, n, r)["predictions"]) for n in ("ddp-tied", "fsdp-tied") for r in (0, 1)]
    assert all(p.shape == (1, 4) and torch.allclose(p, tied_predictions[0], atol=1e-5) for p in tied_predictions)
    # gradient checkpointing under FSDP: the block runs again in the backward, the training is the same
    gc, plain_ckpt = run(tmp_path, "fsdp-gc"), run(tmp_path, "ddp-ckpt")
    assert close(losses(gc["log_history"]), losses(plain_ckpt["log_history"]))
    assert gc["block_calls"] > plain_ckpt["block_calls"]
    # bf16: parameters gathered in bfloat16, gradients reduced in float32; close to DDP with autocast
    bf16_fsdp, bf16_ddp = losses(run(tmp_path, "fsdp-bf16")["log_history"]), losses(run(tmp_path, "ddp-bf16")["log_history"])
    assert [x[:2] for x in bf16_fsdp] == [x[:2] for x in bf16_ddp]
    assert all(abs(x[2] - y[2]) <= 2e-2 * max(1.0, abs(y[2])) for x, y in zip(bf16_fsdp, bf16_ddp))
    assert json.loads((tmp_path / "syncs-rank0.json").read_text()) == []
    assert json.loads((tmp_path / "syncs-rank1.json").read_text()) == []
    predictions = torch.tensor(fsdp["predictions"])
    assert predictions.shape == (9, 2)
    assert torch.allclose(predictions, torch.tensor(run(tmp_path, "fsdp", 1)["predictions"]))
    assert torch.allclose(predictions, torch.tensor(ddp["predictions"]), atol=1e-5)

    # sharded checkpoints: DCP directories, consolidated weights only in the final one
    run_dir = tmp_path / "fsdp"
    names = {p.name: {c.name for c in p.iterdir()} for p in run_dir.glob("checkpoint-*")}
    assert sorted(names, key=lambda n: int(n.split("-")[1])) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    for name, files in names.items():
        assert {"pytorch_model_fsdp_0", "optimizer_0", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth",
                "trainer_state.json", "training_args.json"} <= files, name
        assert "optimizer.pt" not in files
        assert ("model.safetensors" in files) == (name == "checkpoint-8"), name
    shards = sorted(p.name for p in (run_dir / "checkpoint-2" / "pytorch_model_fsdp_0").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    state = json.loads((run_dir / "checkpoint-8" / "trainer_state.json").read_text())
    ddp_state = json.loads((tmp_path / "ddp" / "checkpoint-8" / "trainer_state.json").read_text())
    assert sorted(state) == sorted(ddp_state) and state["global_step"] == 8
    only_model = {p.name for p in (tmp_path / "only-model" / "checkpoint-2").iterdir()}
    assert "model.safetensors" in only_model and "pytorch_model_fsdp_0" not in only_model

    # load_best_model_at_end reads the best checkpoint's shards, then consolidates them there (the final
    # model, which trackers such as W&B upload)
    best = Path(run(tmp_path, "best")["best_model_checkpoint"])
    assert best.name == "checkpoint-4" and not (tmp_path / "best" / "checkpoint-8" / "model.safetensors").exists()
    from safetensors.torch import load_file

    from helpers import TinyClassifier
    from tracklink.trainer.fsdp import load_sharded_model

    reference = TinyClassifier()
    load_sharded_model(reference, best)  # one process, no process group: DCP reads every shard
    best_w = weights(tmp_path, "best")
    assert all(torch.equal(best_w[k], v) for k, v in reference.state_dict().items())
    consolidated = load_file(str(best / "model.safetensors"))
    assert all(torch.equal(consolidated[k], v) for k, v in reference.state_dict().items())

    # resume in a new torchrun: the same run as the uninterrupted one
    assert run(tmp_path, "split")["global_step"] == 4
    import shutil

    shutil.copytree(tmp_path / "split", tmp_path / "split-copy")
    torchrun(script, "resume", tmp_path)
    resumed = run(tmp_path, "split")
    assert resumed["global_step"] == 8
    assert untimed(resumed["log_history"]) == untimed(fsdp["log_history"])
    split_w = weights(tmp_path, "split")
    assert all(torch.equal(split_w[k], fsdp_w[k]) for k in fsdp_w)

    # the sharded checkpoint also resumes in one process without FSDP (DCP reshards)
    torchrun(script, "resume-plain", tmp_path, nproc=1)
    plain = run(tmp_path, "plain")
    assert plain["global_step"] == 8
    assert [e["step"] for e in plain["log_history"] if "loss" in e] == [2, 4, 6, 8]
    assert untimed(plain["log_history"])[:3] == untimed(fsdp["log_history"])[:3]  # restored up to step 4


# -- bad input: every error is raised before training, names the value and what is accepted ------------

from helpers import ClassificationDataset, TinyClassifier  # noqa: E402
from tracklink.trainer import Trainer, TrainingArguments  # noqa: E402

BAD_ARGUMENTS = [
    ({"fsdp": "zero3"}, "'zero3'", "'full_shard'"),
    ({"fsdp": "full_shard shard_grad_op"}, "'full_shard' and 'shard_grad_op'", "one sharding strategy"),
    ({"fsdp": "auto_wrap"}, "'auto_wrap'", "a sharding strategy"),
    ({"fsdp": 3}, "fsdp=3", "space-separated string"),
    ({"fsdp": ["full_shard", 7]}, "7", "space-separated string"),
    ({"fsdp": "full_shard", "fsdp_config": {"sharding": "x"}}, "'sharding'", "transformer_layer_cls_to_wrap"),
    ({"fsdp": "full_shard", "fsdp_config": {"min_num_params": -1}}, "-1", "integer >= 0"),
    ({"fsdp": "full_shard", "fsdp_config": {"reshard_after_forward": "yes"}}, "'yes'", "True or False"),
    ({"fsdp": "full_shard", "fsdp_config": {"version": 1}}, "1", "version 2"),
    ({"fsdp": "full_shard", "fsdp_config": {"transformer_layer_cls_to_wrap": []}}, "[]", "class name"),
    ({"fsdp": "full_shard", "fsdp_config": "no-such-config.json"}, "no-such-config.json", "JSON file"),
    ({"fsdp": "full_shard", "fsdp_config": 5}, "fsdp_config=5", "a dict"),
]


@pytest.mark.parametrize(("kwargs", "names", "accepted"), BAD_ARGUMENTS, ids=[str(b[0]) for b in BAD_ARGUMENTS])
def test_bad_fsdp_arguments(tmp_path: Path, kwargs: dict, names: str, accepted: str) -> None:
    with pytest.raises(ValueError) as info:
        TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", **kwargs)
    assert names in str(info.value) and accepted in str(info.value)
    assert not (tmp_path / "out").exists()


def test_fsdp_option_forms() -> None:
    def options(value: object) -> list[str]:
        return TrainingArguments(output_dir="x", report_to="none", fsdp=value).fsdp

    assert options("") is options(None) is options(False) is None  # transformers v5's default
    assert options(True) == ["full_shard"]
    assert options("SHARD_GRAD_OP auto_wrap") == ["shard_grad_op", "auto_wrap"]
    assert options(["hybrid_shard", "offload"]) == ["hybrid_shard", "offload"]
    assert options("offload") == ["full_shard", "offload"]
    config = TrainingArguments(output_dir="x", report_to="none", fsdp="full_shard",
                               fsdp_config={"fsdp_transformer_layer_cls_to_wrap": "Block, Embedding"}).fsdp_config
    assert config == {"transformer_layer_cls_to_wrap": ["Block", "Embedding"]}


def _fsdp_trainer(tmp_path: Path, **kwargs: object) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", max_steps=2, use_cpu=True,
                             fsdp="full_shard", **kwargs.pop("args", {}))  # type: ignore[arg-type]
    return Trainer(model=TinyClassifier(), args=args, train_dataset=ClassificationDataset(), **kwargs)  # type: ignore[arg-type]


def test_fsdp_without_torchrun_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"fsdp='full_shard' needs torch.distributed: launch the script with torchrun"):
        _fsdp_trainer(tmp_path)
    assert not (tmp_path / "out").exists()


def test_fsdp_with_user_optimizer_fails(tmp_path: Path, one_process_group: object) -> None:
    model = TinyClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"fsdp='full_shard' cannot be combined with Trainer\(optimizers=...\)"):
        _fsdp_trainer(tmp_path, optimizers=(optimizer, None))


def test_fsdp_unknown_layer_class_fails_at_construction(tmp_path: Path, one_process_group: object) -> None:
    with pytest.raises(ValueError) as info:
        _fsdp_trainer(tmp_path, args={"fsdp_config": {"transformer_layer_cls_to_wrap": ["GPT2Block"]}})
    message = str(info.value)
    assert "'GPT2Block'" in message and "TinyClassifier" in message and "Linear" in message
    assert not (tmp_path / "out").exists()


def test_fsdp_in_one_torchrun_process(tmp_path: Path, one_process_group: object) -> None:
    """torchrun --nproc_per_node 1: FSDP over a group of one trains, checkpoints and consolidates."""
    trainer = _fsdp_trainer(tmp_path, args={"save_steps": 2, "logging_steps": 1})
    trainer.train()
    final = tmp_path / "out" / "checkpoint-2"
    assert {"pytorch_model_fsdp_0", "optimizer_0", "model.safetensors", "trainer_state.json"} <= {
        p.name for p in final.iterdir()}
    from safetensors.torch import load_file

    saved = load_file(str(final / "model.safetensors"))
    assert set(saved) == {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}


def test_fsdp_scalar_parameters_fail_at_construction(tmp_path: Path, one_process_group: object) -> None:
    from helpers import RegressionDataset, RegressionModel

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", max_steps=2, use_cpu=True,
                             fsdp="full_shard")
    with pytest.raises(ValueError) as info:
        Trainer(model=RegressionModel(), args=args, train_dataset=RegressionDataset())
    assert "'a', 'b'" in str(info.value) and "1-element vectors" in str(info.value)
    assert not (tmp_path / "out").exists()
