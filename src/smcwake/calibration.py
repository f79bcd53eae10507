"""Calibration of an amortized posterior in one call: SBC ranks, expected coverage and TARP.

:func:`check_calibration` draws parameters from the prior and data from the model's simulator,
asks the posterior for draws given each simulated observation, and runs three tests of the
same hypothesis, that the posterior is the true one on average over the prior predictive:

- **SBC** (simulation-based calibration): the rank of each true coordinate among the draws is
  uniform; a chi-square test per coordinate
  (:func:`smcwake.calibration_metrics.sbc_uniformity`);
- **expected coverage** of the highest-density regions of q (needs ``posterior.log_prob``):
  the fraction of true parameters inside the level-a region is a, at every level a;
- **TARP** (Lemos et al. 2023): the same for balls around random reference points, which needs
  only draws and also sees errors that leave the HPD levels right.

:class:`CalibrationResult` holds what each test computed, a pass/fail verdict whose thresholds
follow from the tests' null distributions (see :func:`check_calibration`), a text
:meth:`~CalibrationResult.summary` and a figure (:meth:`~CalibrationResult.plot`).

Shapes: simulations z [N, d], x [N, p]; posterior draws [N, S, d].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import Tensor

from smcwake import calibration_metrics as metrics
from smcwake import diagnostics
from smcwake._optional import require
from smcwake.model import Model

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.figure import Figure

__all__ = ["CalibrationResult", "Check", "SamplesPosterior", "check_calibration"]

logger = logging.getLogger(__name__)


class SamplesPosterior(Protocol):
    """What :func:`check_calibration` needs: draws given observations (``log_prob`` optional).

    Shapes: ``sample(x [B, p], n) -> [B, n, d]``; ``log_prob(z [B, S, d], x [B, p]) -> [B, S]``.
    """

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor: ...


class Check(NamedTuple):
    """One test of a calibration check: its statistic, its threshold, and the verdict."""

    name: str  # "sbc", "coverage" or "tarp"
    statistic: float  # SBC: Bonferroni p-value; coverage and TARP: largest distance to expected
    threshold: float  # SBC: smallest p-value that passes; coverage, TARP: band half-width
    passed: bool
    detail: str  # what the statistic is and, on failure, which way the posterior errs


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """Everything :func:`check_calibration` computed, and its verdict.

    Attributes:
        num_simulations: N, the (z, x) pairs drawn from the prior and the simulator.
        num_samples: S, posterior draws per simulation.
        significance: the largest probability with which a calibrated posterior fails.
        ranks: SBC ranks [N, d] of each true coordinate among the S draws (0..S).
        sbc_p_values: chi-square p-value of rank uniformity per coordinate [d].
        levels: credibility levels [S + 1], k / S for k = 0..S.
        expected: coverage a calibrated posterior has on average at each level [S + 1]
            ((floor(a S) + 1) / (S + 1): the levels are counts among S draws).
        coverage: expected coverage of q's highest-density regions [S + 1] (None when the
            posterior has no ``log_prob``).
        tarp: TARP's expected coverage probability at each level [S + 1].
        tarp_atc: area between the TARP curve and ``expected`` (positive: above, i.e. regions
            that hold the truth more often than they should).
        band: half-width of the simultaneous band a calibrated coverage curve stays inside.
        checks: the tests and their verdicts.
        has_log_prob: whether the HPD coverage was computed.
    """

    num_simulations: int
    num_samples: int
    significance: float
    ranks: Tensor
    sbc_p_values: Tensor
    levels: Tensor
    expected: Tensor
    coverage: Tensor | None
    tarp: Tensor
    tarp_atc: float
    band: float
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        """True when every test passed."""
        return all(check.passed for check in self.checks)

    def summary(self) -> str:
        """A few lines: the verdict, each test's statistic against its threshold."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"Calibration check on {self.num_simulations} simulations, {self.num_samples} "
            f"posterior draws each: {verdict}"
        ]
        for check in self.checks:
            mark = "pass" if check.passed else "FAIL"
            lines.append(f"  [{mark}] {check.name:<8} {check.detail}")
        per_test = self.significance / len(self.checks)
        lines.append(
            f"A calibrated posterior fails at most {self.significance:.1%} of the time "
            f"({len(self.checks)} tests at {per_test:.2g} each, Bonferroni)."
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        failed = [c.name for c in self.checks if not c.passed]
        return (
            f"CalibrationResult(passed={self.passed}, failed={failed}, "
            f"num_simulations={self.num_simulations}, num_samples={self.num_samples})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and lists, e.g. for ``json.dumps``."""
        return {
            "passed": self.passed,
            "num_simulations": self.num_simulations,
            "num_samples": self.num_samples,
            "significance": self.significance,
            "checks": [check._asdict() for check in self.checks],
            "sbc_p_values": self.sbc_p_values.tolist(),
            "levels": self.levels.tolist(),
            "expected": self.expected.tolist(),
            "coverage": None if self.coverage is None else self.coverage.tolist(),
            "tarp": self.tarp.tolist(),
            "tarp_atc": self.tarp_atc,
            "band": self.band,
        }

    def plot(self, labels: Sequence[str] | None = None) -> Figure:
        """SBC rank histograms (top) and the HPD and TARP coverage curves with their band.

        ``labels`` names the coordinates; rank histograms are drawn for the first
        :data:`smcwake.plot.MAX_DIMS`. Needs matplotlib (``pip install 'smcwake[plot]'``).
        """
        from smcwake import plot

        plt = require("matplotlib.pyplot", "CalibrationResult.plot")
        shown = range(min(self.ranks.shape[1], plot.MAX_DIMS))  # the first coordinates
        cols = min(len(shown), 4)
        rows = math.ceil(len(shown) / cols)
        fig = plt.figure(figsize=(max(9.0, 3.2 * cols), 2.6 * rows + 4.4), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[2.6 * rows, 4.4])
        plot.sbc_ranks(self.ranks, self.num_samples, labels=labels, dims=shown, fig=top)
        more = f", first {len(shown)} of {self.ranks.shape[1]} coordinates"
        top.suptitle(f"SBC ranks{more if self.ranks.shape[1] > len(shown) else ''}", fontsize=10)
        curves = [("tarp", self.tarp, "TARP (balls around random points)")]
        if self.coverage is not None:
            curves.insert(0, ("coverage", self.coverage, "highest-density regions of q"))
        axes = bottom.subplots(1, len(curves), squeeze=False)[0]
        verdicts = {check.name: check.passed for check in self.checks}
        for ax, (name, curve, title) in zip(axes, curves, strict=True):
            plot.coverage(
                self.levels,
                curve,
                labels=[f"{name}: {'pass' if verdicts[name] else 'FAIL'}"],
                num_simulations=self.num_simulations,
                significance=self.significance / len(self.checks),
                expected=self.expected,
                annotate=name == "coverage",
                title=title,
                ax=ax,
            )
        return fig


def _generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator: expected a torch.Generator or None, received {type(generator).__name__}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed: expected an integer or None, received {seed!r}")
    if seed is not None and generator is not None:
        raise ValueError("seed and generator: pass one of them, not both")
    if generator is not None:
        return generator
    if seed is None:  # one draw from torch's global random state seeds the check
        seed = int(torch.randint(0, 2**62, (1,)))
    return torch.Generator(device=device).manual_seed(seed)


def _posterior_generator(
    g: torch.Generator, given: torch.Generator | None, device: torch.device
) -> torch.Generator:
    """The posterior's source of draws: ``g``, unless ``g`` was made here on the CPU for a
    posterior on another device; then a generator on that device, seeded from ``g``."""
    if given is None and device.type != "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        return torch.Generator(device=device).manual_seed(seed)
    return g


def _placement(posterior: object) -> tuple[torch.dtype | None, torch.device]:
    """dtype and device of the posterior's first floating parameter (an ``nn.Module``), if any."""
    parameters = getattr(posterior, "parameters", None)
    if callable(parameters):
        for p in parameters():
            if isinstance(p, Tensor) and p.is_floating_point():
                return p.dtype, p.device
    return None, torch.device("cpu")


def _draw(posterior: SamplesPosterior, x: Tensor, n: int, d: int, g: torch.Generator) -> Tensor:
    """posterior.sample with its output checked. Shapes: x [B, p] -> [B, n, d]."""
    samples = posterior.sample(x, n, generator=g)
    if not isinstance(samples, Tensor) or samples.shape != (x.shape[0], n, d):
        got = list(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(
            f"posterior.sample: expected a tensor [B, n, d] = [{x.shape[0]}, {n}, {d}] for x "
            f"{list(x.shape)}, received {got}"
        )
    bad = ~torch.isfinite(samples).all(-1)
    if bool(bad.any()):
        raise ValueError(
            f"posterior.sample returned NaN or inf in {int(bad.sum())} of {bad.numel()} draws "
            f"(first in simulation {int(torch.nonzero(bad)[0, 0])} of this batch)"
        )
    return samples


def _coverage_check(
    name: str, curve: Tensor, expected: Tensor, band: float, what: str, *, directional: bool
) -> Check:
    """Largest distance of a coverage curve to its expected curve, against the DKW band.

    ``directional``: whether the side of the diagonal tells over- from under-confidence (it
    does for HPD regions; for TARP it depends on where the reference points lie).
    """
    gap = curve - expected
    largest = float(gap.abs().max())
    passed = largest <= band
    detail = f"max |{what} - expected| = {largest:.3f}, needs <= {band:.3f}"
    if not passed and directional:
        mean_gap = float(gap.mean())
        if mean_gap < 0:
            detail += "; below the diagonal: regions too small, over-confident"
        elif mean_gap > 0:
            detail += "; above the diagonal: regions too large, under-confident"
    return Check(name, largest, band, passed, detail)


def check_calibration(
    posterior: SamplesPosterior,
    model: Model,
    num_simulations: int = 1000,
    *,
    num_samples: int = 100,
    significance: float = 0.01,
    references: Tensor | None = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> CalibrationResult:
    """Test whether a posterior is calibrated, on simulations from the model.

    Draws ``z_i ~ p(z)`` and ``x_i ~ p(x | z_i)`` (``model.simulate``) for i = 1..N, then S draws
    from ``posterior`` given each ``x_i``, and runs three tests (see :mod:`smcwake.calibration`):

    - **SBC**: a chi-square test of uniform ranks per coordinate; its statistic is the smallest
      p-value times d (Bonferroni over coordinates).
    - **Expected coverage** of q's highest-density regions (when the posterior has
      ``log_prob``): the level at which each truth enters the HPD region, estimated from the S
      draws, is uniform on {0, 1/S, ..., 1} for a calibrated posterior, so the coverage curve
      (their empirical CDF) is ``expected = (floor(a S) + 1) / (S + 1)`` on average.
    - **TARP**: the same curve for balls centred on reference points, by default one fresh
      prior draw per simulation, with distances measured in units of the reference points'
      spread per coordinate (so that the test does not depend on units).

    Thresholds. A calibrated posterior fails the whole check with probability at most about
    ``significance``: each of the m tests (3, or 2 without ``log_prob``) runs at level
    ``significance / m`` (Bonferroni). SBC fails when its Bonferroni p-value is below that
    (the chi-square p-value is asymptotic: on 20,000 sets of 1,000 uniform ranks its 1/300
    quantile was exceeded 0.40% of the time instead of 0.33%). Each coverage curve is an
    empirical CDF of N independent levels, so by the Dvoretzky-Kiefer-Wolfowitz inequality a
    calibrated curve leaves the band ``expected +- sqrt(log(2 m / significance) / (2 N))``
    anywhere with probability at most ``significance / m``, exactly
    (:func:`smcwake.calibration_metrics.ecdf_band`; the bound is conservative); a curve outside
    fails.
    With more simulations the tests find smaller errors: look at the size of the deviation,
    not only at the verdict.

    What passing means. These tests check calibration on average over the prior predictive
    distribution, which is necessary, not sufficient: the prior itself, a "posterior" that
    ignores x, passes all three (TARP only sees such errors with reference points that depend
    on x, passed as ``references``). Compare the posterior's width with the prior's, and with
    a reference posterior where one exists (C2ST, :mod:`smcwake.diagnostics`). And the
    simulations cover the whole prior predictive: a posterior trained on one dataset is only
    expected to be right for observations like those (amortization), so a failure on
    simulations unlike the data says less about the data at hand.

    Args:
        posterior: anything with ``sample(x, n, *, generator=None) -> [B, n, d]`` (an encoder,
            a trained posterior); with ``log_prob(z [B, S, d], x [B, p]) -> [B, S]`` the HPD
            coverage is tested too.
        model: a :class:`~smcwake.Model` with a simulator (``Model(..., simulate=fn)``).
        num_simulations: N. The tests' power grows with N (the band shrinks as 1/sqrt(N)).
        num_samples: S, posterior draws per simulation (levels are resolved to 1/S).
        significance: the probability with which a calibrated posterior fails.
        references: TARP reference points [N, d] (default: prior draws).
        batch_size: simulations per call to ``posterior.sample``.
        generator, seed: the source of randomness, or its seed (one of them; with neither,
            the check is seeded from torch's global random state). A generator given is used
            for the prior, the simulator and the posterior alike, so it must be on the
            posterior's device; with ``seed``, the posterior draws with a generator on its own.

    Shapes: references [N, d]; result.ranks [N, d]; curves [S + 1].

    References:
        Talts et al., "Validating Bayesian inference algorithms with simulation-based
        calibration", arXiv:1804.06788, 2018.
        Lemos, Coogan, Hezaveh & Perreault-Levasseur, "Sampling-based accuracy testing of
        posterior estimators for general inference", ICML 2023.

    >>> from torch.distributions import Independent, Normal
    >>> prior = Independent(Normal(torch.zeros(1), torch.ones(1)), 1)
    >>> model = Model(prior, lambda z, x: Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1),
    ...               simulate=lambda z: z + torch.randn_like(z))
    >>> class Exact:  # the posterior N(x / 2, 1 / 2) of this model
    ...     def sample(self, x, n, *, generator=None):
    ...         noise = torch.randn(x.shape[0], n, 1, generator=generator)
    ...         return x[:, None, :] / 2 + noise * 0.5**0.5
    >>> result = check_calibration(Exact(), model, 200, seed=0)
    >>> result.passed, [check.name for check in result.checks]
    (True, ['sbc', 'tarp'])
    """
    has_log_prob = _check_arguments(
        posterior, model, num_simulations, num_samples, significance, batch_size
    )
    dtype, device = _placement(posterior)
    g = _generator(generator, seed, torch.device("cpu"))
    g_post = _posterior_generator(g, generator, device)
    z_true, x, references, scale = _simulate(model, num_simulations, references, g)
    x = x.to(device=device, dtype=dtype if dtype is not None else x.dtype)
    levels = _levels_at_truth(
        posterior, x, z_true, references, scale, num_samples, batch_size, g_post, has_log_prob
    )
    result = _assemble(levels, num_samples, float(significance))
    logger.info("%s", result.summary())
    return result


def _check_arguments(
    posterior: object,
    model: object,
    num_simulations: object,
    num_samples: object,
    significance: object,
    batch_size: object,
) -> bool:
    """Reject what :func:`check_calibration` cannot use; return whether q has ``log_prob``."""
    if not isinstance(model, Model):
        raise TypeError(f"model: expected an smcwake.Model, received {type(model).__name__}")
    if not model.can_simulate:
        raise ValueError(
            f"check_calibration needs simulations from the model, but model {model.name!r} has "
            "no simulator; build it as Model(prior, log_likelihood, simulate=fn) with "
            "fn(z [N, d]) -> x [N, p] drawing x ~ p(x | z)"
        )
    if not callable(getattr(posterior, "sample", None)):
        raise TypeError(
            "posterior: expected an object with sample(x, n, *, generator=None) -> [B, n, d], "
            f"received {type(posterior).__name__}"
        )
    for name, value, low in (
        ("num_simulations", num_simulations, 20),
        ("num_samples", num_samples, 2),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, received {value!r}")
    if isinstance(significance, bool) or not isinstance(significance, int | float):
        raise TypeError(f"significance: expected a number in (0, 1), received {significance!r}")
    if not 0.0 < significance < 1.0:
        raise ValueError(f"significance: expected a number in (0, 1), received {significance!r}")
    return callable(getattr(posterior, "log_prob", None))


def _simulate(
    model: Model, num: int, references: Tensor | None, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Truths z ~ p(z), data x ~ p(x | z), TARP's reference points and their spread.

    Shapes: -> (z_true [N, d], x [N, p], references [N, d], scale [d] float64, positive).
    """
    z_true = model.sample_prior((num,), generator=g)  # [N, d]
    x = model.simulate(z_true, generator=g)  # [N, p]
    if references is None:
        references = model.sample_prior((num,), generator=g)
    elif not isinstance(references, Tensor) or references.shape != (num, model.dim):
        got = list(references.shape) if isinstance(references, Tensor) else type(references)
        raise ValueError(
            f"references: expected shape [N, d] = [{num}, {model.dim}], received {got}"
        )
    scale = references.double().std(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return z_true, x, references, scale


class _Levels(NamedTuple):
    """Where each truth falls among the posterior's draws, per test."""

    ranks: Tensor  # [N, d] int64: SBC ranks among the S draws
    tarp: Tensor  # [N] float64: level of the TARP ball that reaches the truth
    hpd: Tensor | None  # [N] float64: level of q's HPD region that reaches it (with log_prob)


def _levels_at_truth(
    posterior: SamplesPosterior,
    x: Tensor,
    z_true: Tensor,
    references: Tensor,
    scale: Tensor,
    num_samples: int,
    batch_size: int,
    g: torch.Generator,
    has_log_prob: bool,
) -> _Levels:
    """S posterior draws per simulation, ``batch_size`` simulations at a time, reduced at once
    to the statistics of the three tests (the draws are not kept).

    Shapes: x [N, p] on the posterior's device, z_true [N, d], references [N, d], scale [d].
    """
    N, d = z_true.shape
    ranks, hpd, tarp = [], [], []
    with torch.no_grad():
        for start in range(0, N, batch_size):
            rows = slice(start, min(start + batch_size, N))
            samples = _draw(posterior, x[rows], num_samples, d, g)  # [b, S, d]
            truth = z_true[rows].to(device=samples.device)
            ranks.append(metrics.sbc_ranks(samples, truth.to(samples.dtype)).cpu())
            tarp.append(
                metrics.tarp_levels(
                    samples.double(),
                    truth.double(),
                    references[rows].to(samples.device).double(),
                    scale=scale.to(samples.device),
                ).cpu()
            )
            if has_log_prob:
                log_q = posterior.log_prob(samples, x[rows])  # [b, S]
                log_q_true = diagnostics.log_q_true(posterior, truth.to(samples.dtype), x[rows])
                hpd.append(metrics.hpd_levels(log_q.double(), log_q_true.double()).cpu())
    return _Levels(torch.cat(ranks), torch.cat(tarp), torch.cat(hpd) if has_log_prob else None)


def _assemble(
    levels_at_truth: _Levels, num_samples: int, significance: float
) -> CalibrationResult:
    """The curves, each test's statistic against its threshold, and the result that holds them.

    Each of the m tests runs at ``significance / m`` (Bonferroni).
    """
    N, d = levels_at_truth.ranks.shape
    levels = torch.arange(num_samples + 1, dtype=torch.float64) / num_samples
    _, expected = metrics.expected_coverage(levels, levels)  # uniform levels k / S
    _, tarp = metrics.expected_coverage(levels_at_truth.tarp, levels)
    coverage = None
    if levels_at_truth.hpd is not None:
        coverage = metrics.expected_coverage(levels_at_truth.hpd, levels)[1]
    per_test = significance / (2 if coverage is None else 3)
    band = metrics.ecdf_band(N, per_test)
    sbc_p_values = metrics.sbc_uniformity(levels_at_truth.ranks, num_samples)
    checks = [_sbc_check(sbc_p_values, per_test)]
    if coverage is not None:
        checks.append(
            _coverage_check("coverage", coverage, expected, band, "coverage", directional=True)
        )
    tarp_check = _coverage_check("tarp", tarp, expected, band, "ECP", directional=False)
    tarp_atc = float((tarp - expected).mean())
    checks.append(tarp_check._replace(detail=f"{tarp_check.detail}; ATC = {tarp_atc:+.3f}"))
    return CalibrationResult(
        num_simulations=N,
        num_samples=num_samples,
        significance=significance,
        ranks=levels_at_truth.ranks,
        sbc_p_values=sbc_p_values,
        levels=levels,
        expected=expected,
        coverage=coverage,
        tarp=tarp,
        tarp_atc=tarp_atc,
        band=band,
        checks=tuple(checks),
    )


def _sbc_check(p_values: Tensor, threshold: float) -> Check:
    """SBC's verdict: the smallest per-coordinate p-value times d (Bonferroni) >= threshold.

    Shapes: p_values [d].
    """
    d = p_values.shape[0]
    p = min(1.0, float(p_values.min()) * d)
    detail = f"rank uniformity p = {p:.3g} (chi-square"
    detail += f", smallest of {d} coordinates x {d})" if d > 1 else ")"
    detail += f", needs >= {threshold:.3g}"
    return Check("sbc", p, threshold, p >= threshold, detail)
