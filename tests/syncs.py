"""Counting host-device synchronisations on CPU, shared by tests/trainer/test_no_sync.py and
benchmarks/training_overhead.py.

On CUDA, reading a tensor's value on the host (``.item()``, ``float()``, ``int()``, ``bool()``,
``.cpu()``, ``.tolist()``, ``.numpy()``, printing it) or ``torch.cuda.synchronize()`` blocks until the
device has caught up. :func:`counting_syncs` patches those calls and reports each one, except calls from
code that only touches host tensors by construction: ``torch.optim`` (host-side ``step`` counters),
``torch.utils.data`` (the DataLoader's base seed) and the trainer's sampler (``torch.randperm`` on a host
generator).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

SYNCING_METHODS = ("item", "__float__", "__int__", "__bool__", "__index__", "cpu", "tolist", "numpy",
                   "__format__", "__repr__")
HOST_ONLY_PATHS = ("/torch/optim/", "/torch/utils/data/")


@contextmanager
def counting_syncs(record: Callable[[str, str], None]) -> Iterator[None]:
    """While active, call ``record(method, "file:line of the caller")`` for every syncing call."""
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING_METHODS}
    original_sync = torch.cuda.synchronize

    def wrap(name: str, original: Any) -> Any:
        def method(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            filename = frame.f_code.co_filename.replace("\\", "/")
            host_only = any(part in filename for part in HOST_ONLY_PATHS) or (
                filename.endswith("trainer/data.py") and frame.f_code.co_name == "__iter__"
            )
            if not host_only:
                record(name, f"{filename}:{frame.f_lineno}")
            return original(tensor, *args, **kwargs)
        return method

    def synchronize(*args: Any, **kwargs: Any) -> Any:
        frame = sys._getframe(1)
        record("cuda.synchronize", f"{frame.f_code.co_filename}:{frame.f_lineno}")
        return original_sync(*args, **kwargs)

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        torch.cuda.synchronize = synchronize
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.cuda.synchronize = original_sync
