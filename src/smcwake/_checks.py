"""Argument checks shared by the metric modules (:mod:`smcwake.diagnostics`,
:mod:`smcwake.calibration_metrics`): errors that name the argument, the expected shape and what
was received."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_tensor", "shape_of"]


def shape_of(t: Tensor) -> list[int]:
    """``t.shape`` as a list, as error messages print it. Shapes: any -> [t.dim()] ints."""
    return list(t.shape)


def check_tensor(name: str, t: object, expected: str) -> Tensor:
    """``t`` itself if it is a tensor, else a ``TypeError`` naming ``name`` and ``expected``.

    Shapes: ``expected`` is the shape in words, e.g. ``"[B, d]"``; not checked here.

    >>> check_tensor("x", [1.0], "[B, d]")
    Traceback (most recent call last):
    ...
    TypeError: x: expected a torch.Tensor [B, d], received list
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {expected}, received {type(t).__name__}")
    return t
