"""Calibration statistics of an amortized posterior, from its draws at simulated truths.

A posterior q(z | x) is calibrated when, over (z, x) ~ p(z) p(x | z), the truth z is
indistinguishable from a draw of q(. | x). Each statistic here turns that into something uniform
to test, batched over simulations b = 1..B with S draws each:

- Coverage: :func:`hpd_levels` (the level at which the truth enters q's highest-density region;
  needs ``log_prob``) and :func:`tarp_levels` (the same for balls around reference points;
  draws only) are uniform on [0, 1]; :func:`expected_coverage` is their empirical CDF, the
  expected-coverage curve, and :func:`ecdf_band` the simultaneous band a calibrated curve stays
  in.
- SBC (simulation-based calibration): :func:`sbc_ranks` (rank of each true coordinate among
  the draws, uniform on {0, ..., S}), :func:`sbc_histogram` (binned ranks and their expected
  counts) and :func:`sbc_uniformity` (chi-square p-values per coordinate).

:func:`smcwake.check_calibration` runs them as one check with a verdict; they are re-exported by
:mod:`smcwake.diagnostics` with the other metrics.

Shapes: samples [B, S, d], z_true [B, d], levels [B], ranks [B, d].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from smcwake._checks import check_tensor, shape_of

__all__ = [
    "ecdf_band",
    "expected_coverage",
    "hpd_levels",
    "sbc_histogram",
    "sbc_ranks",
    "sbc_uniformity",
    "tarp_levels",
]


# -------------------------------------------------------------------------------- coverage
def hpd_levels(log_q_samples: Tensor, log_q_true: Tensor) -> Tensor:
    """Credibility level at which the truth enters q's highest-density region, per observation.

    The level is the fraction of q-samples whose log-density exceeds that of the truth: the
    smallest HPD region containing ``z_true`` has (estimated) probability mass equal to it. For a
    calibrated q these levels are uniform on [0, 1]. Ties count as not exceeding.

    Shapes: log_q_samples [B, S] (log q(z_s | x_b) at z_s ~ q(. | x_b)), log_q_true [B] -> [B].

    >>> hpd_levels(torch.tensor([[-1.0, -2.0, -3.0, -4.0]]), torch.tensor([-2.5]))
    tensor([0.5000])
    """
    check_tensor("log_q_samples", log_q_samples, "[B, S]")
    check_tensor("log_q_true", log_q_true, "[B]")
    if log_q_samples.dim() != 2 or log_q_samples.shape[1] == 0:
        raise ValueError(
            f"log_q_samples: expected shape [B, S] with S >= 1, received {shape_of(log_q_samples)}"
        )
    if log_q_true.shape != log_q_samples.shape[:1]:
        raise ValueError(
            f"log_q_true: expected shape [{log_q_samples.shape[0]}] to match log_q_samples "
            f"{shape_of(log_q_samples)}, received {shape_of(log_q_true)}"
        )
    dtype = torch.promote_types(log_q_samples.dtype, log_q_true.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return (log_q_samples > log_q_true[:, None]).to(dtype).mean(-1)


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
    check_tensor("samples", samples, "[B, S, d]")
    check_tensor("z_true", z_true, "[B, d]")
    check_tensor("references", references, "[B, d]")
    if samples.dim() != 3 or samples.shape[1] == 0:
        raise ValueError(
            f"samples: expected shape [B, S, d] with S >= 1, received {shape_of(samples)}"
        )
    B, _, d = samples.shape
    for name, t in (("z_true", z_true), ("references", references)):
        if t.shape != (B, d):
            raise ValueError(
                f"{name}: expected shape [{B}, {d}] to match samples {shape_of(samples)}, "
                f"received {shape_of(t)}"
            )
    if scale is None:
        scale = torch.ones(d, dtype=samples.dtype, device=samples.device)
    elif not isinstance(scale, Tensor) or scale.shape != (d,) or not bool((scale > 0).all()):
        got = shape_of(scale) if isinstance(scale, Tensor) else type(scale).__name__
        raise ValueError(f"scale: expected positive values of shape [{d}], received {got}")
    dtype = torch.promote_types(samples.dtype, z_true.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    ref = references.to(dtype)[:, None, :]
    scale = scale.to(dtype)
    dist_samples = ((samples.to(dtype) - ref) / scale).square().sum(-1)  # [B, S]
    dist_true = ((z_true.to(dtype)[:, None, :] - ref) / scale).square().sum(-1)  # [B, 1]
    return (dist_samples < dist_true).to(dtype).mean(-1)


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
    check_tensor("levels_at_truth", levels_at_truth, "[B]")
    if levels_at_truth.dim() != 1 or levels_at_truth.shape[0] == 0:
        raise ValueError(
            "levels_at_truth: expected shape [B] with B >= 1, received "
            f"{shape_of(levels_at_truth)}"
        )
    dtype = levels_at_truth.dtype if levels_at_truth.is_floating_point() else torch.float64
    if grid is None:
        grid = torch.linspace(0.0, 1.0, 101, dtype=dtype, device=levels_at_truth.device)
    else:
        check_tensor("grid", grid, "[L]")
        if grid.dim() != 1:
            raise ValueError(f"grid: expected shape [L], received {shape_of(grid)}")
    coverage = (levels_at_truth[None, :] <= grid[:, None]).to(dtype).mean(-1)
    return grid, coverage


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


# ------------------------------------------------------------------------------------- SBC
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
    check_tensor("samples", samples, "[B, S, d]")
    check_tensor("z_true", z_true, "[B, d]")
    if samples.dim() != 3 or samples.shape[1] == 0:
        raise ValueError(
            f"samples: expected shape [B, S, d] with S >= 1, received {shape_of(samples)}"
        )
    if z_true.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(
            f"z_true: expected shape [{samples.shape[0]}, {samples.shape[2]}] to match samples "
            f"{shape_of(samples)}, received {shape_of(z_true)}"
        )
    truth = z_true[:, None, :]
    below = (samples < truth).sum(1)
    ties = (samples == truth).sum(1)
    if generator is None:
        generator = torch.Generator(device=samples.device).manual_seed(0)
    u = torch.rand(below.shape, generator=generator, dtype=torch.float64, device=samples.device)
    extra = torch.minimum((u * (ties + 1)).floor().to(torch.int64), ties)
    return below + extra


def _check_ranks(ranks: Tensor, num_samples: int) -> None:
    """ValueError unless ``ranks`` is an integer tensor [B, d] with values in [0, num_samples]."""
    check_tensor("ranks", ranks, "[B, d]")
    if ranks.dim() != 2 or ranks.shape[0] == 0:
        raise ValueError(f"ranks: expected shape [B, d] with B >= 1, received {shape_of(ranks)}")
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

    counts, expected = sbc_histogram(ranks, num_samples, num_bins=num_bins)  # [d, bins], [bins]
    p_values = [float(chisquare(row.numpy(), expected.numpy()).pvalue) for row in counts]
    return torch.tensor(p_values, dtype=torch.float64)
