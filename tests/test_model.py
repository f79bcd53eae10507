"""Model: the prior's support, the likelihood's validation and its errors, fingerprints."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal, Uniform

from faults import D, conjugate, g0, gaussian_loglik, small
from smcwake import Model, fit, run_smc

pytestmark = pytest.mark.usefixtures("one_thread")


def test_observations_with_the_wrong_number_of_columns_are_named():
    model, x = conjugate()
    x3 = torch.cat([x, x[:, :1]], dim=1)  # p = 3 where the likelihood expects 2
    # a model that does not know p: the likelihood evaluation fails, and says why
    with pytest.raises(ValueError, match=r"failed with.*x \[12, 3\].*number of columns"):
        run_smc(model, x3, 20, generator=g0())
    with pytest.raises(ValueError, match=r"failed with.*x \[12, 3\]"):
        fit(model, x3, **small())
    # using it does not change that: a model learns nothing from the data it sees
    run_smc(model, x, 20, generator=g0())
    assert model.x_dim is None
    with pytest.raises(ValueError, match=r"failed with.*x \[12, 3\]"):
        run_smc(model, x3, 20, generator=g0())
    # a model told p checks it up front, before any evaluation
    told = Model(model.prior, model._log_likelihood, x_dim=2)
    with pytest.raises(ValueError, match=r"expected shape \[\*, 2\].*received \[12, 3\]"):
        run_smc(told, x3, 20, generator=g0())
    with pytest.raises(ValueError, match=r"x_dim: expected None or an integer >= 1"):
        Model(model.prior, model._log_likelihood, x_dim=0)


def test_a_likelihood_that_fails_on_its_first_call_is_not_blamed_on_x_alone():
    def broken(z, x):
        raise RuntimeError("emulator weights were never loaded")

    model, x = conjugate(loglik=broken)
    with pytest.raises(ValueError, match="does not mention shapes: the likelihood itself") as info:
        run_smc(model, x, 20, generator=g0())
    assert "emulator weights were never loaded" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # the user's traceback is kept
    # a shape mismatch still points to x's columns first, and names the other possibility
    model, x = conjugate()
    with pytest.raises(ValueError, match=r"points to shapes: x may not have.*or the likelihood"):
        run_smc(model, torch.cat([x, x[:, :1]], dim=1), 20, generator=g0())


class _NoSupport(torch.distributions.Distribution):
    """A user's prior that forgot to declare its support."""

    arg_constraints = {}

    def __init__(self):
        super().__init__(event_shape=torch.Size([D]), validate_args=False)

    def sample(self, sample_shape=()):
        return torch.randn(*sample_shape, D)

    def log_prob(self, value):
        return Normal(0.0, 1.0).log_prob(value).sum(-1)


@pytest.mark.parametrize(
    ("prior", "error", "message"),
    [
        (_NoSupport(), TypeError, r"_NoSupport does not define `support`.*real_vector"),
        (Normal(0.0, 1.0), ValueError, r"event_shape \[d\].*event_shape \[\].*Independent"),
        (Normal(torch.zeros(3), 1.0), ValueError, r"batch_shape \[3\].*Independent"),
        ("normal", TypeError, "torch.distributions.Distribution, received str"),
    ],
    ids=["no-support", "scalar", "batched", "not-a-distribution"],
)
def test_model_needs_a_prior_with_one_event_dimension(prior, error, message):
    with pytest.raises(error, match=message):
        Model(prior, gaussian_loglik)


class _TiltedUniform(Uniform):
    """A user subclass that changes log_prob: the box shortcut must not apply to it."""

    def log_prob(self, value):
        return super().log_prob(value) + value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_uniform_prior_matches_torch_inside_outside_and_on_the_edges(dtype):
    low, high = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 3.0])
    z = torch.tensor(
        [[0.0, 0.0], [-1.0, -2.0], [1.0, 0.0], [0.0, 3.0], [-1.5, 0.0], [0.5, 2.999]], dtype=dtype
    )[None]  # [1, 6, 2]: inside, low corner, high edges (outside: half-open), outside, inside
    for prior in (Independent(Uniform(low, high), 1), Independent(_TiltedUniform(low, high), 1)):
        model = Model(prior, gaussian_loglik)
        reference = prior.base_dist.log_prob(z.clamp(low, high).to(torch.float32)).sum(-1)
        inside = ((z >= low) & (z < high)).all(-1)
        expected = torch.where(inside, reference.to(dtype), -math.inf)
        got = model.log_prior(z)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected)
    assert Model(Independent(Uniform(low, high), 1), gaussian_loglik)._box is not None
    assert Model(Independent(_TiltedUniform(low, high), 1), gaussian_loglik)._box is None


