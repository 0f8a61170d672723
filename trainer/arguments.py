"""``TrainingArguments``: transformers' names and defaults for the fields users rely on.

Every value is validated when the object is built (and ``report_to`` again whenever it is reassigned),
so a bad argument fails before any training step, with an error naming the field, the value and what
is accepted. Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from tracklink.resolve import NOT_GIVEN, Resolution, resolve_report_to

from .fsdp import parse_fsdp, parse_fsdp_config

logger = logging.getLogger("tracklink")

__all__ = ["TRANSFORMERS_DIFFERENCES", "TrainingArguments"]

#: Where these arguments intentionally differ from ``transformers.TrainingArguments`` (v5); every other
#: field has transformers' name and default.
TRANSFORMERS_DIFFERENCES: dict[str, str] = {
    "report_to": "defaults to 'all' (the seed's documented default; TRACKLINK_REPORT_TO when not given) and "
                 "holds the resolved list of tracker names; transformers v5 defaults to 'none'",
    "disable_tqdm": "None stays None and is resolved when the Trainer is built (transformers resolves it "
                    "to a bool in the arguments)",
    "overwrite_output_dir": "kept from transformers 4.x (removed in v5); accepted and ignored",
    "warmup_ratio": "kept from transformers 4.x (v5 folds it into a fractional warmup_steps)",
    "logging_dir": "kept from transformers 4.x (v5 uses TENSORBOARD_LOGGING_DIR); read by the TensorBoard "
                   "tracker",
}

INTERVAL_STRATEGIES = ("no", "steps", "epoch")
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
TOKEN_COUNTING = ("no", "all", "non_padding")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _fail(name: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"TrainingArguments.{name}={value!r} is invalid; accepted: {accepted}")


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


@dataclass
class TrainingArguments:
    """Arguments of a training run, with transformers' names and defaults.

    Step intervals (``logging_steps``, ``eval_steps``, ``save_steps``) accept an integer number of steps
    or a float in (0, 1) meaning a fraction of the total steps. ``report_to`` accepts ``"all"``,
    ``"none"``, a name, a comma-separated string or a list; when not given, ``TRACKLINK_REPORT_TO``
    supplies it (default ``"all"``: every installed tracker that is ready to run without interaction).
    After construction it holds the list of selected tracker names.
    """

    output_dir: str | None = None
    overwrite_output_dir: bool = False
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0
    warmup_ratio: float = 0.0
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    logging_nan_inf_filter: bool = True
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    save_only_model: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    torch_compile: bool = False
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    use_cpu: bool = False
    dataloader_num_workers: int = 0
    dataloader_drop_last: bool = False
    dataloader_pin_memory: bool = True
    disable_tqdm: bool | None = None
    run_name: str | None = None
    logging_dir: str | None = None
    report_to: Any = field(default=NOT_GIVEN)
    ignore_data_skip: bool = False
    restore_callback_states_from_checkpoint: bool = False
    include_num_input_tokens_seen: bool | str = False
    label_names: list[str] | None = None
    remove_unused_columns: bool = True
    ddp_backend: str | None = None
    ddp_find_unused_parameters: bool | None = None
    fsdp: Any = None
    fsdp_config: Any = None

    def __post_init__(self) -> None:
        self._validating = True
        try:
            self._validate()
        finally:
            self._validating = False
        self.report_to = self.report_to  # resolves (see __setattr__)

    # -- report_to ---------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if "_validating" in self.__dict__:
            # a changed field: trackers' cached redacted copy of these arguments is stale (see delivery)
            object.__setattr__(self, "_tracklink_changes", self.__dict__.get("_tracklink_changes", 0) + 1)
        if name == "report_to" and not self.__dict__.get("_validating", True):
            resolution = resolve_report_to(value)
            object.__setattr__(self, "_report_to_resolution", resolution)
            value = list(resolution.names)
        object.__setattr__(self, name, value)

    def __getstate__(self) -> dict[str, Any]:
        # the resolution holds loaded plugin classes; it is rebuilt from the names after unpickling
        # (e.g. in a Ray worker, whose environment decides which trackers are usable)
        return {k: v for k, v in self.__dict__.items() if k != "_report_to_resolution"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_report_to_resolution", resolve_report_to(list(self.report_to) or "none"))

    @property
    def report_to_resolution(self) -> Resolution:
        """Which trackers ``report_to`` selected and why the others were skipped."""
        return self.__dict__["_report_to_resolution"]

    # -- validation --------------------------------------------------------------------------

    def _check_type(self, name: str, kinds: tuple[type, ...], accepted: str, optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if isinstance(value, bool) and bool not in kinds:
            raise _fail(name, value, accepted)
        if not isinstance(value, kinds):
            raise _fail(name, value, accepted)

    def _interval(self, name: str, strategy_name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        steps = getattr(self, strategy_name) == "steps"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0 \
                or (steps and value == 0):
            needed = f" (0 is not allowed with {strategy_name}='steps')" if steps else ""
            raise _fail(name, value, "a positive integer, or a float in (0, 1) as a fraction of the total "
                        f"steps{needed}")
        if value > 1:
            if value != int(value):
                raise _fail(name, value, "an integer when larger than 1 (or a fraction in (0, 1))")
            object.__setattr__(self, name, int(value))

    def _validate(self) -> None:
        for name in ("logging_strategy", "eval_strategy", "save_strategy", "lr_scheduler_type"):
            object.__setattr__(self, name, _enum_value(getattr(self, name)))
        choice = {
            "logging_strategy": INTERVAL_STRATEGIES,
            "eval_strategy": INTERVAL_STRATEGIES,
            "save_strategy": SAVE_STRATEGIES,
            "lr_scheduler_type": SCHEDULERS,
        }
        for name, accepted in choice.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value.lower() not in accepted:
                raise _fail(name, value, ", ".join(repr(a) for a in accepted))
            object.__setattr__(self, name, value.lower())

        if self.output_dir is None:
            self.output_dir = "trainer_output"
            logger.info("No output_dir given; using 'trainer_output'.")
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir).strip():
            raise _fail("output_dir", self.output_dir, "a non-empty path")
        self.output_dir = os.fspath(self.output_dir)

        for name in ("overwrite_output_dir", "logging_first_step", "logging_nan_inf_filter", "eval_on_start",
                     "save_only_model", "load_best_model_at_end", "bf16", "fp16", "use_cpu",
                     "dataloader_drop_last", "dataloader_pin_memory", "ignore_data_skip",
                     "restore_callback_states_from_checkpoint", "remove_unused_columns"):
            self._check_type(name, (bool,), "True or False")
        for name in ("disable_tqdm", "greater_is_better", "ddp_find_unused_parameters"):
            self._check_type(name, (bool,), "True, False or None", optional=True)

        positive_ints = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(name, value, "an integer >= 1")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise _fail("max_steps", self.max_steps, "an integer (-1 or 0: use num_train_epochs)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("seed", self.seed, "an integer")
        if isinstance(self.dataloader_num_workers, bool) or not isinstance(self.dataloader_num_workers, int) \
                or self.dataloader_num_workers < 0:
            raise _fail("dataloader_num_workers", self.dataloader_num_workers, "an integer >= 0")
        for name, low, high, text in (
            ("num_train_epochs", 0.0, math.inf, "a number > 0 (when max_steps is not set)"),
            ("learning_rate", 0.0, math.inf, "a number >= 0"),
            ("weight_decay", 0.0, math.inf, "a number >= 0"),
            ("adam_beta1", 0.0, 1.0, "a number in [0, 1)"),
            ("adam_beta2", 0.0, 1.0, "a number in [0, 1)"),
            ("adam_epsilon", 0.0, math.inf, "a number > 0"),
            ("max_grad_norm", 0.0, math.inf, "a number >= 0 (0 disables clipping)"),
            ("warmup_steps", 0.0, math.inf, "a number >= 0 (a float below 1 is a fraction of the steps)"),
            ("warmup_ratio", 0.0, 1.0, "a number in [0, 1]"),
            ("eval_delay", 0.0, math.inf, "a number >= 0"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                    or value < low or value > high:
                raise _fail(name, value, text)
        if self.adam_beta1 >= 1 or self.adam_beta2 >= 1:
            bad = "adam_beta1" if self.adam_beta1 >= 1 else "adam_beta2"
            raise _fail(bad, getattr(self, bad), "a number in [0, 1)")
        if self.adam_epsilon <= 0:
            raise _fail("adam_epsilon", self.adam_epsilon, "a number > 0")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise _fail("num_train_epochs", self.num_train_epochs, "a number > 0 when max_steps is not set")
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):
            raise _fail("warmup_steps", self.warmup_steps, "an integer, or a float below 1 as a fraction")

        if self.logging_strategy == "steps" and self.logging_steps == 0:
            raise _fail("logging_steps", 0, "a non-zero value when logging_strategy='steps'")
        self._interval("logging_steps", "logging_strategy")
        if self.eval_strategy == "steps" and not self.eval_steps:
            self.eval_steps = self.logging_steps
        self._interval("eval_steps", "eval_strategy")
        self._interval("save_steps", "save_strategy")
        if self.save_total_limit is not None and (
            isinstance(self.save_total_limit, bool) or not isinstance(self.save_total_limit, int)
            or self.save_total_limit < 1
        ):
            raise _fail("save_total_limit", self.save_total_limit, "None (keep all) or an integer >= 1")

        if self.metric_for_best_model is not None and not isinstance(self.metric_for_best_model, str):
            raise _fail("metric_for_best_model", self.metric_for_best_model, "a metric name such as 'loss'")
        if (self.load_best_model_at_end or self.save_strategy == "best") and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise _fail("save_strategy", "best", "'best' only together with eval_strategy 'steps' or 'epoch'")
        if self.load_best_model_at_end:
            self._check_best_model_rules()

        if self.fp16 and self.bf16:
            raise ValueError(
                "TrainingArguments.fp16=True and bf16=True cannot both be set; accepted: at most one of fp16, bf16"
            )
        self._validate_compile_and_checkpointing()
        if self.include_num_input_tokens_seen is True:
            self.include_num_input_tokens_seen = "all"
        elif self.include_num_input_tokens_seen is False:
            self.include_num_input_tokens_seen = "no"
        if self.include_num_input_tokens_seen not in TOKEN_COUNTING:
            raise _fail("include_num_input_tokens_seen", self.include_num_input_tokens_seen,
                        "True, False, " + ", ".join(repr(v) for v in TOKEN_COUNTING))
        if self.label_names is not None and (
            isinstance(self.label_names, str) or not all(isinstance(n, str) for n in self.label_names)
        ):
            raise _fail("label_names", self.label_names, "None or a list of input names, e.g. ['labels']")
        if self.ddp_backend is not None and self.ddp_backend not in ("gloo", "nccl", "mpi", "ucc", "xccl"):
            raise _fail("ddp_backend", self.ddp_backend, "None (automatic), 'gloo', 'nccl', 'mpi', 'ucc', 'xccl'")
        self.fsdp = parse_fsdp(self.fsdp)
        self.fsdp_config = parse_fsdp_config(self.fsdp_config)
        if self.fsdp_config and not self.fsdp:
            logger.warning("TrainingArguments.fsdp_config is set but fsdp is not; the config is ignored")
        for name in ("run_name", "logging_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise _fail(name, value, "None or a string")

    def _validate_compile_and_checkpointing(self) -> None:
        # the backend name is checked against torch._dynamo by the Trainer (importing it here would
        # import torch); as in transformers, a backend or mode implies torch_compile=True
        for name in ("torch_compile", "gradient_checkpointing"):
            self._check_type(name, (bool,), "True or False")
        backend = self.torch_compile_backend
        if backend is not None and (not isinstance(backend, str) or not backend.strip()):
            raise _fail("torch_compile_backend", backend,
                        "None ('inductor') or the name of a torch._dynamo backend, e.g. 'inductor', 'aot_eager'")
        if self.torch_compile_mode not in COMPILE_MODES:
            raise _fail("torch_compile_mode", self.torch_compile_mode, ", ".join(repr(m) for m in COMPILE_MODES))
        if (backend is not None or self.torch_compile_mode is not None) and not self.torch_compile:
            self.torch_compile = True
        if self.torch_compile and backend is None:
            self.torch_compile_backend = "inductor"
        kwargs = self.gradient_checkpointing_kwargs
        if isinstance(kwargs, str):  # a JSON object, as transformers accepts from the command line
            try:
                kwargs = json.loads(kwargs)
            except ValueError:
                pass
        if kwargs is not None and (not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs)):
            raise _fail("gradient_checkpointing_kwargs", self.gradient_checkpointing_kwargs,
                        "None or a dict of keyword arguments (or its JSON text), e.g. {'use_reentrant': False}")
        self.gradient_checkpointing_kwargs = kwargs

    def _check_best_model_rules(self) -> None:
        if self.save_strategy == "best":
            return
        if self.eval_strategy != self.save_strategy:
            raise ValueError(
                "TrainingArguments: load_best_model_at_end=True requires eval_strategy and save_strategy to "
                f"match (or save_strategy='best'), but eval_strategy={self.eval_strategy!r} and "
                f"save_strategy={self.save_strategy!r}"
            )
        if self.eval_strategy != "steps":
            return
        assert self.eval_steps is not None
        eval_ratio, save_ratio = self.eval_steps < 1, self.save_steps < 1
        if eval_ratio != save_ratio:
            raise ValueError(
                "TrainingArguments: load_best_model_at_end=True requires save_steps to be a multiple of "
                "eval_steps, which cannot be guaranteed when mixing a ratio and an absolute number "
                f"(save_steps={self.save_steps!r}, eval_steps={self.eval_steps!r})"
            )
        scale = 1_000_000 if eval_ratio else 1
        if round(self.save_steps * scale) % round(self.eval_steps * scale) != 0:
            raise ValueError(
                "TrainingArguments: load_best_model_at_end=True requires save_steps to be a round multiple "
                f"of eval_steps, but save_steps={self.save_steps!r} and eval_steps={self.eval_steps!r}"
            )

    # -- derived values ------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)

    @property
    def process_index(self) -> int:
        return int(os.environ.get("RANK", "0") or 0)

    @property
    def local_process_index(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0") or 0)

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints (the world main process)."""
        return self.process_index == 0

    @property
    def should_log(self) -> bool:
        return self.process_index == 0

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    @property
    def device(self) -> Any:
        """The device training runs on: CUDA when available, else MPS, else CPU (``use_cpu`` forces CPU)."""
        from .distributed import pick_device  # lazy: it imports torch; this module does not

        return pick_device(self)

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warm-up steps: ``warmup_steps`` (a float below 1 is a fraction) or ``warmup_ratio``."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        ratio = self.warmup_steps if self.warmup_steps > 0 else self.warmup_ratio
        return math.ceil(num_training_steps * ratio)

    def to_dict(self) -> dict[str, Any]:
        """The init fields as a plain dict (``report_to`` as the resolved list of names)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, list) else _enum_value(value)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_sanitized_dict(self) -> dict[str, Any]:
        """``to_dict`` with every value a bool, int, float or str (for TensorBoard's hparams)."""
        data = {**self.to_dict(), "train_batch_size": self.train_batch_size, "eval_batch_size": self.eval_batch_size}
        return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in data.items()}
