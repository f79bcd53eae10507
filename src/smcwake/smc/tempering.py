"""Adaptive choice of the next temperature, one per observation, by vectorized bisection.

The tempered targets are pi_t(z) ∝ p(z) p(x | z)^{tau_t}. Going from tau to tau + delta multiplies
each particle's weight by g_k = exp(delta * loglik_k). The next temperature is the largest
tau + delta whose *conditional* effective sample size (Zhou, Johansen & Aston, 2016)

    CESS(delta) = (sum_k W_k g_k)^2 / sum_k W_k g_k^2        (a fraction of K, in (0, 1])

equals ``target_ess``. With uniform carried weights W this is the usual ESS / K; with non-uniform W
(when the previous stage did not resample) it measures only the degeneracy the new increment adds.
When CESS at delta = 1 - tau already meets the target the schedule jumps straight to 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["tempered", "conditional_ess", "next_temperature"]


def tempered(loglik: Tensor, tau: Tensor) -> Tensor:
    """``tau * loglik`` with ``0 * (-inf)`` read as 0 (a zero likelihood at temperature 0).

    Shapes: loglik [B, K], tau [B] -> [B, K].

    >>> tempered(torch.tensor([[-float("inf"), -2.0]]), torch.tensor([0.0]))
    tensor([[0., 0.]])
    """
    tau = tau.to(loglik.dtype)[:, None]
    return torch.where(tau == 0, torch.zeros_like(loglik), tau * loglik)


def conditional_ess(loglik: Tensor, log_weights: Tensor, delta: Tensor) -> Tensor:
    """Conditional ESS fraction of the increment ``exp(delta * loglik)`` under weights W.

    Rows where every carried particle has zero likelihood give 0.

    Shapes: loglik [B, K], log_weights [B, K] (normalized), delta [B] -> [B].
    """
    inc = tempered(loglik, delta)
    log_cess = 2 * torch.logsumexp(log_weights + inc, -1) - torch.logsumexp(
        log_weights + 2 * inc, -1
    )
    return torch.nan_to_num(torch.exp(log_cess), nan=0.0)


def next_temperature(
    loglik: Tensor,
    log_weights: Tensor,
    tau: Tensor,
    *,
    target_ess: float = 0.5,
    min_increment: float = 1e-9,
    num_bisections: int = 40,
) -> Tensor:
    """Next temperature per observation: CESS(tau_next - tau) = target_ess, capped at 1.

    Bisection runs a fixed number of halvings of log(delta) on all rows at once (no
    data-dependent control flow) in float64, since useful increments span many decades. It keeps
    the lower end of the bracket, so the achieved CESS is at least the target, and never steps
    less than ``min_increment`` (which guarantees progress when a share of the particles has
    zero likelihood).

    Shapes: loglik [B, K], log_weights [B, K] (normalized), tau [B] (float64) -> [B] (float64).

    >>> ll = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    >>> next_temperature(ll, torch.full((1, 4), -1.386), torch.zeros(1, dtype=torch.float64))
    tensor([1.], dtype=torch.float64)
    """
    ll = loglik.to(torch.float64)
    lw = log_weights.to(torch.float64)
    gap = (1.0 - tau).clamp_min(0.0)
    done = conditional_ess(ll, lw, gap) >= target_ess
    # bisect on log(delta) over [log min_increment, log gap]: increments span many decades
    hi = torch.log(gap.clamp_min(min_increment))
    lo = torch.minimum(torch.full_like(hi, math.log(min_increment)), hi)
    for _ in range(num_bisections):
        mid = 0.5 * (lo + hi)
        ok = conditional_ess(ll, lw, torch.exp(mid)) >= target_ess
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    delta = torch.minimum(torch.exp(lo), gap)
    return torch.where(done, torch.ones_like(tau), tau + delta)
