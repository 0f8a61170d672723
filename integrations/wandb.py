"""Weights & Biases tracker (``report_to="wandb"``, ``WandbCallback``).

What is logged where (transformers' names):

* ``run.config``: the redacted hyper-parameters (training arguments over the model config, plus
  ``model/num_parameters``); the run is named ``TrainingArguments.run_name`` (a trial name and group
  during a hyper-parameter search);
* history: every numeric log under ``train/...``, ``eval/...``, ``test/...`` plus ``train/global_step``,
  which ``define_metric`` makes the x-axis of every chart (``step_sync``); strings go to the same row;
* ``run.summary``: ``train_runtime``, ``train_samples_per_second``, ``train_steps_per_second``,
  ``train_loss`` and ``total_flos`` (the end-of-training summary, as transformers does);
* artifacts (``WANDB_LOG_MODEL``): ``checkpoint`` logs every checkpoint directory the trainer wrote as
  artifact ``model-<run id>`` (type ``model``, aliases ``epoch_<e>`` and ``checkpoint_global_step_<n>``),
  and ``end``/``checkpoint`` log the final model (alias ``final_model``) from the best or last
  checkpoint, or from a safetensors save of the model when no checkpoint holds it. Secrets in configs
  and text files are masked; optimizer, scheduler and RNG states are left out of the final model;
* gradients/parameters histograms with ``wandb.watch`` when ``WANDB_WATCH`` asks for them;
* media values in the same history row as the metrics of their step: ``tracklink.Image`` as
  ``wandb.Image`` (from the PNG tracklink encoded, with its caption), ``Histogram`` as ``wandb.Histogram``
  (tracklink's bins; W&B takes at most 512), ``Table`` as ``wandb.Table`` (image cells as images),
  ``Text`` in the row; a figure as an image; ``File`` values as artifacts named after their key (type
  ``file``, alias ``step_<n>``). Keys W&B reserves (``_step``, ``_runtime``, ... and tracklink's step metric
  ``train/global_step``) take no media value;
* the exit code: 0 on success, 1 when training raised, 130/143 when interrupted/terminated.

Variables: ``WANDB_PROJECT`` (default ``huggingface``), ``WANDB_LOG_MODEL`` (``end``, ``checkpoint``,
``false``; default ``false``), ``WANDB_WATCH`` (``gradients``, ``all``, ``parameters``, ``false``; default
``false``), ``WANDB_DISABLED`` (truthy: skip the tracker) and the SDK's own (``WANDB_MODE``, ``WANDB_DIR``,
``WANDB_API_KEY``, ...). A run that already exists (``wandb.init`` called by the user) is used and
left open; a run tracklink started is finished. A resumed training re-attaches to its run
(``wandb.init(id=..., resume="allow")``) and continues at the restored ``global_step``.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from tracklink.envvars import EnvVar, truthy
from tracklink.media import Histogram, Image, Media, Table, TempFiles
from tracklink.modelfiles import save_model
from tracklink.redact import current_secrets, is_secret_key, redact_text, redacted_upload
from tracklink.tracker import RunEnd, RunInfo, Tracker

__all__ = ["WandbCallback"]

logger = logging.getLogger("tracklink")

LOG_MODEL_CHOICES = ("end", "checkpoint", "false")
WATCH_CHOICES = ("gradients", "all", "parameters", "false")
_DEPRECATED_TRUE = ("true", "1", "yes", "on")
#: Files of a checkpoint that restore training, not the model: left out of the final-model artifact.
_TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state", "optimizer_0")
_SHARDED_MODEL = "pytorch_model_fsdp_0"  # FSDP's model shards, redundant next to a consolidated model.safetensors


def _is_sharded(model: Any) -> bool:
    return any(cls.__name__ == "FSDPModule" for cls in type(model).__mro__)


def parse_log_model(value: str | None, *, warn: bool = True) -> str:
    """``WANDB_LOG_MODEL`` as ``end``, ``checkpoint`` or ``false`` (``ValueError`` for anything else)."""
    text = (value or "").strip().lower() or "false"
    if text in LOG_MODEL_CHOICES:
        return text
    if text in _DEPRECATED_TRUE:
        if warn:
            warnings.warn(
                f"WANDB_LOG_MODEL={value!r} is deprecated; use WANDB_LOG_MODEL='end' (what it means) or "
                "'checkpoint'", FutureWarning, stacklevel=3,
            )
        return "end"
    raise ValueError(
        f"WANDB_LOG_MODEL={value!r} is not accepted; accepted values: {', '.join(LOG_MODEL_CHOICES)} "
        f"(deprecated: {', '.join(_DEPRECATED_TRUE)} mean 'end')"
    )


def parse_watch(value: str | None, *, warn: bool = True) -> str:
    """``WANDB_WATCH`` as ``gradients``, ``all``, ``parameters`` or ``false``."""
    text = (value or "").strip().lower() or "false"
    if text not in WATCH_CHOICES:
        raise ValueError(f"WANDB_WATCH={value!r} is not accepted; accepted values: {', '.join(WATCH_CHOICES)}")
    return text


def _netrc_has_key(env: Mapping[str, str]) -> bool:
    """Whether the netrc file holds a W&B API key (read directly: never prompts)."""
    home = env.get("HOME") or os.path.expanduser("~")
    path = env.get("NETRC") or os.path.join(home, ".netrc")
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def _argv_has_secret(argv: list[str]) -> bool:
    """Whether the command line carries a secret (``--hub_token X``, a URL password, a secret value)."""
    secrets = current_secrets()
    for arg in argv:
        if arg.startswith("-") and is_secret_key(arg.lstrip("-").split("=", 1)[0].replace("-", "_")):
            return True
        if redact_text(arg, secrets) != arg:
            return True
    return False


class WandbCallback(Tracker):
    """Logs to Weights & Biases (see the module documentation for what goes where)."""

    name = "wandb"
    init_kwargs_target = "wandb.init() (e.g. entity, tags, group, notes)"
    sdk = "wandb"
    sdk_min_version = "0.16"
    sdk_module = "wandb"
    extra = "wandb"
    media = frozenset({"image", "histogram", "table"})
    media_reserved = ("_*", "train/global_step")
    max_histogram_bins = 512  # wandb.Histogram.MAX_LENGTH
    env_vars: ClassVar[tuple[EnvVar, ...]] = (
        EnvVar("WANDB_PROJECT", "huggingface", "W&B project of the run."),
        EnvVar("WANDB_LOG_MODEL", "false", "Upload model artifacts: 'checkpoint' (every checkpoint and the "
               "final model), 'end' (the final model) or 'false'. true/1/yes/on mean 'end' (deprecated).",
               choices=LOG_MODEL_CHOICES),
        EnvVar("WANDB_WATCH", "false", "wandb.watch the model: 'gradients', 'all', 'parameters' or 'false'.",
               choices=WATCH_CHOICES),
        EnvVar("WANDB_DISABLED", None, "A true value (1/true/yes/on) turns the tracker off (deprecated in "
               "transformers; TRACKLINK_DISABLE=wandb does the same)."),
        EnvVar("WANDB_API_KEY", None, "API key (or `wandb login`, which writes ~/.netrc).", secret=True,
               read_by="sdk"),
        EnvVar("WANDB_MODE", "online", "online, offline or disabled; offline writes runs to sync later.",
               read_by="sdk", choices=("online", "offline", "disabled", "shared", "dryrun", "run")),
        EnvVar("WANDB_DIR", "./wandb", "Directory for run files.", read_by="sdk"),
        EnvVar("WANDB_ENTITY", None, "User or team that owns the run.", read_by="sdk"),
        EnvVar("WANDB_NAME", None, "Run name (TrainingArguments.run_name wins when set).", read_by="sdk"),
        EnvVar("WANDB_RUN_ID", None, "Id of the run to create or resume (a resumed training uses the id "
               "stored in its checkpoint instead).", read_by="sdk"),
        EnvVar("WANDB_RESUME", None, "SDK resume policy for WANDB_RUN_ID (allow, must, never, auto).",
               read_by="sdk", choices=("allow", "must", "never", "auto")),
        EnvVar("WANDB_BASE_URL", "https://api.wandb.ai", "W&B server (self-hosted instances).", read_by="sdk", kind="url"),
        EnvVar("WANDB_SILENT", None, "true: no console output from the SDK.", read_by="sdk", kind="bool"),
        EnvVar("WANDB_CONSOLE", "auto", "off: do not capture stdout/stderr into the run.", read_by="sdk", choices=("auto", "off", "wrap", "redirect", "wrap_raw", "wrap_emu")),
    )

    def __init__(self) -> None:
        self._log_model = parse_log_model(os.environ.get("WANDB_LOG_MODEL"))
        self._watch = parse_watch(os.environ.get("WANDB_WATCH"))
        self._run: Any = None
        self._owns_run = False
        self._watched: Any = None
        self._last_metrics: dict[str, float] = {}
        self._num_parameters: Any = None

    # -- declarations -------------------------------------------------------------------------

    @classmethod
    def ready(cls, env: Mapping[str, str]) -> str | None:
        if env.get("WANDB_MODE", "").strip().lower() in ("offline", "disabled", "dryrun"):
            return None
        if env.get("WANDB_API_KEY") or _netrc_has_key(env):
            return None
        return ("no W&B API key (WANDB_API_KEY, or a ~/.netrc entry written by `wandb login`) and "
                "WANDB_MODE is not offline")

    @classmethod
    def disabled_by(cls, env: Mapping[str, str]) -> str | None:
        return "disabled by WANDB_DISABLED" if truthy(env.get("WANDB_DISABLED")) else None

    @classmethod
    def env_problems(cls, env: Mapping[str, str]) -> list[str]:
        parsers = {"WANDB_LOG_MODEL": parse_log_model, "WANDB_WATCH": parse_watch}
        # an empty value counts as unset (the SDK's own reading)
        problems = [p for var in cls.env_vars if var.name not in parsers and (env.get(var.name) or "").strip()
                    and (p := var.problem(env))]
        for name, parse in parsers.items():
            try:
                parse(env.get(name), warn=False)
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    @property
    def uploads_checkpoints(self) -> bool:
        return self._log_model == "checkpoint"

    # -- lifecycle ------------------------------------------------------------------------------

    def setup(self, run: RunInfo) -> None:
        wandb = self.import_sdk()
        self._last_metrics = {}
        self._num_parameters = run.config.get("model/num_parameters")
        resume_id = (run.resume or {}).get("run_id")
        if wandb.run is not None:  # the user's own run: use it, never finish it
            self._run, self._owns_run = wandb.run, False
            if resume_id and resume_id != self._run.id:
                logger.warning("tracklink: W&B run %s already exists; logging there instead of resuming run %s",
                               self._run.id, resume_id)
        else:
            self._run, self._owns_run = wandb.init(**self._init_args(run, wandb)), True
        self._run.config.update(run.config, allow_val_change=True)
        self._run.define_metric("train/global_step")
        self._run.define_metric("*", step_metric="train/global_step", step_sync=True)
        if self._watch != "false" and run.model is not None:
            log_freq = max(100, int(getattr(run.args, "logging_steps", 0) or 0))
            self._run.watch(run.model, log=self._watch, log_freq=log_freq)
            self._watched = run.model

    def _init_args(self, run: RunInfo, wandb: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"project": run.project or os.environ.get("WANDB_PROJECT") or "huggingface"}
        if run.is_hyper_param_search and run.trial_name:
            args.update(name=str(run.trial_name), group=run.group or getattr(run.args, "run_name", None) or run.output_dir)
        elif run.name:
            args["name"] = run.name
        if run.resume and run.resume.get("run_id"):
            args.update(id=run.resume["run_id"], resume="allow")
            for key in ("project", "entity"):
                if run.resume.get(key) and not os.environ.get(f"WANDB_{key.upper()}"):
                    args[key] = run.resume[key]
        if _argv_has_secret(sys.argv):
            # W&B's metadata records the command line; keep secrets on it away from the run
            logger.info("tracklink: the command line carries a secret; W&B system metadata is not collected")
            try:
                args["settings"] = wandb.Settings(x_disable_meta=True)
            except Exception:  # SDKs before 0.19 name it _disable_meta
                args["settings"] = wandb.Settings(_disable_meta=True)
        return {**args, **run.extra}

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None) -> None:
        self._run.log({**metrics, "train/global_step": step})
        self._last_metrics.update(metrics)

    def log_text(self, texts: dict[str, str], step: int) -> None:
        self._run.log({**texts, "train/global_step": step})

    def log_media(self, values: dict[str, Media], step: int) -> None:
        import wandb

        row: dict[str, Any] = {}
        with TempFiles() as files:  # wandb copies each file into the run when the row is logged
            def image(value: Image, name: str) -> Any:
                return wandb.Image(files.write(value.png(), f"{name.rsplit('/', 1)[-1]}.png"), caption=value.caption)

            for name, value in values.items():
                if isinstance(value, Image):
                    row[name] = image(value, name)
                elif isinstance(value, Histogram):
                    counts, edges = value.histogram(name)
                    row[name] = wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist()))
                elif isinstance(value, Table):
                    rows = [[image(c, f"{name}-cell") if isinstance(c, Image) else c for c in r] for r in value.rows]
                    row[name] = wandb.Table(columns=value.columns, data=rows, allow_mixed_types=True)
            self._run.log({**row, "train/global_step": step})

    def log_artifact(self, path: str, name: str, step: int) -> None:
        import wandb

        key = name.rsplit("/", 1)[0] if "/" in name else name
        artifact = wandb.Artifact(name=re.sub(r"[^\w.-]", "-", key).strip("-.") or "file", type="file",
                                  metadata={"step": step, "key": key})
        artifact.add_file(path, name=name.rsplit("/", 1)[-1])  # copied when added
        self._run.log_artifact(artifact, aliases=[f"step_{step}"])

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():  # transformers' raw names: train_runtime, total_flos, ...
            self._run.summary[key[len("train/"):] if key.startswith("train/") else key] = value

    def log_checkpoint(self, path: str, state: Any) -> None:
        if self._log_model != "checkpoint":
            return
        step = int(getattr(state, "global_step", 0) or 0)
        epoch = round(float(getattr(state, "epoch", 0) or 0), 2)
        artifact = self._artifact({"global_step": step, "epoch": epoch})
        self._add_dir(artifact, Path(path), keep_training_state=True)
        self._run.log_artifact(artifact, aliases=[f"epoch_{epoch}", f"checkpoint_global_step_{step}"])

    def run_identity(self) -> dict[str, Any] | None:
        if self._run is None:
            return None
        identity = {"run_id": self._run.id, "project": getattr(self._run, "project", None),
                    "entity": getattr(self._run, "entity", None)}
        return {k: v for k, v in identity.items() if v}

    def finish(self, end: RunEnd) -> None:
        if self._run is None:
            return
        try:
            if end == "success" and self._log_model in ("end", "checkpoint"):
                self._log_final_model(end)
        finally:
            self._close(end)

    def _close(self, end: RunEnd) -> None:
        run, self._run = self._run, None
        if self._watched is not None:
            model, self._watched = self._watched, None
            try:
                run.unwatch(model)
            except Exception as exc:
                logger.debug("tracklink: wandb unwatch failed: %r", exc)
        if self._owns_run:
            run.finish(exit_code=end.exit_code)

    # -- helpers --------------------------------------------------------------------------------

    def _artifact(self, extra: dict[str, Any]) -> Any:
        import wandb

        metadata = {k: v for k, v in self._last_metrics.items() if isinstance(v, (int, float))}
        if self._num_parameters is not None:
            metadata["model/num_parameters"] = self._num_parameters
        return wandb.Artifact(name=f"model-{self._run.id}", type="model", metadata={**metadata, **extra})

    def _add_dir(self, artifact: Any, root: Path, *, keep_training_state: bool) -> None:
        with redacted_upload(root) as upload:  # secrets in configs and text files masked
            consolidated = (upload / "model.safetensors").is_file()
            for path in sorted(p for p in upload.rglob("*") if p.is_file()):
                top = path.relative_to(upload).parts[0]
                if not keep_training_state and (top.startswith(_TRAINING_STATE) or (consolidated and top == _SHARDED_MODEL)):
                    continue
                artifact.add_file(str(path), name=path.relative_to(upload).as_posix())  # copied when added

    def _log_final_model(self, end: RunEnd) -> None:
        source = None
        model = end.model
        best = end.best_checkpoint
        from_best = bool(end.load_best_model_at_end and best and Path(best).is_dir())
        if from_best:
            source = Path(str(best))
        else:
            candidates = [Path(end.last_checkpoint)] if end.last_checkpoint else []
            candidates.append(Path(end.output_dir or ".", f"checkpoint-{end.step}"))
            for last in candidates:
                if last.name == f"checkpoint-{end.step}" and (last / "model.safetensors").is_file():
                    source = last
                    break
        metadata: dict[str, Any] = {"final_model": True, "global_step": end.step}
        if from_best and end.best_metric is not None:
            metric = str(end.metric_for_best_model or "loss").removeprefix("eval_")
            metadata[f"eval/{metric}"] = end.best_metric
        artifact = self._artifact(metadata)
        with tempfile.TemporaryDirectory(prefix="tracklink-wandb-model-") as tmp:
            if source is None:
                if model is None:
                    logger.warning("tracklink: W&B final model not logged: no checkpoint and no model")
                    return
                if _is_sharded(model):  # gathering it would need every process, and this runs on one
                    logger.warning(
                        "tracklink: W&B final model not logged: the model is sharded by FSDP and no checkpoint "
                        "holds its consolidated weights; save a checkpoint at the end (save_strategy) to log it"
                    )
                    return
                source = Path(tmp, "model")
                save = getattr(model, "save_pretrained", None)
                if callable(save):
                    save(str(source))
                else:
                    save_model(model, source)
            self._add_dir(artifact, source, keep_training_state=False)
            if model is not None:
                with artifact.new_file("model_architecture.txt", mode="w") as handle:
                    handle.write(str(model))
            self._run.log_artifact(artifact, aliases=["final_model"])
