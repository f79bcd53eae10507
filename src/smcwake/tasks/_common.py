"""Small helpers shared by the task modules: seeded generators and argument checks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_count", "make_generator", "place"]


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (an int >= 0); tasks draw on the CPU, then move."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, received {seed!r}")
    return torch.Generator().manual_seed(seed)


def check_count(n: int, what: str = "n") -> int:
    """Validate a positive number of observations or samples; return it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what}: expected an int >= 1, received {n!r}")
    return n


def place(t: Tensor, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """Cast ``t`` to the task's dtype and device.

    Shapes: t [*] -> [*].
    """
    return t.to(dtype=dtype, device=device)
