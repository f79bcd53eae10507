"""Small numerical helpers shared by several modules.

:func:`log_mean_exp` is the importance-sampling estimate of a log evidence from log-weights
(used by the IWAE objective and by the benchmark's metrics).

:func:`select` is ``torch.where`` for floating-point tensors, computed with bitwise operations on
the CPU. PyTorch's CPU ``where`` is a scalar loop that branches on every element: with the
unpredictable masks of Metropolis-Hastings decisions it runs several times slower than an
arithmetic operation of the same size (about 0.4 ms against 0.07 ms for 128 x 1000 float32
values on one core), and the sampler makes several such selections per particle and step.

:func:`all_last` is ``mask.all(-1)`` as a count: torch's CPU ``all`` over a short last axis
is 2.3 to 2.5 times slower than summing the same booleans (128 x 250 x 10 and 32 x 1000 x
10 values, one thread).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["all_last", "log_mean_exp", "select"]

_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def select(condition: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """``torch.where(condition, a, b)``, bit for bit, faster on the CPU for floating point.

    On the CPU, for floating-point ``a`` and ``b`` of one dtype that do not require gradients,
    the result is built from the bit patterns: ``b ^ ((a ^ b) & mask)`` with ``mask`` all ones
    where ``condition`` holds. Every value, NaN and infinities included, is copied exactly.
    Elsewhere (other devices, gradients, mixed dtypes) it calls ``torch.where``.

    Shapes: condition, a, b broadcastable -> the broadcast shape (one of a, b may be a number).

    >>> select(torch.tensor([True, False]), torch.tensor([1.0, 2.0]), float("-inf"))
    tensor([1., -inf])
    """
    if not isinstance(a, Tensor):
        if not isinstance(b, Tensor):
            raise TypeError("select: a or b must be a tensor")
        a = torch.tensor(a, dtype=b.dtype, device=b.device)
    if not isinstance(b, Tensor):
        b = torch.tensor(b, dtype=a.dtype, device=a.device)
    fast = (
        a.device.type == "cpu"
        and a.dtype == b.dtype
        and a.is_floating_point()
        and not (a.requires_grad or b.requires_grad)
        and a.element_size() in _SAME_SIZE_INT
    )
    if not fast:
        return torch.where(condition, a, b)
    int_type = _SAME_SIZE_INT[a.element_size()]
    mask = condition.to(int_type).neg_()  # 1 -> all bits set, 0 -> none
    a_bits, b_bits = a.view(int_type), b.view(int_type)
    return ((a_bits ^ b_bits) & mask ^ b_bits).view(a.dtype)


def all_last(mask: Tensor) -> Tensor:
    """``mask.all(-1)``: whether every entry of the last axis holds, as a count of them.

    Shapes: mask [..., d] bool -> [...] bool.

    >>> all_last(torch.tensor([[True, True], [True, False]]))
    tensor([ True, False])
    """
    return mask.sum(-1) == mask.shape[-1]


def log_mean_exp(log_weights: Tensor) -> Tensor:
    """log (1/K) sum_k exp(log_weights_k) over the last dimension, computed stably.

    With log_weights_k = log p(z_k, x) - log q(z_k | x) for z_k ~ q(z | x), its exponential is
    the unbiased importance-sampling estimate of p(x); its expectation is the importance-
    weighted bound (IWBO) on log p(x). A row of -inf gives -inf.

    Shapes: log_weights [*, K] -> [*].

    >>> log_mean_exp(torch.log(torch.tensor([[1.0, 3.0]])))
    tensor([0.6931])
    """
    return torch.logsumexp(log_weights, -1) - math.log(log_weights.shape[-1])
