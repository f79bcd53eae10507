"""The preconditioner of the move kernels: a shrunk covariance of the weighted particle cloud.

Every kernel steps in the metric of a covariance estimated from the particles. The plain weighted
covariance (:func:`~smcwake.smc.mh.weighted_cholesky`) is a good estimate when the cloud holds
many more distinct points than dimensions. After resampling it often does not: a cloud of K = 300
particles in d = 50 dimensions holds 150 to 200 distinct points, and the sample covariance of n
points in d dimensions spreads its eigenvalues over roughly (1 +- sqrt(d / n))^2 times the true
ones. It also leans toward every particle it was computed from: a point at whitened distance r
from the mean adds r^2 / n to the variance along its own direction, and r^2 is about d. A
Langevin step whose metric is stretched along the particle's own position pulls outlying
particles in harder than the target does, so the cloud ends narrower than the target and the
evidence is over-estimated (+7 to +10 nats at d = 50, K = 300 with 5 MALA steps per stage, see
docs/KERNELS.md).

:func:`shrunk_cholesky` shrinks the off-diagonal part of the weighted covariance toward zero
(target: its own diagonal) by the intensity that minimizes the estimated mean squared error of
the correlations (Ledoit & Wolf, 2004; Schaefer & Strimmer, 2005, target "D"), computed from the
*distinct* particles: copies made by resampling carry one point's information, so their weights
are merged before the variance of each covariance entry is estimated. When the cloud holds many
more distinct points than dimensions the intensity is near 0 and the estimate is the plain one;
when it does not, the estimate moves toward the diagonal, which is well determined by any cloud.
"""

from __future__ import annotations

import torch
from torch import Tensor

from smcwake.smc.mh import regularized_cholesky

__all__ = ["merged_weights", "shrunk_covariance", "shrunk_cholesky"]


def merged_weights(z: Tensor, log_weights: Tensor) -> Tensor:
    """Normalized weights with the copies of each point merged onto one of them.

    Copies (bitwise-equal rows, as made by resampling and kept by rejected moves) give their
    summed weight to the first copy and 0 to the others, so ``1 / (merged ** 2).sum(-1)`` is the
    effective number of distinct particles.

    Shapes: z [B, K, d], log_weights [B, K] -> [B, K].

    >>> z = torch.tensor([[[0.0], [1.0], [0.0], [2.0]]])
    >>> merged_weights(z, torch.zeros(1, 4))
    tensor([[0.5000, 0.2500, 0.0000, 0.2500]])
    """
    w = torch.softmax(log_weights, dim=-1)
    order = torch.argsort(z[..., 0], dim=-1, stable=True)
    sorted_z = torch.gather(z, 1, order[..., None].expand_as(z))
    first = torch.ones_like(w, dtype=torch.bool)
    first[:, 1:] = (sorted_z[:, 1:] != sorted_z[:, :-1]).any(-1)
    group = first.long().cumsum(-1) - 1  # [B, K] group of each sorted particle
    totals = torch.zeros_like(w).scatter_add_(1, group, torch.gather(w, 1, order))
    merged_sorted = torch.where(first, torch.gather(totals, 1, group), 0.0)
    return torch.zeros_like(w).scatter_(1, order, merged_sorted)


def shrunk_covariance(z: Tensor, log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted cloud covariance with its correlations shrunk toward 0, and the intensity.

    With S the weighted covariance, D its diagonal and R = D^-1/2 S D^-1/2 the correlations, the
    estimate is D^1/2 ((1 - lam) R + lam I) D^1/2, with

        lam = sum_{i != j} Var(r_ij) / sum_{i != j} r_ij^2,    clipped to [0, 1],

    the intensity that minimizes the estimated squared error of the shrunk correlations
    (Schaefer & Strimmer, 2005). Var(r_ij) is estimated as sum_k v_k^2 (y_ki y_kj - r_ij)^2,
    y the standardized particles and v the weights with copies merged (:func:`merged_weights`),
    the delta-method variance of a weighted mean of independent points. One dimension, or a
    cloud whose correlations are all 0, gives lam = 0.

    Shapes: z [B, K, d], log_weights [B, K] -> (covariance [B, d, d], lam [B]).

    References:
        Ledoit & Wolf (2004), A well-conditioned estimator for large-dimensional covariance
        matrices, J. Multivariate Anal.
        Schaefer & Strimmer (2005), A shrinkage approach to large-scale covariance matrix
        estimation and implications for functional genomics, Stat. Appl. Genet. Mol. Biol.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(1, 20, 10, generator=g, dtype=torch.float64)
    >>> cov, lam = shrunk_covariance(z, torch.zeros(1, 20, dtype=torch.float64))
    >>> 0.5 < float(lam) <= 1.0  # 20 points in 10 dimensions: mostly noise off the diagonal
    True
    """
    w = torch.softmax(log_weights, dim=-1)
    mean = (w[..., None] * z).sum(1, keepdim=True)
    centred = z - mean
    cov = (w[..., None] * centred).mT @ centred  # [B, d, d]
    var = torch.diagonal(cov, dim1=-2, dim2=-1)  # [B, d]
    tiny = torch.finfo(z.dtype).tiny
    sd = var.clamp_min(tiny).sqrt()
    y = centred / sd[:, None, :]  # standardized
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    v2 = merged_weights(z, log_weights).square()[..., None]  # [B, K, 1]
    # sum_k v_k^2 (y_i y_j - r_ij)^2 = M4_ij - 2 r_ij M2_ij + r_ij^2 sum_k v_k^2
    y2 = y.square()
    m4 = (v2 * y2).mT @ y2
    m2 = (v2 * y).mT @ y
    var_r = (m4 - 2 * corr * m2 + corr.square() * v2.sum(1)[..., None]).clamp_min(0.0)
    off = ~torch.eye(z.shape[-1], dtype=torch.bool, device=z.device)
    num = (var_r * off).sum((-2, -1))
    den = (corr.square() * off).sum((-2, -1))
    lam = torch.where(den > 0, num / den.clamp_min(tiny), torch.zeros_like(den)).clamp(0.0, 1.0)
    scale = (1 - lam)[:, None, None]
    shrunk = torch.where(off, scale * cov, cov)
    return shrunk, lam


def shrunk_cholesky(z: Tensor, log_weights: Tensor, jitter: float = 1e-6) -> Tensor:
    """Cholesky factor of :func:`shrunk_covariance`, regularized as by ``weighted_cholesky``.

    Shapes: z [B, K, d], log_weights [B, K] -> [B, d, d].
    """
    return regularized_cholesky(shrunk_covariance(z, log_weights)[0], jitter)