@pytest.mark.parametrize("d", [3, 12, 40])  # coordinate loop up to d = 20, one reduction beyond
def test_box_prior_support_in_every_dimension(d):
    g = torch.Generator().manual_seed(d)
    low = torch.rand(d, generator=g) - 2.0
    high = low + 0.5 + torch.rand(d, generator=g)
    z = low + (high - low) * (1.3 * torch.rand(4, 50, d, generator=g) - 0.15)
    z[0, 0], z[0, 1] = low, high  # the low corner is inside, the high one outside (half-open)
    z[0, 2, d // 2] = high[d // 2]  # one coordinate on the high edge
    model = Model(Independent(Uniform(low, high), 1), gaussian_loglik)
    inside = ((z >= low) & (z < high)).all(-1)
    assert 0 < int(inside.sum()) < inside.numel()
    log_density = -(high - low).log().sum()
    expected = torch.where(inside, log_density, -math.inf)
    torch.testing.assert_close(model.log_prior(z), expected)
    assert inside[0, :3].tolist() == [True, False, False]


def test_model_needs_callables():
    prior = Independent(Normal(torch.zeros(D), torch.ones(D)), 1)
    with pytest.raises(TypeError, match="log_likelihood: expected a callable"):
        Model(prior, 3.0)
    with pytest.raises(TypeError, match="simulate: expected None or a callable"):
        Model(prior, gaussian_loglik, simulate="gaussian")


@pytest.mark.parametrize(
    ("loglik", "received"),
    [
        (lambda z, x: Normal(z, 1.0).log_prob(x[:, None, :]), r"\[12, 20, 2\]"),  # not summed
        (lambda z, x: gaussian_loglik(z, x)[0], r"\[20\]"),
        (lambda z, x: gaussian_loglik(z, x).numpy(), "ndarray"),
        (lambda z, x: float(gaussian_loglik(z, x).sum()), "float"),
    ],
    ids=["unsummed", "one-row", "numpy", "python-float"],
)
def test_likelihood_of_the_wrong_shape_is_reported(loglik, received):
    model, x = conjugate(loglik=loglik)
    with pytest.raises(
        ValueError, match=rf"expected output shape \[B, K\] = \[12, 20\].*{received}"
    ):
        run_smc(model, x, 20, generator=g0())


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["NaN", "+inf"])
def test_likelihood_returning_nan_or_plus_inf_is_an_error_naming_the_point(bad):
    def loglik(z, x):
        ll = gaussian_loglik(z, x)
        return torch.where((x[:, :1] > 0) & (z[..., 0] > 0), bad, ll)

    model, x = conjugate(loglik=loglik)
    first = int(torch.nonzero(x[:, 0] > 0)[0])
    with pytest.raises(
        ValueError, match=rf"observation {first}, particle \d+, z = .*-inf for zero"
    ):
        run_smc(model, x, 50, generator=g0())


class _ShiftedPrior(torch.distributions.Distribution):
    """A user's prior: no arg_constraints, its parameter a plain attribute, a few odd ones."""

    support = torch.distributions.constraints.real_vector

    def __init__(self, center):
        super().__init__(event_shape=torch.Size([D]), validate_args=False)
        self.center = center
        self.transform = lambda z: z + self.center  # a callable: not part of the fingerprint
        self.me = self  # a cycle

    def sample(self, sample_shape=()):
        return self.transform(torch.randn(*sample_shape, D, dtype=self.center.dtype))

    def log_prob(self, value):
        return Normal(self.center, 1.0).log_prob(value).sum(-1)


def test_model_fingerprint_reads_the_parameters_of_a_custom_prior():
    from smcwake.model import fingerprint_differences, model_fingerprint

    _, x = conjugate()
    center = torch.tensor([0.5, -1.0], dtype=torch.float64)
    saved = model_fingerprint(Model(_ShiftedPrior(center), gaussian_loglik), x)
    same = model_fingerprint(Model(_ShiftedPrior(center.clone()), gaussian_loglik), x)
    assert fingerprint_differences(saved, same) == []
    moved = model_fingerprint(Model(_ShiftedPrior(center + 0.1), gaussian_loglik), x)
    assert fingerprint_differences(saved, moved)[0].startswith("prior parameter prior.center:")
