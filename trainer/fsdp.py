"""FSDP with PyTorch's ``fully_shard`` (FSDP2): the ``fsdp``/``fsdp_config`` arguments, sharding a model,
and checkpoints written with ``torch.distributed.checkpoint`` (DCP).

The argument parsers at the top run when ``TrainingArguments`` is validated and import nothing heavy;
everything that needs torch imports it when called.

A sharded checkpoint holds the model in ``pytorch_model_fsdp_0/`` and the optimizer in ``optimizer_0/``
(accelerate's directory names, one DCP directory each, one file per rank), next to the usual
``scheduler.pt``, ``rng_state_<rank>.pth`` and ``trainer_state.json``. DCP reshards on load, so a
checkpoint resumes on another number of processes, or without FSDP at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "FSDP_CONFIG_KEYS",
    "FSDP_OPTIONS",
    "MODEL_DIR",
    "OPTIMIZER_DIR",
    "FsdpPlan",
    "is_sharded_checkpoint",
    "parse_fsdp",
    "parse_fsdp_config",
]

MODEL_DIR = "pytorch_model_fsdp_0"
OPTIMIZER_DIR = "optimizer_0"
MIN_TORCH = (2, 6)  # fully_shard is public API (torch.distributed.fsdp) from 2.6 on

#: sharding strategies (exactly one) and modifiers, with transformers' option names
SHARDING = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2")
MODIFIERS = ("offload", "auto_wrap")
FSDP_OPTIONS = SHARDING + MODIFIERS

#: fsdp_config keys (transformers' names; a leading ``fsdp_`` is accepted and dropped, as in transformers)
FSDP_CONFIG_KEYS: dict[str, str] = {
    "transformer_layer_cls_to_wrap": "class names of the layers sharded as separate units (default: the "
                                     "model's _no_split_modules)",
    "min_num_params": "shard as a separate unit every submodule with at least this many parameters not in "
                      "a smaller unit (used when no layer class is given or known)",
    "reshard_after_forward": "free the gathered parameters after the forward (default: True for full_shard, "
                             "False for shard_grad_op)",
    "version": "2 (FSDP2, the only one supported)",
}


def _fail(name: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"TrainingArguments.{name}={value!r} is invalid; accepted: {accepted}")


def parse_fsdp(value: Any) -> list[str] | None:
    """Normalise ``fsdp`` to a list of options (``None`` when off). Accepts transformers' forms: ``""``/
    ``None``/``False`` (off), ``True`` (``full_shard``), a space-separated string or a list of options.
    ``offload`` alone means ``full_shard offload``."""
    accepted = ("'' (off), True, or options from " + ", ".join(repr(o) for o in FSDP_OPTIONS)
                + " (one sharding strategy, optionally with 'offload' and 'auto_wrap'), as a "
                "space-separated string or a list")
    if value is None or value is False or value == "":
        return None
    if value is True:
        return ["full_shard"]
    if isinstance(value, str):
        options = value.split()
    elif isinstance(value, (list, tuple)) and all(isinstance(o, str) or hasattr(o, "value") for o in value):
        options = [str(getattr(o, "value", o)) for o in value]
    else:
        raise _fail("fsdp", value, accepted)
    options = [o.lower() for o in options]
    unknown = [o for o in options if o not in FSDP_OPTIONS]
    if unknown:
        raise _fail("fsdp", value, accepted + f"; unknown: {', '.join(map(repr, unknown))}")
    strategies = [o for o in options if o in SHARDING]
    if len(strategies) > 1:
        raise _fail("fsdp", value, "one sharding strategy at a time, not " + " and ".join(map(repr, strategies)))
    if not strategies:
        if "offload" not in options:
            raise _fail("fsdp", value, "a sharding strategy (" + ", ".join(map(repr, SHARDING)) + ") with "
                        "'auto_wrap'")
        options.insert(0, "full_shard")
    return list(dict.fromkeys(options))


def parse_fsdp_config(value: Any) -> dict[str, Any] | None:
    """Normalise ``fsdp_config`` (``None``, a dict, or the path of a JSON file) to a checked dict."""
    accepted = "None, a dict or the path of a JSON file with keys " + ", ".join(FSDP_CONFIG_KEYS)
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise _fail("fsdp_config", str(path), f"{accepted} ({exc})") from None
    if not isinstance(value, Mapping):
        raise _fail("fsdp_config", value, accepted)
    config: dict[str, Any] = {}
    for key, item in value.items():
        name = key[len("fsdp_"):] if isinstance(key, str) and key.startswith("fsdp_") else key
        if name not in FSDP_CONFIG_KEYS:
            raise _fail("fsdp_config", {key: item}, "the keys " + ", ".join(FSDP_CONFIG_KEYS))
        config[name] = item
    layers = config.get("transformer_layer_cls_to_wrap")
    if layers is not None:
        if isinstance(layers, str):
            layers = [s.strip() for s in layers.split(",") if s.strip()]
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(s, str) for s in layers):
            raise _fail("fsdp_config", {"transformer_layer_cls_to_wrap": config["transformer_layer_cls_to_wrap"]},
                        "transformer_layer_cls_to_wrap as a class name, a comma-separated string or a list of them")
        config["transformer_layer_cls_to_wrap"] = list(layers)
    min_params = config.get("min_num_params", 0)
    if isinstance(min_params, bool) or not isinstance(min_params, int) or min_params < 0:
        raise _fail("fsdp_config", {"min_num_params": min_params}, "min_num_params as an integer >= 0")
    reshard = config.get("reshard_after_forward")
    if reshard is not None and not isinstance(reshard, bool):
        raise _fail("fsdp_config", {"reshard_after_forward": reshard}, "reshard_after_forward as True or False")
    if config.get("version", 2) not in (2, "2"):
        raise _fail("fsdp_config", {"version": config["version"]}, "version 2 (FSDP2, fully_shard)")
    return config


@dataclass(frozen=True)
class FsdpPlan:
    """How to shard: from ``TrainingArguments.fsdp`` and ``fsdp_config``."""

    hybrid: bool
    reshard_after_forward: bool
    offload: bool
    layer_classes: tuple[str, ...]
    min_num_params: int
    bf16: bool = False

    @classmethod
    def from_args(cls, args: Any) -> FsdpPlan | None:
        options = list(args.fsdp or [])
        if not options:
            return None
        config = args.fsdp_config or {}
        strategy = next(o for o in options if o in SHARDING)
        reshard = config.get("reshard_after_forward")
        if reshard is None:
            reshard = strategy in ("full_shard", "hybrid_shard")
        return cls(
            hybrid=strategy.startswith("hybrid"),
            reshard_after_forward=reshard,
            offload="offload" in options,
            layer_classes=tuple(config.get("transformer_layer_cls_to_wrap") or ()),
            min_num_params=int(config.get("min_num_params", 0)),
            bf16=bool(getattr(args, "bf16", False)),
        )


def check_supported(args: Any, world_size: int, launched: bool, has_user_optimizer: bool) -> None:
    """Errors for combinations that cannot work, raised when the Trainer is built (before any step)."""
    import torch

    fsdp = " ".join(args.fsdp or [])
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        raise ValueError(
            f"TrainingArguments.fsdp={fsdp!r} needs torch>={'.'.join(map(str, MIN_TORCH))} (FSDP2 fully_shard); "
            f"torch {torch.__version__} is installed. Upgrade torch or set fsdp=''"
        )
    if not launched:
        raise ValueError(
            f"TrainingArguments.fsdp={fsdp!r} needs torch.distributed: launch the script with torchrun "
            "(e.g. torchrun --nproc_per_node=2 train.py), or set fsdp='' for one process"
        )
    if has_user_optimizer:
        raise ValueError(
            f"TrainingArguments.fsdp={fsdp!r} cannot be combined with Trainer(optimizers=...): the optimizer must "
            "be created over the sharded parameters. Leave optimizers unset and configure AdamW through "
            "TrainingArguments (learning_rate, weight_decay, adam_*)"
        )
    plan = FsdpPlan.from_args(args)
    if plan is not None and plan.hybrid:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or world_size)
        if local <= 0 or world_size % local:
            raise ValueError(
                f"TrainingArguments.fsdp={fsdp!r} shards within a node and replicates across nodes, which needs "
                f"the world size ({world_size}) to be a multiple of the processes per node ({local})"
            )


def is_sharded(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def _mesh(plan: FsdpPlan, device: torch.device) -> Any:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if not plan.hybrid:
        return init_device_mesh(device.type, (world,))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    return init_device_mesh(device.type, (world // local, local), mesh_dim_names=("replicate", "shard"))


def check_model(model: torch.nn.Module, plan: FsdpPlan) -> None:
    """Raise when ``transformer_layer_cls_to_wrap`` names a class the model does not contain, or when the
    model has a parameter FSDP cannot shard (a scalar)."""
    scalars = [name for name, p in model.named_parameters() if p.dim() == 0]
    if scalars:
        raise ValueError(
            f"TrainingArguments.fsdp={' '.join(plan_options(plan))!r} cannot shard the scalar parameters "
            f"{', '.join(map(repr, scalars))} of {type(model).__name__}: FSDP shards along a dimension. Make "
            "them 1-element vectors (e.g. torch.zeros(1)), or train without fsdp"
        )
    found = {type(m).__name__ for m in model.modules()}
    missing = sorted(set(plan.layer_classes) - found)
    if missing:
        raise ValueError(
            f"TrainingArguments.fsdp_config transformer_layer_cls_to_wrap={list(plan.layer_classes)!r} names "
            f"{', '.join(map(repr, missing))}, which is not a module class of this model "
            f"({type(model).__name__}); accepted: its module classes {', '.join(sorted(found))}"
        )


def plan_options(plan: FsdpPlan) -> list[str]:
    """The ``fsdp`` options a plan stands for (for messages)."""
    strategy = ("hybrid_shard" if plan.reshard_after_forward else "hybrid_shard_zero2") if plan.hybrid else \
        ("full_shard" if plan.reshard_after_forward else "shard_grad_op")
    return [strategy, *(["offload"] if plan.offload else [])]


def _units(model: torch.nn.Module, plan: FsdpPlan) -> list[torch.nn.Module]:
    """The submodules sharded as their own units, innermost first (``fully_shard`` needs children first).

    A module holding one name of a tied parameter (an embedding tied to the output head) while the other
    name lies outside it is not a unit of its own: FSDP keeps a tied parameter in one unit, here the
    enclosing one (usually the root)."""
    tied = _tied_groups(model)

    def splits_a_tie(name: str) -> bool:
        inside = [any(n.startswith(name + ".") for n in group) for group in tied]
        outside = [any(not n.startswith(name + ".") for n in group) for group in tied]
        return any(i and o for i, o in zip(inside, outside))

    named = [(name, m) for name, m in model.named_modules() if m is not model]
    classes = set(plan.layer_classes) or set(getattr(model, "_no_split_modules", None) or ())
    if classes:
        check_model(model, plan)
        return [m for name, m in reversed(named) if type(m).__name__ in classes and not splits_a_tie(name)]
    if not plan.min_num_params:
        return []
    units: list[torch.nn.Module] = []
    covered: set[int] = set()
    for name, module in reversed(named):  # named_modules is pre-order: reversed, children come first
        own = sum(p.numel() for p in module.parameters() if id(p) not in covered)
        if own >= plan.min_num_params and not splits_a_tie(name):
            units.append(module)
            covered.update(id(p) for p in module.parameters())
    return units


def shard_model(model: torch.nn.Module, plan: FsdpPlan, device: torch.device) -> torch.nn.Module:
    """Apply ``fully_shard`` to the chosen layers and the root, in place; returns the model."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": _mesh(plan, device), "reshard_after_forward": plan.reshard_after_forward}
    if plan.bf16:  # gather parameters in bfloat16 (half the traffic), reduce gradients in float32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if plan.offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for unit in _units(model, plan):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded_checkpoint(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory) / MODEL_DIR / ".metadata").is_file()


