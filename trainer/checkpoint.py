"""Checkpoint files: ``checkpoint-<step>/`` with weights, optimizer, scheduler, RNG and state.

Layout (transformers' names, except that the training arguments are stored as redacted JSON instead
of a pickle): ``model.safetensors``, ``config.json`` (when the model has a config), ``optimizer.pt``,
``scheduler.pt``, ``scaler.pt`` (fp16 only), ``rng_state.pth`` (``rng_state_<rank>.pth`` in
multi-process runs), ``training_args.json`` and ``trainer_state.json``. The config and the arguments
are redacted (a tracker may upload the checkpoint), so a secret-named config value reads ``<redacted>``. Every
file is written to a temporary name and renamed into place, and ``trainer_state.json`` is written last, so a
directory without it is an interrupted save and is never resumed from. :func:`checkpoint_problem` checks the
rest (a truncated or damaged file from a crash or a full disk): ``resume_from_checkpoint=True`` skips such a
checkpoint with a warning and resumes from the newest intact one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tracklink.atomic import atomic_path
from tracklink.modelfiles import WEIGHTS_NAME, save_config, save_model
from tracklink.state import CorruptStateError, TrainerState

logger = logging.getLogger("tracklink")

PREFIX = "checkpoint"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
STATE_NAME = "trainer_state.json"
ARGS_NAME = "training_args.json"

_CHECKPOINT_RE = re.compile(rf"^{PREFIX}-(\d+)$")

__all__ = [
    "CorruptCheckpointError",
    "checkpoint_problem",
    "checkpoints",
    "latest_checkpoint",
    "load_model_weights",
    "load_rng_state",
    "rotate_checkpoints",
    "save_config",
    "save_model",
    "save_rng_state",
    "save_weights",
]


def checkpoints(run_dir: str | os.PathLike[str], complete_only: bool = False) -> list[Path]:
    """``checkpoint-<n>`` directories of ``run_dir``, sorted by step."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (not complete_only or (child / STATE_NAME).is_file()):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated or damaged; the message names the file and the checkpoint."""


def _safetensors_problem(path: Path) -> str | None:
    """Check a safetensors file's header against its size (what a truncated write breaks)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "it is empty or truncated (no header)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"its header claims {length} bytes, but the file has only {size}: it is truncated"
            header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"its header cannot be read ({exc})"
    if not isinstance(header, dict):
        return "its header is not a safetensors header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + length + end != size:
        return f"its tensors need {8 + length + end} bytes, but the file has {size}: it is truncated or damaged"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """A ``torch.save`` file is a zip archive; a truncated one has no central directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"it is not a complete torch.save archive ({exc})"
    return None


def checkpoint_problem(directory: str | os.PathLike[str]) -> str | None:
    """What is wrong with a checkpoint directory, or ``None`` when it looks intact.

    Checks, without loading any tensor: ``trainer_state.json`` is present and a trainer state,
    ``model.safetensors`` (when present) is as long as its header says, and the optimizer, scheduler,
    scaler and RNG files (when present) are complete ``torch.save`` archives."""
    path = Path(directory)
    state_file = path / STATE_NAME
    if not state_file.is_file():
        return f"it has no {STATE_NAME} (an interrupted save)"
    try:
        TrainerState.load_from_json(str(state_file))
    except CorruptStateError as exc:
        return str(exc)
    except OSError as exc:
        return f"{state_file} cannot be read ({exc})"
    weights = path / WEIGHTS_NAME
    if weights.is_file():
        problem = _safetensors_problem(weights)
        if problem:
            return f"{weights}: {problem}"
    for child in sorted(path.iterdir()):
        if child.is_file() and child.suffix in (".pt", ".pth"):
            problem = _torch_file_problem(child)
            if problem:
                return f"{child}: {problem}"
    return None


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest intact checkpoint: one whose ``trainer_state.json`` was written and whose files pass
    :func:`checkpoint_problem`. Newer damaged ones are skipped with a warning naming what is wrong."""
    for candidate in reversed(checkpoints(run_dir)):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        logger.warning("tracklink: skipping checkpoint %s for resume: %s", candidate, problem)
    return None


def save_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], directory: str | os.PathLike[str]) -> None:
    """Write already gathered ``weights`` as ``model.safetensors``, and ``model``'s ``config.json``."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS_NAME) as temporary:
        save_file(weights, str(temporary), metadata={"format": "pt"})
    save_config(model, path)


