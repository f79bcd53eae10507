"""Metrics for judging approximate posteriors against a reference.

Every function is batched over observations and takes and returns torch tensors, except
:func:`c2st` and :func:`summarize`, which return Python numbers for report tables.

- Gaussian divergences: :func:`gaussian_kl`, :func:`forward_kl_gaussian` (KL(posterior || q), the
  inclusive KL SMC-Wake minimizes), :func:`reverse_kl_gaussian` (KL(q || posterior)),
  :func:`mean_l1`.
- Two-sample tests: :func:`c2st` (classifier accuracy, 0.5 = indistinguishable; the classifier is
  named by :data:`C2ST_CLASSIFIER`) and :func:`mmd` (unbiased squared MMD, Gaussian kernel).
- Calibration: :func:`hpd_levels` and :func:`expected_coverage` (expected coverage of highest
  density regions of q), :func:`sbc_ranks` and :func:`sbc_uniformity` (simulation-based
  calibration), :func:`sbc_histogram` (binned ranks and their expected counts),
  :func:`tarp_levels` (TARP coverage with random reference points) and :func:`ecdf_band`
  (a simultaneous band for coverage curves).
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

from smcwake._optional import require

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
def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _check_tensor(name: str, t: object, expected: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {expected}, received {type(t).__name__}")
    return t


def _check_gaussian(name: str, mean: Tensor, cov: Tensor) -> int:
    """Check ``mean [*, d]`` and ``cov [*, d, d]``; return d."""
    _check_tensor(f"mean_{name}", mean, "[*, d]")
    _check_tensor(f"cov_{name}", cov, "[*, d, d]")
    if mean.dim() < 1 or mean.shape[-1] == 0:
        raise ValueError(
            f"mean_{name}: expected shape [*, d] with d >= 1, received {_shape(mean)}"
        )
    d = mean.shape[-1]
    if cov.dim() < 2 or cov.shape[-2:] != (d, d):
        raise ValueError(
            f"cov_{name}: expected shape [*, {d}, {d}] to match mean_{name} {_shape(mean)}, "
            f"received {_shape(cov)}"
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
            f"mean_q: expected event dimension d = {d} (from mean_p {_shape(mean_p)}), "
            f"received {_shape(mean_q)}"
        )
    try:
        batch = torch.broadcast_shapes(
            mean_p.shape[:-1], cov_p.shape[:-2], mean_q.shape[:-1], cov_q.shape[:-2]
        )
    except RuntimeError as err:
        raise ValueError(
            "gaussian_kl: batch shapes do not broadcast: mean_p "
            f"{_shape(mean_p)}, cov_p {_shape(cov_p)}, mean_q {_shape(mean_q)}, "
            f"cov_q {_shape(cov_q)}"
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
    _check_tensor("mean_a", mean_a, "[*, d]")
    _check_tensor("mean_b", mean_b, "[*, d]")
    if mean_a.dim() < 1 or mean_b.dim() < 1 or mean_a.shape[-1] != mean_b.shape[-1]:
        raise ValueError(
            f"mean_b: expected shape [*, d] with the d of mean_a {_shape(mean_a)}, "
            f"received {_shape(mean_b)}"
        )
    return (mean_a - mean_b).abs().sum(-1)


# ------------------------------------------------------------------------ two-sample tests
def _check_samples(name: str, t: Tensor) -> None:
    _check_tensor(name, t, "[N, d]")
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: expected shape [N, d] with N, d >= 1, received {_shape(t)}")


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
            f"q_samples: expected shape [M, {d}] to match p_samples {_shape(p_samples)}, "
            f"received {_shape(q_samples)}"
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
            f"y: expected shape [M, {x.shape[1]}] to match x {_shape(x)}, received {_shape(y)}"
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


# ------------------------------------------------------------------------------ coverage
def hpd_levels(log_q_samples: Tensor, log_q_true: Tensor) -> Tensor:
    """Credibility level at which the truth enters q's highest-density region, per observation.

    The level is the fraction of q-samples whose log-density exceeds that of the truth: the
    smallest HPD region containing ``z_true`` has (estimated) probability mass equal to it. For a
    calibrated q these levels are uniform on [0, 1]. Ties count as not exceeding.

    Shapes: log_q_samples [B, S] (log q(z_s | x_b) at z_s ~ q(. | x_b)), log_q_true [B] -> [B].

    >>> hpd_levels(torch.tensor([[-1.0, -2.0, -3.0, -4.0]]), torch.tensor([-2.5]))
    tensor([0.5000])
    """
    _check_tensor("log_q_samples", log_q_samples, "[B, S]")
    _check_tensor("log_q_true", log_q_true, "[B]")
    if log_q_samples.dim() != 2 or log_q_samples.shape[1] == 0:
        raise ValueError(
            f"log_q_samples: expected shape [B, S] with S >= 1, received {_shape(log_q_samples)}"
        )
    if log_q_true.shape != log_q_samples.shape[:1]:
        raise ValueError(
            f"log_q_true: expected shape [{log_q_samples.shape[0]}] to match log_q_samples "
            f"{_shape(log_q_samples)}, received {_shape(log_q_true)}"
        )
    dtype = torch.promote_types(log_q_samples.dtype, log_q_true.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return (log_q_samples > log_q_true[:, None]).to(dtype).mean(-1)


def expected_coverage(
    levels_at_truth: Tensor, grid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Empirical coverage of credible regions at each nominal level.

    ``coverage[l]`` is the fraction of observations whose truth lies in the level-``grid[l]``
    region, i.e. ``levels_at_truth <= grid[l]``. A calibrated posterior gives the diagonal;
    below it is overconfident, above it underconfident. ``grid`` defaults to 101 points in [0, 1].

    Shapes: levels_at_truth [B], grid [L] or None -> (grid [L], coverage [L]).

    >>> grid, coverage = expected_coverage(torch.tensor([0.1, 0.4, 0.6, 0.9]), torch.tensor([0.5]))
    >>> coverage
    tensor([0.5000])
    """
    _check_tensor("levels_at_truth", levels_at_truth, "[B]")
    if levels_at_truth.dim() != 1 or levels_at_truth.shape[0] == 0:
        raise ValueError(
            f"levels_at_truth: expected shape [B] with B >= 1, received {_shape(levels_at_truth)}"
        )
    dtype = levels_at_truth.dtype if levels_at_truth.is_floating_point() else torch.float64
    if grid is None:
        grid = torch.linspace(0.0, 1.0, 101, dtype=dtype, device=levels_at_truth.device)
    else:
        _check_tensor("grid", grid, "[L]")
        if grid.dim() != 1:
            raise ValueError(f"grid: expected shape [L], received {_shape(grid)}")
    coverage = (levels_at_truth[None, :] <= grid[:, None]).to(dtype).mean(-1)
    return grid, coverage


