"""smcwake.calibration.check_calibration: verdicts on exact and miscalibrated posteriors.

The posteriors under test are exact: a conjugate Gaussian model whose posterior is known in
closed form, sampled as is (calibrated), with its standard deviation halved (over-confident) or
doubled (under-confident). All randomness comes from fixed seeds.
"""

import json
import math

import matplotlib
import pytest
import torch
from torch.distributions import Independent, Normal

from smcwake import Model, build_encoder, check_calibration
from smcwake.calibration import CalibrationResult

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOISE = 1.0  # x | z ~ N(z, NOISE^2 I), z ~ N(0, I): the posterior is N(x / 2, I / 2)


def gaussian_model(d: int = 2, *, simulate: bool = True) -> Model:
    zeros = torch.zeros(d, dtype=torch.float64)
    prior = Independent(Normal(zeros, zeros + 1.0), 1)

    def log_likelihood(z, x):
        return Normal(z, NOISE).log_prob(x[:, None, :]).sum(-1)

    def simulator(z):
        return z + NOISE * torch.randn_like(z)

    return Model(prior, log_likelihood, simulate=simulator if simulate else None, name="gauss")


class ExactPosterior:
    """The conjugate posterior N(x / (1 + NOISE^2), NOISE^2 / (1 + NOISE^2)), its sd scaled."""

    def __init__(self, sd_factor: float = 1.0, *, with_log_prob: bool = True) -> None:
        self.sd_factor = sd_factor
        if not with_log_prob:
            self.log_prob = None

    def _params(self, x):
        sd = self.sd_factor * math.sqrt(NOISE**2 / (1 + NOISE**2))
        return x / (1 + NOISE**2), sd

    def sample(self, x, n, *, generator=None):
        mean, sd = self._params(x)
        noise = torch.randn(x.shape[0], n, x.shape[1], generator=generator, dtype=x.dtype)
        return mean[:, None, :] + sd * noise

    def log_prob(self, z, x):
        mean, sd = self._params(x)
        return Normal(mean[:, None, :], sd).log_prob(z).sum(-1)


# N = 300 simulations: the coverage/TARP band is then +-0.103 (DKW at 0.01 / 3). Over 50 seeds
# (measured once), the weakest signal of a miscalibrated posterior, TARP with the sd halved,
# had a largest deviation of 0.233 +- 0.027, 4.8 sd outside the band; HPD coverage deviated by
# 0.476 +- 0.024 (halved) and 0.476 +- 0.018 (doubled), and SBC p-values were below 1e-20 against
# a threshold of 0.0033. Every failing assertion below thus has power above 0.9999, while the
# calibrated posterior fails with probability at most 1%, and the seed is fixed. batch_size 128
# does not divide 300, so simulations are split into uneven batches (a misaligned batch would
# break the calibrated case). Each check takes a few hundredths of a second.
N = 300


def run(posterior, d: int = 2, **kwargs) -> CalibrationResult:
    return check_calibration(posterior, gaussian_model(d), N, batch_size=128, seed=0, **kwargs)


def by_name(result: CalibrationResult) -> dict:
    return {check.name: check for check in result.checks}


def test_exact_posterior_passes_every_test():
    result = run(ExactPosterior())
    assert result.passed, result.summary()
    checks = by_name(result)
    assert list(checks) == ["sbc", "coverage", "tarp"]
    assert result.ranks.shape == (N, 2)
    assert int(result.ranks.min()) >= 0
    assert int(result.ranks.max()) <= 100
    assert result.levels.shape == result.coverage.shape == result.tarp.shape == (101,)
    assert result.band == pytest.approx(math.sqrt(math.log(2 * 3 / 0.01) / (2 * N)))
    assert checks["sbc"].threshold == pytest.approx(0.01 / 3)
    # the exact null curve: levels are counts among S = 100 draws
    assert float(result.expected[0]) == pytest.approx(1 / 101)
    assert float(result.expected[50]) == pytest.approx(51 / 101)
    assert "passed" in result.summary().splitlines()[0]


def test_over_confident_posterior_fails_every_test():
    result = run(ExactPosterior(sd_factor=0.5))
    assert not result.passed
    checks = by_name(result)
    assert not checks["sbc"].passed
    assert not checks["coverage"].passed
    assert not checks["tarp"].passed
    assert "over-confident" in checks["coverage"].detail
    assert float((result.coverage - result.expected).mean()) < 0  # below the diagonal
    assert "FAILED" in result.summary().splitlines()[0]


def test_under_confident_posterior_fails_coverage_and_tarp():
    result = run(ExactPosterior(sd_factor=2.0))
    checks = by_name(result)
    assert not checks["coverage"].passed
    assert not checks["tarp"].passed
    assert not checks["sbc"].passed  # humped ranks
    assert "under-confident" in checks["coverage"].detail
    assert float((result.coverage - result.expected).mean()) > 0  # above the diagonal


def test_a_shifted_posterior_fails_even_with_the_right_width():
    class Shifted(ExactPosterior):
        def sample(self, x, n, *, generator=None):
            return super().sample(x, n, generator=generator) + 0.5

        def log_prob(self, z, x):
            return super().log_prob(z - 0.5, x)

    result = run(Shifted())
    assert not by_name(result)["sbc"].passed
    assert not result.passed