def load_model_weights(model: torch.nn.Module, directory: str | os.PathLike[str]) -> None:
    """Load ``model.safetensors`` from a checkpoint into ``model`` (strictly)."""
    from safetensors.torch import load_model as load_safetensors

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}; it is not a tracklink/transformers checkpoint")
    problem = _safetensors_problem(path)
    if problem:
        raise CorruptCheckpointError(f"checkpoint {directory}: {path} {problem}")
    try:
        load_safetensors(model, str(path), strict=True, device=str(next(model.parameters()).device)
                         if any(True for _ in model.parameters()) else "cpu")
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {directory}: {path} does not fit this model ({type(model).__name__}): {exc}"
        ) from None


def _rng_file(directory: Path, rank: int, world_size: int) -> Path:
    return directory / ("rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth")


def save_rng_state(directory: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> None:
    """Python, NumPy, torch and CUDA random states of this process."""
    state: dict[str, Any] = {"python": random.getstate(), "cpu": torch.random.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    save_torch(state, _rng_file(path, rank, world_size))


def save_torch(obj: Any, target: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file renamed into place (never a half-written file)."""
    with atomic_path(target) as temporary:
        torch.save(obj, temporary)


def load_torch(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``torch.load`` (weights only), an unreadable file raising an error that names it."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CorruptCheckpointError(
            f"checkpoint {Path(path).parent}: {path} cannot be loaded ({type(exc).__name__}: {exc}); it is "
            "truncated or damaged"
        ) from exc


def load_rng_state(directory: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> bool:
    """Restore the random states saved by :func:`save_rng_state`; ``False`` when there is no file."""
    path = _rng_file(Path(directory), rank, world_size)
    if not path.is_file():
        logger.info("tracklink: %s has no %s; random states are not restored", directory, path.name)
        return False
    with _numpy_safe_globals():  # transformers stores the NumPy state as arrays
        state = load_torch(path)
    random.setstate(state["python"])
    torch.random.set_rng_state(state["cpu"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state((kind, keys.astype("uint32"), int(pos), int(has_gauss), float(gauss)))
    if "cuda" in state and torch.cuda.is_available():
        try:
            if isinstance(state["cuda"], torch.Tensor):  # transformers, single process: this device's state
                torch.cuda.set_rng_state(state["cuda"])
            else:
                torch.cuda.set_rng_state_all(state["cuda"])
        except Exception as exc:  # different GPU count
            logger.warning("tracklink: could not restore CUDA random states: %r", exc)
    return True


def _numpy_safe_globals() -> Any:
    """Allow the few NumPy types an RNG file written by transformers holds, and nothing else."""
    try:
        import numpy as np
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return torch.serialization.safe_globals(allowed)


def rotate_checkpoints(
    run_dir: str | os.PathLike[str],
    limit: int | None,
    best: str | None,
    in_use: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Delete the oldest checkpoints beyond ``limit``, never the best one.

    With ``limit == 1`` and a best checkpoint that is not the newest, two are kept (the best and the
    newest, to resume from). A checkpoint for which ``in_use`` is true (a tracker still uploads it, or
    has still to record its run identity in it) is kept for now and deleted by a later rotation: the
    training never waits for a tracker here.
    """
    if not limit:
        return []
    found = checkpoints(run_dir)
    best_path = Path(best).resolve() if best else None
    keep = limit
    if best_path is not None and limit == 1 and found and found[-1].resolve() != best_path:
        keep = 2
    if len(found) <= keep:
        return []
    ordered = [p for p in found if p.resolve() != best_path]
    if best_path is not None and any(p.resolve() == best_path for p in found):
        keep -= 1
    doomed = ordered[: max(0, len(ordered) - keep)]
    if in_use is not None:
        busy = [path for path in doomed if in_use(path)]
        for path in busy:
            logger.info("tracklink: keeping checkpoint %s for now: a tracker still uses it", path)
        doomed = [path for path in doomed if path not in busy]
    for path in doomed:
        logger.info("tracklink: deleting older checkpoint %s (save_total_limit=%s)", path, limit)
        shutil.rmtree(path, ignore_errors=True)
    return doomed