# --------------------------------------------------------------------------------------- SBC
def sbc_ranks(
    samples: Tensor, z_true: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    """Rank of the true parameter among posterior samples, per dimension (SBC).

    ``rank = #{s : samples[b, s, j] < z_true[b, j]}`` plus, for ties, a uniform draw from
    ``{0, ..., #ties}``, so ranks are uniform on ``{0, ..., S}`` when the truth is a draw from the
    same distribution as the samples. ``generator`` (on the samples' device) breaks ties; None
    uses a fresh generator seeded with 0, so results are deterministic either way.

    Shapes: samples [B, S, d], z_true [B, d] -> [B, d] int64 in [0, S].

    References:
        Talts et al., "Validating Bayesian inference algorithms with simulation-based
        calibration", arXiv:1804.06788, 2018.

    >>> sbc_ranks(torch.tensor([[[0.0], [1.0], [2.0]]]), torch.tensor([[1.5]]))
    tensor([[2]])
    """
    _check_tensor("samples", samples, "[B, S, d]")
    _check_tensor("z_true", z_true, "[B, d]")
    if samples.dim() != 3 or samples.shape[1] == 0:
        raise ValueError(
            f"samples: expected shape [B, S, d] with S >= 1, received {_shape(samples)}"
        )
    if z_true.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(
            f"z_true: expected shape [{samples.shape[0]}, {samples.shape[2]}] to match samples "
            f"{_shape(samples)}, received {_shape(z_true)}"
        )
    truth = z_true[:, None, :]
    below = (samples < truth).sum(1)
    ties = (samples == truth).sum(1)
    if generator is None:
        generator = torch.Generator(device=samples.device).manual_seed(0)
    u = torch.rand(below.shape, generator=generator, dtype=torch.float64, device=samples.device)
    extra = torch.minimum((u * (ties + 1)).floor().to(torch.int64), ties)
    return below + extra


def sbc_uniformity(ranks: Tensor, num_samples: int, *, num_bins: int | None = None) -> Tensor:
    """Per-dimension p-values of a chi-square test that SBC ranks are uniform on {0, ..., S}.

    Rank ``r`` goes to bin ``floor(r * num_bins / (S + 1))``; expected counts account for bins
    holding unequal numbers of rank values when ``num_bins`` does not divide ``S + 1``.
    ``num_bins`` defaults to ``min(20, S + 1, B // 5)`` (at least 2), keeping about five or more
    expected counts per bin. Small p-values flag miscalibration (bias, over- or underdispersion).

    Shapes: ranks [B, d] integer in [0, S], num_samples S -> p-values [d] float64.

    >>> ranks = torch.arange(100).reshape(100, 1) % 10
    >>> sbc_uniformity(ranks, num_samples=9)
    tensor([1.], dtype=torch.float64)
    """
    from scipy.stats import chisquare

    _check_tensor("ranks", ranks, "[B, d]")
    if ranks.dim() != 2 or ranks.shape[0] == 0:
        raise ValueError(f"ranks: expected shape [B, d] with B >= 1, received {_shape(ranks)}")
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"ranks: expected an integer tensor, received dtype {ranks.dtype}")
    if num_samples < 1:
        raise ValueError(f"num_samples: expected an integer >= 1, received {num_samples}")
    if bool((ranks < 0).any()) or bool((ranks > num_samples).any()):
        raise ValueError(
            f"ranks: expected values in [0, num_samples = {num_samples}], received values in "
            f"[{int(ranks.min())}, {int(ranks.max())}]"
        )
    num_values = num_samples + 1
    if num_bins is None:
        num_bins = max(2, min(20, num_values, ranks.shape[0] // 5))
    if not 2 <= num_bins <= num_values:
        raise ValueError(
            f"num_bins: expected an integer in [2, num_samples + 1 = {num_values}], "
            f"received {num_bins}"
        )
    ranks = ranks.detach().cpu().to(torch.int64)
    bins = ranks * num_bins // num_values  # [B, d]
    values_per_bin = torch.bincount(
        torch.arange(num_values) * num_bins // num_values, minlength=num_bins
    ).to(torch.float64)
    expected = ranks.shape[0] * values_per_bin / num_values
    p_values = []
    for j in range(ranks.shape[1]):
        observed = torch.bincount(bins[:, j], minlength=num_bins).to(torch.float64)
        p_values.append(float(chisquare(observed.numpy(), expected.numpy()).pvalue))
    return torch.tensor(p_values, dtype=torch.float64)


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
    _check_tensor("z_true", z_true, "[B, d]")
    _check_tensor("x", x, "[B, p]")
    if z_true.dim() != 2 or x.dim() != 2 or z_true.shape[0] != x.shape[0]:
        raise ValueError(
            f"z_true, x: expected shapes [B, d] and [B, p] with the same B, received "
            f"{_shape(z_true)} and {_shape(x)}"
        )
    with torch.no_grad():
        out = encoder.log_prob(z_true[:, None, :], x)
    if not isinstance(out, Tensor) or out.shape != (z_true.shape[0], 1):
        got = _shape(out) if isinstance(out, Tensor) else type(out).__name__
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
    _check_tensor("z", z, "[B, K, d]")
    _check_tensor("log_weights", log_weights, "[B, K]")
    if z.dim() != 3 or z.shape[1] == 0:
        raise ValueError(f"z: expected shape [B, K, d] with K >= 1, received {_shape(z)}")
    if log_weights.shape != z.shape[:2]:
        raise ValueError(
            f"log_weights: expected shape {_shape(z)[:2]} to match z {_shape(z)}, "
            f"received {_shape(log_weights)}"
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
        raise ValueError(f"values: expected shape [n] with n >= 1, received {_shape(t)}")
    t = t.detach().cpu().to(torch.float64)
    n = t.shape[0]
    mean = float(t.mean())
    std = float(t.std(correction=1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n), "n": n}


# --------------------------------------------------- calibration primitives (SBC, TARP, bands)
def _check_ranks(ranks: Tensor, num_samples: int) -> None:
    """ValueError unless ``ranks`` is an integer tensor [B, d] with values in [0, num_samples]."""
    _check_tensor("ranks", ranks, "[B, d]")
    if ranks.dim() != 2 or ranks.shape[0] == 0:
        raise ValueError(f"ranks: expected shape [B, d] with B >= 1, received {_shape(ranks)}")
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"ranks: expected an integer tensor, received dtype {ranks.dtype}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected an integer >= 1, received {num_samples!r}")
    low, high = int(ranks.min()), int(ranks.max())
    if low < 0 or high > num_samples:
        raise ValueError(
            f"ranks: expected values in [0, num_samples = {num_samples}], received values in "
            f"[{low}, {high}]"
        )


def sbc_histogram(
    ranks: Tensor, num_samples: int, *, num_bins: int | None = None
) -> tuple[Tensor, Tensor]:
    """Counts of SBC ranks per bin and the counts a calibrated posterior gives on average.

    Binned as :func:`sbc_uniformity` bins them (rank ``r`` to bin
    ``floor(r * num_bins / (S + 1))``, same default ``num_bins``), so a histogram and its test
    agree. Under calibration the count of bin ``b`` is Binomial(B, m_b / (S + 1)), m_b the number
    of rank values the bin holds; ``expected`` is its mean.

    Shapes: ranks [B, d] integer in [0, S], num_samples S -> (counts [d, bins] float64,
    expected [bins] float64).

    >>> counts, expected = sbc_histogram(torch.arange(10).reshape(10, 1), 9, num_bins=5)
    >>> counts.tolist(), expected.tolist()
    ([[2.0, 2.0, 2.0, 2.0, 2.0]], [2.0, 2.0, 2.0, 2.0, 2.0])
    """
    _check_ranks(ranks, num_samples)
    num_values = num_samples + 1
    if num_bins is None:
        num_bins = max(2, min(20, num_values, ranks.shape[0] // 5))
    if isinstance(num_bins, bool) or not isinstance(num_bins, int):
        raise ValueError(f"num_bins: expected an integer or None, received {num_bins!r}")
    if not 2 <= num_bins <= num_values:
        raise ValueError(
            f"num_bins: expected an integer in [2, num_samples + 1 = {num_values}], "
            f"received {num_bins}"
        )
    bins = ranks.detach().cpu().to(torch.int64) * num_bins // num_values  # [B, d]
    offsets = torch.arange(bins.shape[1])[None, :] * num_bins
    counts = torch.bincount((bins + offsets).reshape(-1), minlength=bins.shape[1] * num_bins)
    values_per_bin = torch.bincount(
        torch.arange(num_values) * num_bins // num_values, minlength=num_bins
    )
    expected = ranks.shape[0] * values_per_bin.to(torch.float64) / num_values
    return counts.reshape(bins.shape[1], num_bins).to(torch.float64), expected


def tarp_levels(
    samples: Tensor, z_true: Tensor, references: Tensor, *, scale: Tensor | None = None
) -> Tensor:
    """Credibility level at which the truth enters the TARP ball around a reference point.

    TARP's credible region of level ``a`` is the ball centred on the reference point
    ``references[b]`` that holds a fraction ``a`` of q's samples; the truth lies inside it
    exactly when ``a`` exceeds the fraction of samples closer to the reference than the truth,
    which is what this returns. For a posterior that equals the true one the truth and the
    samples are exchangeable, so the count of closer samples is uniform on {0, ..., S} and
    ``expected_coverage`` of these levels follows the diagonal (up to the 1/(S+1) steps).
    Distances are Euclidean after dividing each coordinate by ``scale`` (default 1), which
    should not depend on the (z_true, x) pairs tested, e.g. the spread of prior draws.

    Shapes: samples [B, S, d], z_true [B, d], references [B, d], scale [d] or None -> [B].

    References:
        Lemos, Coogan, Hezaveh & Perreault-Levasseur, "Sampling-based accuracy testing of
        posterior estimators for general inference", ICML 2023.

    >>> samples = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])
    >>> tarp_levels(samples, torch.tensor([[2.5]]), torch.tensor([[0.0]]))
    tensor([0.7500])
    """
    _check_tensor("samples", samples, "[B, S, d]")
    _check_tensor("z_true", z_true, "[B, d]")
    _check_tensor("references", references, "[B, d]")
    if samples.dim() != 3 or samples.shape[1] == 0:
        raise ValueError(
            f"samples: expected shape [B, S, d] with S >= 1, received {_shape(samples)}"
        )
    B, _, d = samples.shape
    for name, t in (("z_true", z_true), ("references", references)):
        if t.shape != (B, d):
            raise ValueError(
                f"{name}: expected shape [{B}, {d}] to match samples {_shape(samples)}, "
                f"received {_shape(t)}"
            )
    if scale is None:
        scale = torch.ones(d, dtype=samples.dtype, device=samples.device)
    elif not isinstance(scale, Tensor) or scale.shape != (d,) or not bool((scale > 0).all()):
        got = _shape(scale) if isinstance(scale, Tensor) else type(scale).__name__
        raise ValueError(f"scale: expected positive values of shape [{d}], received {got}")
    dtype = torch.promote_types(samples.dtype, z_true.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    ref = references.to(dtype)[:, None, :]
    scale = scale.to(dtype)
    dist_samples = ((samples.to(dtype) - ref) / scale).square().sum(-1)  # [B, S]
    dist_true = ((z_true.to(dtype)[:, None, :] - ref) / scale).square().sum(-1)  # [B, 1]
    return (dist_samples < dist_true).to(dtype).mean(-1)


def ecdf_band(num: int, significance: float) -> float:
    """Half-width of a simultaneous band for an empirical CDF of ``num`` independent draws.

    By the Dvoretzky-Kiefer-Wolfowitz inequality with Massart's constant,
    ``P(sup_t |F_num(t) - F(t)| > eps) <= 2 exp(-2 num eps^2)`` for any distribution F
    (continuous or not), so ``eps = sqrt(log(2 / significance) / (2 num))`` bounds the whole
    curve with probability at least ``1 - significance``. Expected-coverage curves are such
    empirical CDFs (of the credibility levels at the truths), so a calibrated posterior's
    curve leaves the band around its expected curve with probability at most ``significance``.

    Shapes: scalars -> float.

    References:
        Massart, "The tight constant in the Dvoretzky-Kiefer-Wolfowitz inequality", Annals of
        Probability, 1990.

    >>> round(ecdf_band(1000, 0.01), 4)
    0.0515
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num: expected an integer >= 1, received {num!r}")
    if not 0.0 < significance < 1.0:
        raise ValueError(f"significance: expected a number in (0, 1), received {significance!r}")
    return math.sqrt(math.log(2.0 / significance) / (2.0 * num))
