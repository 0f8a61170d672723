"""Which process this is in a (possibly) distributed run, and which rank policies let it act."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["RANK_POLICIES", "ProcessInfo", "RankPolicy"]

RankPolicy = Literal["main", "local_main", "all"]
RANK_POLICIES: tuple[str, ...] = ("main", "local_main", "all")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class ProcessInfo:
    """World rank, node-local rank and world size of this process.

    ``from_env()`` reads the variables ``torchrun`` sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), so
    it is known before ``torch.distributed`` is initialised and without importing torch.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> ProcessInfo:
        return cls(
            rank=_env_int("RANK", 0),
            local_rank=_env_int("LOCAL_RANK", 0),
            world_size=_env_int("WORLD_SIZE", 1),
        )

    @property
    def is_world_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    def allows(self, policy: str) -> bool:
        """Whether a plugin with this rank policy acts on this process."""
        if policy == "main":
            return self.is_world_main
        if policy == "local_main":
            return self.is_local_main
        if policy == "all":
            return True
        raise ValueError(f"unknown rank policy {policy!r}; accepted: {', '.join(RANK_POLICIES)}")
