"""Resampling schemes, batched over observations.

Every scheme has one signature::

    ancestors = scheme(log_weights, num_samples, generator=generator)

with ``log_weights [B, K]`` unnormalized log-weights (``-inf`` is a zero weight; every row must
have a finite entry) and ``ancestors [B, num_samples]`` int64 indices into the K particles. Each is
unbiased: the expected number of copies of particle k is ``num_samples * W_k``. Systematic
resampling has the lowest variance in practice and is the default; stratified and residual are
also low-variance; multinomial is the textbook reference (Chopin & Papaspiliopoulos, "An
Introduction to Sequential Monte Carlo", ch. 9).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Resampler",
    "systematic",
    "stratified",
    "multinomial",
    "residual",
    "RESAMPLERS",
    "get_resampler",
    "ess",
    "normalize",
    "normalize_with_log_norm",
]

Resampler = Callable[..., Tensor]


def normalize(log_weights: Tensor) -> Tensor:
    """Normalize log-weights so that logsumexp over the last axis is 0.

    Shapes: log_weights [*, K] -> [*, K].
    """
    return normalize_with_log_norm(log_weights)[0]


def normalize_with_log_norm(log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Normalized log-weights and the log of their sum (float64).

    The row maximum is subtracted first, so that normalizing large log-weights (say -1e6 in
    float32) does not round away log K. Rows without a finite entry return -inf for the sum.

    Shapes: log_weights [*, K] -> ([*, K], [*]).
    """
    top = log_weights.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    shifted = log_weights - top
    lse = torch.logsumexp(shifted, dim=-1, keepdim=True)
    log_norm = top.to(torch.float64) + lse.to(torch.float64)
    return shifted - lse, log_norm[..., 0]


def ess(log_weights: Tensor) -> Tensor:
    """Effective sample size (sum w)^2 / sum w^2, computed in log space.

    Shapes: log_weights [*, K] (unnormalized) -> [*].

    >>> ess(torch.zeros(2, 4))
    tensor([4., 4.])
    """
    shifted = log_weights - log_weights.amax(-1, keepdim=True).clamp_min(
        -torch.finfo(log_weights.dtype).max
    )
    return torch.exp(2 * torch.logsumexp(shifted, -1) - torch.logsumexp(2 * shifted, -1))


def _cdf(log_weights: Tensor) -> Tensor:
    """Cumulative normalized weights C_k [B, K]; the last entry is exactly 1."""
    cdf = torch.softmax(log_weights, dim=-1).cumsum(dim=-1)
    return cdf / cdf[:, -1:]


def _inverse_cdf(log_weights: Tensor, u: Tensor) -> Tensor:
    """Indices of the sorted points ``u`` [B, N] in [0, 1) under the weights' CDF."""
    cdf = _cdf(log_weights)
    below_one = torch.nextafter(cdf.new_ones(()), cdf.new_zeros(()))
    # right=True skips particles of zero weight (their CDF step is flat).
    idx = torch.searchsorted(cdf, u.clamp(max=below_one).contiguous(), right=True)
    return idx.clamp_(max=log_weights.shape[-1] - 1)


def _grid(log_weights: Tensor, num_samples: int) -> Tensor:
    return torch.arange(num_samples, dtype=log_weights.dtype, device=log_weights.device)


def systematic(
    log_weights: Tensor,
    num_samples: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Systematic resampling: one uniform per observation, points (n + U) / N.

    Shapes: log_weights [B, K] -> ancestors [B, N] (N = num_samples, default K).

    >>> g = torch.Generator().manual_seed(0)
    >>> systematic(torch.log(torch.tensor([[0.0, 0.5, 0.5]])), generator=g)
    tensor([[1, 1, 2]])
    """
    B, K = log_weights.shape
    N = K if num_samples is None else num_samples
    u = torch.rand(B, 1, generator=generator, dtype=log_weights.dtype, device=log_weights.device)
    # The points (n + u) / N are evenly spaced, so no search is needed: the first point at or
    # above C_k is n_k = ceil(N C_k - u), and the ancestor of point n is the number of particles
    # with C_k <= (n + u) / N, i.e. with n_k <= n: a cumulative count. A zero weight repeats
    # C_{k-1}, hence n_{k-1}, so its particle is skipped; the last particle has n = N (unused).
    first = torch.ceil(N * _cdf(log_weights) - u).clamp_(0, N).long()  # [B, K]
    counts = torch.zeros(B, N + 1, dtype=torch.int64, device=log_weights.device)
    counts.scatter_add_(1, first, torch.ones_like(first))
    return counts[:, :N].cumsum(-1).clamp_(max=K - 1)


def stratified(
    log_weights: Tensor,
    num_samples: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Stratified resampling: one uniform per stratum [n/N, (n+1)/N).

    Shapes: log_weights [B, K] -> ancestors [B, N].
    """
    B, K = log_weights.shape
    N = K if num_samples is None else num_samples
    u = torch.rand(B, N, generator=generator, dtype=log_weights.dtype, device=log_weights.device)
    return _inverse_cdf(log_weights, (_grid(log_weights, N) + u) / N)


def multinomial(
    log_weights: Tensor,
    num_samples: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multinomial resampling: N independent draws from the weights (sorted, for locality).

    Uses sorted uniforms built from normalized cumulative exponential spacings, drawn as
    ``-log1p(-u)`` so that ``u == 0`` stays finite.

    Shapes: log_weights [B, K] -> ancestors [B, N].
    """
    B, K = log_weights.shape
    N = K if num_samples is None else num_samples
    u = torch.rand(
        B, N + 1, generator=generator, dtype=log_weights.dtype, device=log_weights.device
    )
    spacings = -torch.log1p(-u)
    cum = spacings.cumsum(-1)
    return _inverse_cdf(log_weights, cum[:, :-1] / cum[:, -1:])


def residual(
    log_weights: Tensor,
    num_samples: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Residual resampling: floor(N W_k) deterministic copies, the rest multinomially.

    Shapes: log_weights [B, K] -> ancestors [B, N].
    """
    B, K = log_weights.shape
    N = K if num_samples is None else num_samples
    scaled = torch.softmax(log_weights, dim=-1) * N
    counts = torch.floor(scaled)
    remaining = N - counts.sum(-1)  # [B], integer valued
    resid = (scaled - counts).clamp_min(0)
    # rows with no remainder get uniform residual weights; none of their draws are kept
    has_rest = remaining > 0
    resid = torch.where(has_rest[:, None], resid, torch.ones_like(resid))
    # unsorted independent draws, so that keeping the first `remaining` of them is unbiased
    extra = torch.multinomial(resid, N, replacement=True, generator=generator)  # [B, N]
    keep = _grid(log_weights, N)[None, :] < remaining[:, None]
    counts = counts.scatter_add(1, extra, keep.to(counts.dtype))
    cum = counts.cumsum(-1)
    idx = torch.searchsorted(cum, _grid(log_weights, N).expand(B, N).contiguous(), right=True)
    return idx.clamp_(max=K - 1)


RESAMPLERS: dict[str, Resampler] = {
    "systematic": systematic,
    "stratified": stratified,
    "multinomial": multinomial,
    "residual": residual,
}


def get_resampler(name: str | Resampler) -> Resampler:
    """Look up a scheme by name (or pass a callable through)."""
    if callable(name):
        return name
    try:
        return RESAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"resampling: unknown scheme {name!r}; expected one of {sorted(RESAMPLERS)}"
        ) from None
