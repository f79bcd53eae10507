"""Metrics for judging approximate posteriors against a reference.

Every function is batched over observations and takes and returns torch tensors, except
:func:`c2st` and :func:`summarize`, which return Python numbers for report tables.

- Gaussian divergences: :func:`gaussian_kl`, :func:`forward_kl_gaussian` (KL(posterior || q), the
  inclusive KL SMC-Wake minimizes), :func:`reverse_kl_gaussian` (KL(q || posterior)),
  :func:`mean_l1`.
- Two-sample tests: :func:`c2st` (classifier accuracy, 0.5 = indistinguishable; the classifier is
  named by :data:`C2ST_CLASSIFIER`) and :func:`mmd` (unbiased squared MMD, Gaussian kernel).
- Calibration, defined in :mod:`smcwake.calibration_metrics` and importable from here too:
  :func:`hpd_levels` and :func:`expected_coverage` (expected coverage of highest density regions
  of q), :func:`sbc_ranks` and :func:`sbc_uniformity` (simulation-based calibration),
  :func:`sbc_histogram` (binned ranks and their expected counts), :func:`tarp_levels` (TARP
  coverage with random reference points) and :func:`ecdf_band` (a simultaneous band for
  coverage curves).
- Helpers: :func:`log_q_true`, :func:`weighted_moments` (mean and covariance of a weighted
  particle cloud), :func:`summarize` (mean, std, standard error for tables).

Shapes follow the library: observations first, then samples or particles, then the event
dimension, e.g. ``samples [B, S, d]``, ``z [B, K, d]``, ``log_weights [B, K]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from smcwake._checks import check_tensor, shape_of
from smcwake._optional import require
from smcwake.calibration_metrics import (
    ecdf_band,
    expected_coverage,
    hpd_levels,
    sbc_histogram,
    sbc_ranks,
    sbc_uniformity,
    tarp_levels,
)

__all__ = [
    "C2ST_CLASSIFIER",
    "SupportsLogProb",
    "c2st",
    "ecdf_band",
    "expected_coverage",
    "forward_kl_gaussian",
    "gaussian_kl",
    "hpd_levels",
    "log_q_true",
    "mean_l1",
    "mmd",
    "reverse_kl_gaussian",
    "sbc_histogram",
    "sbc_ranks",
    "sbc_uniformity",
    "summarize",
    "tarp_levels",
    "weighted_moments",
]

C2ST_CLASSIFIER = (
    "scikit-learn MLPClassifier: 2 hidden layers of 10*d ReLU units, adam, max_iter=1000, "
    "early_stopping (n_iter_no_change=50); inputs z-scored by the p-sample mean/std; balanced "
    "classes; stratified 5-fold cross-validated accuracy"
)
"""What :func:`c2st` trains, in words, for report tables (settings as in sbi's C2ST)."""


class SupportsLogProb(Protocol):
    """An encoder q(z | x) with a batched log-density.

    Shapes: ``log_prob(z [B, S, d], x [B, p]) -> [B, S]``.
    """

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor: ...


# ------------------------------------------------------------------------------------ checks
def _check_gaussian(name: str, mean: Tensor, cov: Tensor) -> int:
    """Check ``mean [*, d]`` and ``cov [*, d, d]``; return d."""
    check_tensor(f"mean_{name}", mean, "[*, d]")
    check_tensor(f"cov_{name}", cov, "[*, d, d]")
    if mean.dim() < 1 or mean.shape[-1] == 0:
        raise ValueError(
            f"mean_{name}: expected shape [*, d] with d >= 1, received {shape_of(mean)}"
        )
    d = mean.shape[-1]
    if cov.dim() < 2 or cov.shape[-2:] != (d, d):
        raise ValueError(
            f"cov_{name}: expected shape [*, {d}, {d}] to match mean_{name} {shape_of(mean)}, "
            f"received {shape_of(cov)}"
        )
    return d


def _cholesky(name: str, cov: Tensor) -> Tensor:
    """Lower Cholesky factor; ValueError naming ``name`` if ``cov`` is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        bad = torch.nonzero(info.reshape(-1)).flatten()
        raise ValueError(
            f"{name}: expected symmetric positive-definite matrices; {bad.numel()} of "
            f"{info.numel()} are not (first at flat batch index {int(bad[0])})"
        )
    return chol


# ------------------------------------------------------------------------ Gaussian divergences
def gaussian_kl(mean_p: Tensor, cov_p: Tensor, mean_q: Tensor, cov_q: Tensor) -> Tensor:
    """KL(N(mean_p, cov_p) || N(mean_q, cov_q)), via Cholesky factors.

    With ``L_p L_p^T = cov_p`` and ``L_q L_q^T = cov_q``:
    ``KL = 1/2 [ ||L_q^{-1} L_p||_F^2 + ||L_q^{-1}(mean_q - mean_p)||^2 - d
    + 2 sum log diag L_q - 2 sum log diag L_p ]``. Triangular solves and log-determinants from
    the diagonals avoid forming inverses. Computed in float64; returned in the promoted input
    dtype. Batch dimensions broadcast.

    Shapes: mean_p [*, d], cov_p [*, d, d], mean_q [*, d], cov_q [*, d, d] -> [*].

    Raises:
        ValueError: on mismatched shapes or a covariance that is not positive definite.

    >>> gaussian_kl(torch.zeros(1), torch.eye(1), torch.ones(1), torch.eye(1))
    tensor(0.5000)
    """
    d = _check_gaussian("p", mean_p, cov_p)
    d_q = _check_gaussian("q", mean_q, cov_q)
    if d_q != d:
        raise ValueError(
            f"mean_q: expected event dimension d = {d} (from mean_p {shape_of(mean_p)}), "
            f"received {shape_of(mean_q)}"
        )
    try:
        batch = torch.broadcast_shapes(
            mean_p.shape[:-1], cov_p.shape[:-2], mean_q.shape[:-1], cov_q.shape[:-2]
        )
    except RuntimeError as err:
        raise ValueError(
            "gaussian_kl: batch shapes do not broadcast: mean_p "
            f"{shape_of(mean_p)}, cov_p {shape_of(cov_p)}, mean_q {shape_of(mean_q)}, "
            f"cov_q {shape_of(cov_q)}"
        ) from err
    out_dtype = torch.promote_types(
        torch.promote_types(mean_p.dtype, cov_p.dtype),
        torch.promote_types(mean_q.dtype, cov_q.dtype),
    )
    if not out_dtype.is_floating_point:
        out_dtype = torch.get_default_dtype()
    f64 = torch.float64
    chol_p = _cholesky("cov_p", cov_p.to(f64)).expand(*batch, d, d)
    chol_q = _cholesky("cov_q", cov_q.to(f64)).expand(*batch, d, d)
    diff = (mean_q.to(f64) - mean_p.to(f64)).expand(*batch, d)
    trace_term = torch.linalg.solve_triangular(chol_q, chol_p, upper=False).square().sum((-2, -1))
    maha = (
        torch.linalg.solve_triangular(chol_q, diff[..., None], upper=False).square().sum((-2, -1))
    )
    logdet_q = 2.0 * chol_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet_p = 2.0 * chol_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    kl = 0.5 * (trace_term + maha - d + logdet_q - logdet_p)
    return kl.to(out_dtype)


def forward_kl_gaussian(
    post_mean: Tensor, post_cov: Tensor, q_mean: Tensor, q_cov: Tensor
) -> Tensor:
    """Forward (inclusive) KL(posterior || q) for Gaussian posterior and approximation.

    Shapes: post_mean [*, d], post_cov [*, d, d], q_mean [*, d], q_cov [*, d, d] -> [*].

    >>> forward_kl_gaussian(torch.zeros(1), torch.eye(1), torch.zeros(1), 4 * torch.eye(1))
    tensor(0.3181)
    """
    return gaussian_kl(post_mean, post_cov, q_mean, q_cov)


def reverse_kl_gaussian(
    post_mean: Tensor, post_cov: Tensor, q_mean: Tensor, q_cov: Tensor
) -> Tensor:
    """Reverse (exclusive) KL(q || posterior); same argument order as the forward KL.

    Shapes: post_mean [*, d], post_cov [*, d, d], q_mean [*, d], q_cov [*, d, d] -> [*].

    >>> reverse_kl_gaussian(torch.zeros(1), torch.eye(1), torch.zeros(1), 4 * torch.eye(1))
    tensor(0.8069)
    """
    return gaussian_kl(q_mean, q_cov, post_mean, post_cov)


def mean_l1(mean_a: Tensor, mean_b: Tensor) -> Tensor:
    """Sum over dimensions of absolute differences between two means.

    Shapes: mean_a [*, d], mean_b [*, d] -> [*].

    >>> mean_l1(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, -1.0]]))
    tensor([3.])
    """
    check_tensor("mean_a", mean_a, "[*, d]")
    check_tensor("mean_b", mean_b, "[*, d]")
    if mean_a.dim() < 1 or mean_b.dim() < 1 or mean_a.shape[-1] != mean_b.shape[-1]:
        raise ValueError(
            f"mean_b: expected shape [*, d] with the d of mean_a {shape_of(mean_a)}, "
            f"received {shape_of(mean_b)}"
        )
    return (mean_a - mean_b).abs().sum(-1)


# ------------------------------------------------------------------------ two-sample tests
def _check_samples(name: str, t: Tensor) -> None:
    check_tensor(name, t, "[N, d]")
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: expected shape [N, d] with N, d >= 1, received {shape_of(t)}")


def c2st(p_samples: Tensor, q_samples: Tensor, *, folds: int = 5, seed: int = 0) -> float:
    """Classifier two-sample test: cross-validated accuracy telling p-samples from q-samples.

    0.5 means the classifier cannot tell them apart; 1.0 means disjoint supports. The larger set
    is subsampled (without replacement, seeded) to the size of the smaller one so that chance is
    exactly 0.5. Inputs are standardized with the mean and standard deviation of the p-samples.
    The classifier is scikit-learn's ``MLPClassifier`` with two hidden layers of ``10 * d`` ReLU
    units, trained with adam (``max_iter=1000``, ``early_stopping=True``,
    ``n_iter_no_change=50``, ``random_state=seed``), the settings of sbi's C2ST; accuracy is
    averaged over a shuffled, stratified ``folds``-fold split. Deterministic for a given ``seed``.
    :data:`C2ST_CLASSIFIER` describes the classifier for reports.

    Shapes: p_samples [N, d], q_samples [M, d] -> float.

    References:
        Lopez-Paz & Oquab, "Revisiting classifier two-sample tests", ICLR 2017.
        Lueckmann et al., "Benchmarking simulation-based inference", AISTATS 2021.

    >>> g = torch.Generator().manual_seed(0)
    >>> p, q = torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g) + 10.0
    >>> c2st(p, q) > 0.95
    True
    """
    selection = require("sklearn.model_selection", "smcwake.diagnostics.c2st")
    networks = require("sklearn.neural_network", "smcwake.diagnostics.c2st")

    _check_samples("p_samples", p_samples)
    _check_samples("q_samples", q_samples)
    d = p_samples.shape[1]
    if q_samples.shape[1] != d:
        raise ValueError(
            f"q_samples: expected shape [M, {d}] to match p_samples {shape_of(p_samples)}, "
            f"received {shape_of(q_samples)}"
        )
    if folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, received {folds}")
    n = min(p_samples.shape[0], q_samples.shape[0])
    if n < folds:
        raise ValueError(
            f"c2st: expected at least folds = {folds} samples per side, received "
            f"{p_samples.shape[0]} and {q_samples.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    p = p_samples.detach().cpu().to(torch.float64).numpy()
    q = q_samples.detach().cpu().to(torch.float64).numpy()
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError("c2st: samples contain NaN or inf")
    if p.shape[0] > n:
        p = p[rng.choice(p.shape[0], size=n, replace=False)]
    if q.shape[0] > n:
        q = q[rng.choice(q.shape[0], size=n, replace=False)]
    loc, scale = p.mean(0), p.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    inputs = (np.concatenate([p, q]) - loc) / scale
    labels = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
    classifier = networks.MLPClassifier(
        hidden_layer_sizes=(10 * d, 10 * d),
        activation="relu",
        solver="adam",
        max_iter=1000,
        early_stopping=True,
        n_iter_no_change=50,
        random_state=seed,
    )
    splitter = selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = selection.cross_val_score(classifier, inputs, labels, cv=splitter, scoring="accuracy")
    return float(np.mean(scores))


def _median(values: Tensor) -> Tensor:
    """Median of a 1-D tensor, averaging the two middle values when the count is even."""
    n = values.numel()
    upper = torch.kthvalue(values, n // 2 + 1).values
    if n % 2 == 1:
        return upper
    return 0.5 * (torch.kthvalue(values, n // 2).values + upper)


def mmd(x: Tensor, y: Tensor, *, bandwidth: float | None = None) -> Tensor:
    """Unbiased estimate of the squared maximum mean discrepancy with a Gaussian kernel.

    ``k(a, b) = exp(-||a - b||^2 / (2 h^2))``; the estimate averages ``k`` over distinct pairs
    within each sample (diagonal excluded) and over all cross pairs, so it is centred on the true
    MMD^2 and can be slightly negative when the distributions agree. When ``bandwidth`` is None,
    ``h`` is the median pairwise Euclidean distance of the pooled sample (median heuristic).
    Computed in float64 and returned in the input dtype; uses O((N + M)^2) memory.

    Shapes: x [N, d], y [M, d] (N, M >= 2) -> [].

    References:
        Gretton et al., "A kernel two-sample test", JMLR 2012.

    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
    >>> bool(mmd(x, y).abs() < 0.02), bool(mmd(x, y + 3.0) > 0.5)
    (True, True)
    """
    _check_samples("x", x)
    _check_samples("y", y)
    if y.shape[1] != x.shape[1]:
        raise ValueError(
            f"y: expected shape [M, {x.shape[1]}] to match x {shape_of(x)}, received {shape_of(y)}"
        )
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd: expected at least 2 samples each, received N = {n}, M = {m}")
    if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(
            f"bandwidth: expected a positive finite float or None, received {bandwidth}"
        )
    out_dtype = torch.promote_types(x.dtype, y.dtype)
    pooled = torch.cat([x, y]).to(torch.float64)
    sq_dist = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist").square()
    if bandwidth is None:
        upper = torch.ones(n + m, n + m, dtype=torch.bool, device=pooled.device).triu(1)
        h = _median(sq_dist[upper].sqrt())
        if not bool(h > 0):
            raise ValueError("mmd: median pairwise distance is 0; pass bandwidth explicitly")
    else:
        h = torch.tensor(bandwidth, dtype=torch.float64, device=pooled.device)
    kernel = torch.exp(-sq_dist / (2.0 * h.square()))
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    term_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    term_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return (term_x + term_y - 2.0 * k_xy.mean()).to(out_dtype)


# ------------------------------------------------------------------------------- helpers
def log_q_true(encoder: SupportsLogProb, z_true: Tensor, x: Tensor) -> Tensor:
    """log q(z_true | x) under the encoder, without gradients.

    Shapes: z_true [B, d], x [B, p] -> [B].

    >>> class Standard:
    ...     def log_prob(self, z, x):
    ...         return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    >>> log_q_true(Standard(), torch.zeros(2, 1), torch.zeros(2, 3))
    tensor([-0.9189, -0.9189])
    """
    check_tensor("z_true", z_true, "[B, d]")
    check_tensor("x", x, "[B, p]")
    if z_true.dim() != 2 or x.dim() != 2 or z_true.shape[0] != x.shape[0]:
        raise ValueError(
            f"z_true, x: expected shapes [B, d] and [B, p] with the same B, received "
            f"{shape_of(z_true)} and {shape_of(x)}"
        )
    with torch.no_grad():
        out = encoder.log_prob(z_true[:, None, :], x)
    if not isinstance(out, Tensor) or out.shape != (z_true.shape[0], 1):
        got = shape_of(out) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"encoder.log_prob: expected output shape [B, S] = [{z_true.shape[0]}, 1] for z "
            f"[{z_true.shape[0]}, 1, {z_true.shape[1]}], received {got}"
        )
    return out[:, 0]


def weighted_moments(z: Tensor, log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance of a weighted particle cloud, per observation.

    Weights are ``softmax(log_weights)`` over particles (``-inf`` = zero weight); the covariance
    is the weighted second central moment ``sum_k w_k (z_k - mean)(z_k - mean)^T`` (no
    small-sample correction, as for an SMC target estimate).

    Shapes: z [B, K, d], log_weights [B, K] (unnormalized) -> (mean [B, d], cov [B, d, d]).

    Raises:
        ValueError: on mismatched shapes, NaN or ``+inf`` log-weights, or a row with no finite
            log-weight.

    >>> z = torch.tensor([[[0.0], [2.0]]])
    >>> weighted_moments(z, torch.zeros(1, 2))
    (tensor([[1.]]), tensor([[[1.]]]))
    """
    check_tensor("z", z, "[B, K, d]")
    check_tensor("log_weights", log_weights, "[B, K]")
    if z.dim() != 3 or z.shape[1] == 0:
        raise ValueError(f"z: expected shape [B, K, d] with K >= 1, received {shape_of(z)}")
    if log_weights.shape != z.shape[:2]:
        raise ValueError(
            f"log_weights: expected shape {shape_of(z)[:2]} to match z {shape_of(z)}, "
            f"received {shape_of(log_weights)}"
        )
    if bool((torch.isnan(log_weights) | (log_weights == math.inf)).any()):
        raise ValueError("log_weights: contains NaN or +inf")
    dead = torch.isneginf(log_weights).all(-1)
    if bool(dead.any()):
        rows = torch.nonzero(dead).flatten()[:5].tolist()
        raise ValueError(
            f"log_weights: {int(dead.sum())} row(s) have no finite entry (all zero weight), "
            f"first {rows}"
        )
    weights = torch.softmax(log_weights, dim=-1).to(z.dtype)  # [B, K]
    mean = torch.einsum("bk,bkd->bd", weights, z)
    centred = z - mean[:, None, :]
    cov = torch.einsum("bk,bki,bkj->bij", weights, centred, centred)
    return mean, cov


def summarize(values: Tensor | Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1), standard error of the mean, and count.

    With a single value, ``std`` and ``sem`` are NaN. NaN values propagate.

    Shapes: values [n] -> dict(mean, std, sem, n).

    >>> summarize(torch.tensor([1.0, 2.0, 3.0]))
    {'mean': 2.0, 'std': 1.0, 'sem': 0.5773502691896258, 'n': 3}
    """
    t = values if isinstance(values, Tensor) else torch.as_tensor(values, dtype=torch.float64)
    if t.dim() != 1 or t.shape[0] == 0:
        raise ValueError(f"values: expected shape [n] with n >= 1, received {shape_of(t)}")
    t = t.detach().cpu().to(torch.float64)
    n = t.shape[0]
    mean = float(t.mean())
    std = float(t.std(correction=1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n), "n": n}