def _writer(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter

    return FileSystemWriter(str(path), overwrite=True)


def save_sharded(model: torch.nn.Module, optimizer: Any, directory: Path) -> None:
    """Every rank writes its shards of the model and optimizer state (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state}, storage_writer=_writer(directory / MODEL_DIR))
    dcp.save({"optimizer": optimizer_state}, storage_writer=_writer(directory / OPTIMIZER_DIR))


def _single_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


def load_sharded_model(model: torch.nn.Module, directory: Path) -> None:
    """Load ``pytorch_model_fsdp_0/`` into a sharded (or plain) model, resharding as needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(directory / MODEL_DIR), no_dist=_single_process())
    set_model_state_dict(model, state["model"])


def load_sharded_optimizer(model: torch.nn.Module, optimizer: Any, directory: Path) -> bool:
    """Load ``optimizer_0/`` when present; returns whether it was."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    if not (directory / OPTIMIZER_DIR / ".metadata").is_file():
        return False
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(directory / OPTIMIZER_DIR), no_dist=_single_process())
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return True


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names under which one parameter is registered more than once (tied embeddings and heads)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The consolidated weights on the CPU of the world main process (``{}`` elsewhere; a collective),
    with tied parameters stored once, under their alphabetically first name (as safetensors does)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    tied = {n for group in _tied_groups(model) for n in sorted(group)[1:]}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.contiguous() for k, v in full.items() if k not in tied}


def load_full_weights(model: torch.nn.Module, weights: Path) -> None:
    """Load a consolidated ``model.safetensors`` into a sharded model (every rank reads the file)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    loaded = load_file(str(weights))
    for group in _tied_groups(model):  # tied parameters: the file holds one name of each group
        present = next((n for n in group if n in loaded), None)
        if present is not None:
            for name in group:
                loaded.setdefault(name, loaded[present])
    set_model_state_dict(model, loaded, options=StateDictOptions(full_state_dict=True))
