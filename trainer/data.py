"""Batches: the default collator, samplers that reshuffle per epoch and can skip ahead on resume."""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    Sampler,
    SequentialSampler,
)

from .distributed import is_distributed

__all__ = [
    "IterableDatasetShard",
    "ResumableSampler",
    "build_dataloader",
    "default_data_collator",
    "has_length",
    "move_to_device",
]


def _as_mapping(feature: Any) -> Mapping[str, Any]:
    if isinstance(feature, Mapping):
        return feature
    if dataclasses.is_dataclass(feature) and not isinstance(feature, type):
        return {f.name: getattr(feature, f.name) for f in dataclasses.fields(feature)}
    raise TypeError(
        f"dataset items must be dicts of model inputs (the model is called as model(**batch)); got "
        f"{type(feature).__name__}. Wrap items as {{'input': ..., 'labels': ...}} or pass a data_collator."
    )


def _stack(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, bool):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(first, numbers.Integral):
        return torch.tensor(values, dtype=torch.long)
    if isinstance(first, numbers.Real):
        return torch.tensor(values, dtype=torch.float)
    if hasattr(first, "__array__") and not isinstance(first, (str, bytes)):
        import numpy as np

        return torch.from_numpy(np.stack([np.asarray(v) for v in values]))
    if isinstance(first, Sequence) and not isinstance(first, (str, bytes)) and first \
            and isinstance(first[0], numbers.Number):
        return torch.tensor(values)
    return values


def default_data_collator(features: list[Any]) -> dict[str, Any]:
    """Stack a list of dict items into a batch dict (transformers' default collator rules).

    Tensors are stacked, numbers become tensors (``long`` for ints, ``float`` for floats), ``label`` and
    ``label_ids`` are renamed ``labels``; other values are kept as lists.
    """
    if not features:
        return {}
    rows = [_as_mapping(f) for f in features]
    batch: dict[str, Any] = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if values[0] is None:
            continue
        target = "labels" if key in ("label", "label_ids") else key
        batch[target] = _stack(values)
    return batch


def has_length(obj: Any) -> bool:
    try:
        return len(obj) is not None
    except (TypeError, NotImplementedError):
        return False


class _EpochRandomSampler(Sampler[int]):
    """A random permutation per epoch, seeded by ``seed + epoch`` (like ``DistributedSampler``)."""

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class ResumableSampler(Sampler[int]):
    """Wraps a sampler: forwards ``set_epoch`` and can skip the first samples of the next pass, so a
    resumed run continues mid-epoch exactly where the checkpoint left off."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def skip_next(self, samples: int) -> None:
        self._skip = samples

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class IterableDatasetShard(IterableDataset[Any]):
    """One process's share of a length-less dataset under ``torchrun`` (transformers' rule).

    Every process reads the whole stream, cuts it into chunks of ``batch_size * num_processes`` samples
    and keeps its own ``batch_size`` slice of each chunk, so the processes train on disjoint samples and
    see the same number of batches (a process running out of batches first would hang the others in
    DDP's gradient all-reduce). Unless ``drop_last``, a short final chunk is completed with samples from
    the start of the stream. ``set_epoch`` is passed on to the dataset (e.g. to reshuffle a stream).

    With ``even_batches=False`` (evaluation) the short final chunk is not completed: each process keeps
    only the real samples of its slice, so later processes may get a short last batch or none, and batch
    ``k`` of process ``r`` is batch ``k * num_processes + r`` of a single process reading the stream.
    """

    def __init__(self, dataset: Any, batch_size: int, *, num_processes: int, process_index: int,
                 drop_last: bool = False, even_batches: bool = True) -> None:
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index={process_index} is not in [0, {num_processes})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.drop_last = drop_last
        self.even_batches = even_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """This process's number of samples (a ``TypeError`` when the stream has no length)."""
        chunk_size = self.batch_size * self.num_processes
        total = len(self.dataset)
        if self.drop_last:
            return total // chunk_size * self.batch_size
        if self.even_batches:
            return -(-total // chunk_size) * self.batch_size
        rest = total % chunk_size - self.process_index * self.batch_size
        return total // chunk_size * self.batch_size + min(self.batch_size, max(0, rest))

    def __iter__(self) -> Iterator[Any]:
        chunk_size = self.batch_size * self.num_processes
        start, stop = self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size
        first: list[Any] = []
        chunk: list[Any] = []
        for sample in self.dataset:
            chunk.append(sample)
            if len(chunk) == chunk_size:
                yield from chunk[start:stop]
                if not first:
                    first = chunk
                chunk = []
        if chunk and not self.drop_last:
            if not self.even_batches:
                yield from chunk[start:stop]
                return
            filler = first or list(chunk)
            while len(chunk) < chunk_size:
                chunk.extend(filler[: chunk_size - len(chunk)])
            yield from chunk[start:stop]


def build_dataloader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    collate_fn: Any,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader[Any]:
    """A DataLoader with a :class:`ResumableSampler` (``DistributedSampler`` under torchrun); length-less
    data is split between processes by :class:`IterableDatasetShard` under torchrun."""
    sampler: Sampler[int] | None = None
    if has_length(dataset) and not isinstance(dataset, IterableDataset):  # iterable data takes no sampler
        if is_distributed():
            inner: Sampler[int] = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        elif shuffle:
            inner = _EpochRandomSampler(len(dataset), seed)  # type: ignore[arg-type]
        else:
            inner = SequentialSampler(dataset)  # type: ignore[arg-type]
        sampler = ResumableSampler(inner)
    elif is_distributed():
        dataset = IterableDatasetShard(
            dataset, batch_size, num_processes=torch.distributed.get_world_size(),
            process_index=torch.distributed.get_rank(), drop_last=drop_last,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (nested in dicts, lists, tuples) to ``device`` without blocking the host."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()}) \
            if not isinstance(batch, dict) else {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
