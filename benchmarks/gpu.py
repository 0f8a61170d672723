"""Training speed, peak memory and host syncs on one GPU: tracklink's Trainer against transformers'
Trainer and a hand-written PyTorch loop.

All three systems train the same transformers Llama-style causal LM (built from a config, no download;
same seed, so the same initial weights) on the same synthetic token batches, with bf16 autocast, AdamW
(lr 5e-5, betas (0.9, 0.999), eps 1e-8, no weight decay; torch's own implementation in all three, so
transformers gets ``optim="adamw_torch"`` unless ``--transformers-optim`` says otherwise), a linear
schedule, gradient clipping at 1.0 and a log every ``--logging-steps`` steps; no evaluation, no
checkpoints, ``report_to="none"``, no progress bar. Each system runs once with ``torch.compile`` off and
once with it on (``torch_compile=True`` in both trainers, ``torch.compile(model)`` in the hand loop).

Every (compile setting, system) pair runs in a fresh interpreter, so one run's peak memory, compiled
graphs or allocator state cannot leak into another's. Per run it records:

* **steps/s** over a timed window after the warm-up steps (which include compilation), with
  ``torch.cuda.synchronize()`` at both ends of the window;
* **peak memory**: ``torch.cuda.max_memory_allocated()`` from the start of the run to the end of the
  timed window;
* **syncs per quiet step**: after the timed window (so the timer's own ``synchronize`` calls are not
  seen), a few more steps run under ``tests/syncs.py``'s ``counting_syncs`` (host calls that force a
  sync: ``.item()``, ``bool(tensor)``, ``.cpu()``, ...), and on CUDA also under
  ``torch.cuda.set_sync_debug_mode("warn")`` (every synchronizing CUDA operation, wherever it comes
  from); only steps that do not log count.

The table shows absolute numbers and each trainer's ratio to the hand loop of the same compile setting
(speed: steps/s ratio, above 1 is faster; memory: peak ratio). The JSON goes to
``benchmarks/results/gpu.json`` (``--out`` elsewhere) with the device name and the torch, transformers
and tracklink versions. Nothing is asserted.

    python benchmarks/gpu.py                 # on a CUDA machine: about 3-4 minutes, at most --budget seconds
    python benchmarks/gpu.py --quick         # fewer steps, smaller budget
    python benchmarks/gpu.py --compile off   # only one compile setting
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu.json   # smoke run of the whole path on CPU

Without a CUDA GPU (and without ``--device cpu``) it prints "no CUDA GPU: skipped", writes nothing and
exits 0. The whole run keeps to ``--budget`` seconds (default 270): a configuration that cannot start
with enough time left, or that overruns, is skipped with a note instead. On CPU the model is tiny and
the results file is only written with an explicit ``--out`` (CPU numbers must never replace GPU ones).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "gpu.json"
SYSTEMS = ("hand_loop", "tracklink", "transformers")
BASELINE = "hand_loop"
LEARNING_RATE = 5e-5
MODEL_SEED = 0
DATA_SEED = 1

#: model presets: a Llama-style decoder from a config; "small" makes a step GPU-bound on an H100/H200
#: (about 140M parameters, 8 x 1024 tokens per step) while keeping torch.compile's warm-up short
MODELS: dict[str, dict[str, int]] = {
    "small": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=6,
                  num_attention_heads=16, batch=8, seq_len=1024),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, batch=4, seq_len=32),
}


@dataclass
class Plan:
    """The step layout of one run: warm-up, timed window, then the sync-count window."""

    warmup: int
    timed: int
    count: int
    logging_steps: int

    @property
    def timed_end(self) -> int:
        return self.warmup + self.timed

    @property
    def count_steps(self) -> list[int]:
        """Steps whose syncs are counted (only those that do not log count towards the average)."""
        return list(range(self.timed_end + 1, self.timed_end + self.count + 1))

    @property
    def total(self) -> int:
        # one extra step: counting stops when it begins, so the last counted step's end-of-step work
        # (log, save decision) is inside the window and train()'s own wrap-up is not
        return self.timed_end + self.count + 1


@dataclass
class Spec:
    """What one child interpreter runs."""

    system: str
    compile: bool
    device: str
    model: str
    plan: Plan
    compile_backend: str | None
    compile_mode: str | None
    transformers_optim: str


PLANS = {  # (device, quick): plan
    ("cuda", False): Plan(warmup=20, timed=100, count=10, logging_steps=50),
    ("cuda", True): Plan(warmup=10, timed=40, count=8, logging_steps=25),
    ("cpu", False): Plan(warmup=5, timed=30, count=6, logging_steps=10),
    ("cpu", True): Plan(warmup=3, timed=12, count=4, logging_steps=5),
}


# -- the child: one system, one compile setting --------------------------------------------------------


class Recorder:
    """Step hooks shared by the three systems: the timer, the peak memory and the sync-count window."""

    def __init__(self, plan: Plan, device: str) -> None:
        import torch

        self.torch = torch
        self.plan = plan
        self.cuda = device == "cuda"
        self.step = 0
        self.marks: dict[int, float] = {}
        self.peak_bytes: int | None = None
        self.reserved_bytes: int | None = None
        self.host_calls: list[tuple[int, str]] = []
        self.device_syncs: list[int] = []
        self._window: contextlib.ExitStack | None = None
        self.started = time.perf_counter()

    def step_begin(self, step: int) -> None:
        self.step = step
        if step == self.plan.timed_end + 1:
            self._open_window()
        elif step == self.plan.total:
            self.close_window()

    def step_end(self, step: int) -> None:
        if step in (self.plan.warmup, self.plan.timed_end):
            if self.cuda:
                self.torch.cuda.synchronize()
            self.marks[step] = time.perf_counter()
        if step == self.plan.timed_end and self.cuda:
            self.peak_bytes = self.torch.cuda.max_memory_allocated()
            self.reserved_bytes = self.torch.cuda.max_memory_reserved()

    def _open_window(self) -> None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from syncs import counting_syncs

        stack = contextlib.ExitStack()
        stack.enter_context(counting_syncs(lambda method, caller: self.host_calls.append((self.step, f"{method} {caller}"))))
        if self.cuda:
            stack.enter_context(self._device_sync_warnings())
        self._window = stack

    @contextlib.contextmanager
    def _device_sync_warnings(self) -> Iterator[None]:
        """Count CUDA's own report of every synchronizing operation (``set_sync_debug_mode("warn")``)."""
        torch = self.torch
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            shown = warnings.showwarning

            def show(message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
                if "synchronizing" in str(message):
                    self.device_syncs.append(self.step)
                else:
                    shown(message, category, filename, lineno, *args, **kwargs)

            warnings.showwarning = show
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous)

    def close_window(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None

    def result(self, spec: Spec) -> dict[str, Any]:
        plan = self.plan
        if plan.warmup not in self.marks or plan.timed_end not in self.marks:
            raise RuntimeError(f"the run ended before step {plan.timed_end}: marks {sorted(self.marks)}")
        seconds = self.marks[plan.timed_end] - self.marks[plan.warmup]
        quiet = {s for s in plan.count_steps if s % plan.logging_steps != 0}
        host = [site for step, site in self.host_calls if step in quiet]
        model = MODELS[spec.model]
        steps_per_s = plan.timed / seconds
        out: dict[str, Any] = {
            "steps_per_s": steps_per_s,
            "ms_per_step": 1e3 * seconds / plan.timed,
            "tokens_per_s": steps_per_s * model["batch"] * model["seq_len"],
            "warmup_s": self.marks[plan.warmup] - self.started,
            "peak_memory_gib": None if self.peak_bytes is None else self.peak_bytes / 2**30,
            "peak_reserved_gib": None if self.reserved_bytes is None else self.reserved_bytes / 2**30,
            "host_syncs_per_quiet_step": len(host) / len(quiet),
            "device_syncs_per_quiet_step": (
                sum(1 for s in self.device_syncs if s in quiet) / len(quiet) if self.cuda else None
            ),
            "quiet_steps_counted": len(quiet),
            "host_sync_sites": dict(Counter(host).most_common(5)),
        }
        return out


class TokenData:
    """Random token sequences (``input_ids`` and ``labels``), exactly ``batches`` batches long."""

    def __init__(self, batches: int, batch: int, seq_len: int, vocab_size: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(DATA_SEED)
        self.ids = torch.randint(0, vocab_size, (batches * batch, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def build_model(name: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes: dict[str, Any] = {k: v for k, v in MODELS[name].items() if k not in ("batch", "seq_len")}
    sizes.update(num_key_value_heads=sizes["num_attention_heads"], max_position_embeddings=MODELS[name]["seq_len"],
                 tie_word_embeddings=False, attn_implementation="sdpa")
    config = LlamaConfig(**sizes)
    torch.manual_seed(MODEL_SEED)
    return LlamaForCausalLM(config).float()


class Unsupported(Exception):
    """The system cannot run this configuration (e.g. a trainer without ``torch_compile``)."""


def run_hand_loop(spec: Spec, model: Any, data: TokenData, recorder: Recorder) -> None:
    import torch

    device = torch.device(spec.device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.0)
    total = spec.plan.total
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (total - s) / total))
    loader: Any = torch.utils.data.DataLoader(data, batch_size=MODELS[spec.model]["batch"], shuffle=True,  # type: ignore[arg-type]
                                         drop_last=True, pin_memory=spec.device == "cuda",
                                         generator=torch.Generator().manual_seed(42))
    forward = model
    if spec.compile:
        options: dict[str, Any] = {"backend": spec.compile_backend or "inductor"}
        if spec.compile_mode:
            options["mode"] = spec.compile_mode
        forward = torch.compile(model, **options)
    running = torch.zeros((), device=device)
    step = 0
    for batch in loader:
        step += 1
        recorder.step_begin(step)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()
        if step % spec.plan.logging_steps == 0:
            running.item()  # the log: the only read of a device value
            running.zero_()
        recorder.step_end(step)
        if step >= total:
            break


def _trainer_kwargs(spec: Spec, output_dir: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir, report_to="none", disable_tqdm=True, max_steps=spec.plan.total,
        per_device_train_batch_size=MODELS[spec.model]["batch"], learning_rate=LEARNING_RATE,
        logging_steps=spec.plan.logging_steps, save_strategy="no", eval_strategy="no", bf16=True,
        use_cpu=spec.device == "cpu", dataloader_pin_memory=spec.device == "cuda", dataloader_drop_last=True,
    )
    if spec.compile:
        kwargs["torch_compile"] = True
        if spec.compile_backend:
            kwargs["torch_compile_backend"] = spec.compile_backend
        if spec.compile_mode:
            kwargs["torch_compile_mode"] = spec.compile_mode
    return kwargs


def _callbacks(base: type, recorder: Recorder) -> list[Any]:
    class Steps(base):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            recorder.step_begin(state.global_step + 1)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            recorder.step_end(state.global_step)

    return [Steps()]


def _arguments(cls: Callable[..., Any], kwargs: dict[str, Any], system: str) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as exc:
        if "torch_compile" in str(exc):
            raise Unsupported(f"{system}'s TrainingArguments does not accept torch_compile: {exc}") from exc
        raise


def run_tracklink(spec: Spec, model: Any, data: TokenData, recorder: Recorder) -> None:
    from tracklink import TrainerCallback
    from tracklink.trainer import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = _arguments(TrainingArguments, _trainer_kwargs(spec, out), "tracklink")
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=_callbacks(TrainerCallback, recorder))
        trainer.train()


def run_transformers(spec: Spec, model: Any, data: TokenData, recorder: Recorder) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        kwargs = {**_trainer_kwargs(spec, out), "optim": spec.transformers_optim}
        args = _arguments(TrainingArguments, kwargs, "transformers")
        trainer = Trainer(model=model, args=args, train_dataset=data,
                          callbacks=_callbacks(TrainerCallback, recorder))
        trainer.train()


RUNNERS: dict[str, Callable[[Spec, Any, TokenData, Recorder], None]] = {
    "hand_loop": run_hand_loop, "tracklink": run_tracklink, "transformers": run_transformers,
}


def child(spec: Spec, result_path: Path) -> int:
    """Run one configuration in this (fresh) interpreter and write its measurements to ``result_path``."""
    import logging

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if spec.device == "cpu":
        torch.set_num_threads(1)  # a tiny model: extra intra-op threads only add noise on a shared machine
    else:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    recorder = Recorder(spec.plan, spec.device)
    model = build_model(spec.model)
    info: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
    data = TokenData(spec.plan.total, MODELS[spec.model]["batch"], MODELS[spec.model]["seq_len"],
                     MODELS[spec.model]["vocab_size"])
    try:
        RUNNERS[spec.system](spec, model, data, recorder)
    except Unsupported as exc:
        result_path.write_text(json.dumps({**info, "skipped": str(exc)}))
        return 0
    finally:
        recorder.close_window()
    info.update(recorder.result(spec))
    info["device_name"] = torch.cuda.get_device_name() if spec.device == "cuda" else _cpu_name()
    result_path.write_text(json.dumps(info))
    return 0


# -- the parent: run every configuration, print and write -------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    visible = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    env["CUDA_VISIBLE_DEVICES"] = visible  # one GPU: transformers' Trainer would wrap several in DataParallel
    env.setdefault("TRACKLINK_LOG_LEVEL", "warning")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_child(spec: Spec, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(spec)),
                   "--child-result", str(result_path)]
        # its own process group, so that a run stopped at the budget takes its compile workers with it
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=_child_env(), start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return {"skipped": f"stopped after {timeout:.0f} s: the time budget ran out"}
        if process.returncode != 0 or not result_path.exists():
            return {"error": f"exit {process.returncode}", "output_tail": (output or "")[-1500:]}
        return dict(json.loads(result_path.read_text()))


def ratios(configs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Each trainer against the hand loop of the same compile setting."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for setting, runs in configs.items():
        base = runs.get(BASELINE, {})
        for system in SYSTEMS:
            run = runs.get(system, {})
            if system == BASELINE or "steps_per_s" not in run or "steps_per_s" not in base:
                continue
            memory = None
            if run.get("peak_memory_gib") and base.get("peak_memory_gib"):
                memory = run["peak_memory_gib"] / base["peak_memory_gib"]
            out.setdefault(setting, {})[f"{system}/{BASELINE}"] = {
                "steps_per_s": run["steps_per_s"] / base["steps_per_s"], "peak_memory": memory,
            }
    return out


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(results: dict[str, Any]) -> str:
    header = ["compile", "system", "steps/s", "ms/step", "peak GiB", "host syncs", "device syncs",
              "speed vs hand", "memory vs hand"]
    rows = [header]
    for setting, runs in results["configs"].items():
        label = setting.removeprefix("compile_")
        for system, run in runs.items():
            ratio = results["ratios"].get(setting, {}).get(f"{system}/{BASELINE}", {})
            if "steps_per_s" not in run:
                rows.append([label, system] + ["-"] * (len(header) - 2))
                continue
            rows.append([
                label, system, _fmt(run["steps_per_s"], ".2f"), _fmt(run["ms_per_step"], ".2f"),
                _fmt(run["peak_memory_gib"], ".2f"), _fmt(run["host_syncs_per_quiet_step"], ".2f"),
                _fmt(run["device_syncs_per_quiet_step"], ".2f"),
                "1.00x" if system == BASELINE else _fmt(ratio.get("steps_per_s"), ".3f") + "x",
                ("1.00x" if run["peak_memory_gib"] else "-") if system == BASELINE
                else (_fmt(ratio.get("peak_memory"), ".3f") + "x" if ratio.get("peak_memory") else "-"),
            ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v)
    lines.append(f"({results['device_name']}; {versions}; model {results['model']['name']} "
                 f"{results['model'].get('parameters', '?')} parameters, batch {results['model']['batch']} x "
                 f"{results['model']['seq_len']} tokens, bf16 autocast; syncs = per step that does not log; "
                 f"speed vs hand = steps/s ratio, above 1 is faster)")
    lines += [f"note: {n}" for n in results["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default; skipped without a GPU) or cpu (a smoke run with a tiny model)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and a smaller time budget")
    parser.add_argument("--compile", default=None,
                        help="comma-separated compile settings: off, on (default: off,on on cuda, off on cpu)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: " + ", ".join(SYSTEMS))
    parser.add_argument("--model", choices=tuple(MODELS), default=None,
                        help="model preset (default: small on cuda, tiny on cpu)")
    parser.add_argument("--transformers-optim", default="adamw_torch",
                        help="transformers' optim (default adamw_torch, the same AdamW as the others; "
                             "transformers' own default is adamw_torch_fused)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 270, 180 with --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default on cuda: {DEFAULT_OUT.relative_to(HERE.parent)}; "
                             "on cpu nothing is written without --out)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)

    if ns.child:
        raw = json.loads(ns.child)
        raw["plan"] = Plan(**raw["plan"])
        return child(Spec(**raw), ns.child_result)

    started = time.monotonic()
    import torch

    if ns.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: skipped (nothing measured, nothing written; `--device cpu --quick` runs a smoke test)")
        return 0
    if importlib.util.find_spec("transformers") is None:
        print("transformers is not installed: the model and one of the compared systems need it (pip install transformers)")
        return 2
    settings = [s.strip() for s in (ns.compile or ("off,on" if ns.device == "cuda" else "off")).split(",") if s.strip()]
    systems = [s.strip() for s in ns.systems.split(",") if s.strip()]
    for setting in settings:
        if setting not in ("off", "on"):
            parser.error(f"--compile: unknown setting {setting!r}; accepted: off, on")
    for system in systems:
        if system not in SYSTEMS:
            parser.error(f"--systems: unknown system {system!r}; accepted: {', '.join(SYSTEMS)}")
    if BASELINE not in systems:
        systems.insert(0, BASELINE)
    budget = ns.budget if ns.budget is not None else (180.0 if ns.quick else 270.0)
    deadline = started + budget
    model = ns.model or ("small" if ns.device == "cuda" else "tiny")
    plan = PLANS[(ns.device, ns.quick)]
    # the least time worth starting a run with: import, model, warm-up (with compilation) and the steps
    min_start = {"off": 20.0, "on": 60.0} if ns.device == "cuda" else {"off": 5.0, "on": 20.0}

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": ns.device,
        "device_name": "a CUDA GPU" if ns.device == "cuda" else _cpu_name(),  # the runs report the GPU's name
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "tracklink": _version("tracklink"), "python": platform.python_version()},
        "command": " ".join(["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": {"name": model, **MODELS[model], "architecture": "LlamaForCausalLM (sdpa attention)"},
        "plan": asdict(plan),
        "settings": {"precision": "bf16 autocast", "optimizer": "torch AdamW, lr 5e-5, no weight decay",
                     "transformers_optim": ns.transformers_optim, "max_grad_norm": 1.0,
                     "compile_backend": ns.compile_backend or "inductor", "compile_mode": ns.compile_mode},
        "budget_s": budget,
        "configs": {},
        "notes": [],
    }
    print(f"{results['device_name']}: {len(settings) * len(systems)} runs, budget {budget:.0f} s", flush=True)
    for setting in settings:
        for system in systems:
            key = f"compile_{setting}"
            remaining = deadline - time.monotonic()
            if remaining < min_start[setting]:
                run: dict[str, Any] = {"skipped": f"not started: {max(0.0, remaining):.0f} s of the budget left"}
            else:
                spec = Spec(system=system, compile=setting == "on", device=ns.device, model=model, plan=plan,
                            compile_backend=ns.compile_backend, compile_mode=ns.compile_mode,
                            transformers_optim=ns.transformers_optim)
                began = time.monotonic()
                run = run_child(spec, timeout=remaining)
                run["wall_s"] = time.monotonic() - began
            results["configs"].setdefault(key, {})[system] = run
            if "steps_per_s" not in run:
                why = run.get("skipped") or f"{run.get('error')}: {run.get('output_tail', '')[-300:]}"
                results["notes"].append(f"compile {setting}, {system}: {why}")
            state = (f"{run['steps_per_s']:.2f} steps/s" if "steps_per_s" in run
                     else run.get("skipped") or run.get("error"))
            print(f"  compile {setting:<3} {system:<12} {state} ({run.get('wall_s', 0.0):.0f} s)", flush=True)
            if "parameters" in run:
                results["model"]["parameters"] = run["parameters"]
            if "device_name" in run:
                results["device_name"] = run["device_name"]
    results["ratios"] = ratios(results["configs"])
    results["wall_s"] = time.monotonic() - started
    print()
    print(table(results))
    out = ns.out if ns.out is not None else (DEFAULT_OUT if ns.device == "cuda" else None)
    if out is None:
        print("\n(cpu smoke run: nothing written; pass --out PATH to keep the JSON)")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