def test_sample_only_posterior_runs_two_tests_at_half_the_significance():
    result = run(ExactPosterior(with_log_prob=False))
    assert [c.name for c in result.checks] == ["sbc", "tarp"]
    assert result.coverage is None
    assert result.passed, result.summary()
    assert result.checks[0].threshold == pytest.approx(0.01 / 2)
    assert not run(ExactPosterior(0.5, with_log_prob=False)).passed


@pytest.mark.parametrize("d", [1, 5])
def test_dimensions_one_and_five(d):
    assert run(ExactPosterior(), d=d).passed
    assert not run(ExactPosterior(0.5), d=d).passed


def test_calibrated_posteriors_fail_no_more_often_than_the_significance():
    # The thresholds come from the tests' null distributions: at significance 0.3 a calibrated
    # posterior may fail at most 30% of the time (each test at 0.1; the DKW bands are
    # conservative, so fewer). Over 150 seeds the count of failures is at most Binomial(150,
    # 0.3): mean 45, sd 5.6; 62 is 3 sd above it. A band that is too narrow or p-values that are
    # too small would fail here.
    model = gaussian_model(2)
    failures = sum(
        not check_calibration(
            ExactPosterior(), model, 60, num_samples=20, significance=0.3, seed=seed
        ).passed
        for seed in range(150)
    )
    assert failures <= 62


def test_same_seed_same_result_and_generator_option():
    a = run(ExactPosterior())
    b = run(ExactPosterior())
    assert torch.equal(a.ranks, b.ranks)
    assert torch.equal(a.tarp, b.tarp)
    g = torch.Generator().manual_seed(5)
    c = check_calibration(ExactPosterior(), gaussian_model(), 50, generator=g)
    d = check_calibration(
        ExactPosterior(), gaussian_model(), 50, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(c.ranks, d.ranks)


def test_custom_reference_points_for_tarp():
    # TARP's reference points can be given: here all at the prior's mean
    model = gaussian_model(2)
    result = check_calibration(ExactPosterior(), model, 50, seed=0, references=torch.zeros(50, 2))
    assert result.tarp.shape == (101,)
    with pytest.raises(ValueError, match=r"references: expected shape \[N, d\] = \[50, 2\]"):
        check_calibration(ExactPosterior(), model, 50, seed=0, references=torch.zeros(49, 2))


def test_smcwake_encoders_are_checked_in_their_own_dtype():
    # an untrained encoder is close to its standardization, here N(0, I): near the prior
    model = gaussian_model(2)
    torch.manual_seed(0)  # the encoder's initialization (inside the test's forked RNG)
    encoder = build_encoder("gaussian", 2, 2)  # float32 parameters; the model is float64
    z = torch.randn(1000, 2)
    encoder.set_standardization(x=z, z=z)
    prior_like = check_calibration(encoder, model, N, seed=0)
    assert prior_like.coverage is not None  # encoders have log_prob
    encoder.set_standardization(x=z, z=0.2 * z)  # q's scale shrinks fivefold: over-confident
    assert not check_calibration(encoder, model, N, seed=0).passed


def test_result_plot_and_json():
    result = run(ExactPosterior(0.5))
    fig = result.plot(labels=["a", "b"])
    titles = {ax.get_title() for ax in fig.axes}
    assert {"a", "b", "highest-density regions of q", "TARP (balls around random points)"} <= (
        titles
    )
    plt.close(fig)
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["passed"] is False
    assert [c["name"] for c in payload["checks"]] == ["sbc", "coverage", "tarp"]
    assert len(payload["coverage"]) == 101
    assert "passed=False" in repr(result)


def test_result_plot_of_many_coordinates_draws_the_first_ones_without_a_warning(recwarn):
    result = check_calibration(ExactPosterior(), gaussian_model(12), 50, num_samples=20, seed=0)
    fig = result.plot()
    assert "first 10 of 12 coordinates" in fig.subfigs[0].get_suptitle()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    plt.close(fig)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"has no simulator; build it as Model\(prior"):
        check_calibration(ExactPosterior(), gaussian_model(simulate=False), 100)
    with pytest.raises(TypeError, match="expected an object with sample"):
        check_calibration(object(), gaussian_model(), 100)
    with pytest.raises(TypeError, match="model: expected an smcwake.Model"):
        check_calibration(ExactPosterior(), "model", 100)
    with pytest.raises(ValueError, match="num_simulations: expected an integer >= 20"):
        check_calibration(ExactPosterior(), gaussian_model(), 5)
    with pytest.raises(ValueError, match=r"significance: expected a number in \(0, 1\)"):
        check_calibration(ExactPosterior(), gaussian_model(), 100, significance=1.5)
    with pytest.raises(ValueError, match="seed and generator"):
        check_calibration(
            ExactPosterior(), gaussian_model(), 100, seed=0, generator=torch.Generator()
        )

    class WrongShape(ExactPosterior):
        def sample(self, x, n, *, generator=None):
            return super().sample(x, n, generator=generator)[:, :, :1]

    with pytest.raises(ValueError, match=r"posterior.sample: expected a tensor \[B, n, d\]"):
        check_calibration(WrongShape(), gaussian_model(), 100, seed=0)

    class NaNs(ExactPosterior):
        def sample(self, x, n, *, generator=None):
            out = super().sample(x, n, generator=generator)
            out[0, 0, 0] = float("nan")
            return out

    with pytest.raises(ValueError, match="returned NaN or inf in 1 of"):
        check_calibration(NaNs(), gaussian_model(), 100, seed=0)
