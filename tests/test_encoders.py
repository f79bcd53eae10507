"""Encoders: one sweep over every kind (shapes, gradients, dtypes, save/load, standardization,
input checks), then numeric truth: densities that integrate to one, samples whose moments match
the density, and the Gaussian against torch's MultivariateNormal."""

import copy
import gc
import math

import pytest
import torch
from torch import nn
from torch.distributions import (
    Beta,
    Distribution,
    Gamma,
    HalfNormal,
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    Poisson,
    Uniform,
    constraints,
)

from smcwake import Model
from smcwake.encoders import (
    ENCODER_KINDS,
    FlowEncoder,
    MixtureDensityEncoder,
    build_encoder,
)

KINDS = ["flow", "mdn", "gaussian", "gaussian-diag"]
REPARAMETERIZED = ["flow", "gaussian", "gaussian-diag"]
X_DIM = 4


def make(kind: str, z_dim: int, dtype: torch.dtype = torch.float64, **options):
    """A small encoder with non-trivial standardization set from real (deterministic) data."""
    options.setdefault("hidden", (16, 16))
    encoder = build_encoder(kind, X_DIM, z_dim, **options).to(dtype)
    g = torch.Generator().manual_seed(123)
    x = 3.0 + 2.0 * torch.randn(200, X_DIM, generator=g, dtype=dtype)
    z = -1.0 + 0.5 * torch.randn(200, z_dim, generator=g, dtype=dtype)
    encoder.set_standardization(x=x, z=z)
    return encoder


def observations(b: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return 3.0 + 2.0 * torch.randn(b, X_DIM, generator=g, dtype=dtype)


# ---------------------------------------------------------------------------- the sweep
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("z_dim", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_shapes_and_dtypes(kind, z_dim, dtype):
    encoder = make(kind, z_dim, dtype)
    x = observations(5, dtype)
    dist = encoder(x)
    assert dist.batch_shape == (5,)
    assert dist.event_shape == (z_dim,)
    log_q = encoder.log_prob(torch.zeros(5, 7, z_dim, dtype=dtype), x)
    assert log_q.shape == (5, 7)
    assert log_q.dtype == dtype
    assert torch.isfinite(log_q).all()
    z = encoder.sample(x, 6, generator=torch.Generator().manual_seed(0))
    assert z.shape == (5, 6, z_dim)
    assert z.dtype == dtype
    assert not z.requires_grad
    if kind in REPARAMETERIZED:
        z, log_q = encoder.rsample_and_log_prob(x, 6)
        assert z.shape == (5, 6, z_dim)
        assert log_q.shape == (5, 6)
        assert z.requires_grad
        assert log_q.requires_grad
    else:
        with pytest.raises(NotImplementedError, match="no reparameterization"):
            encoder.rsample_and_log_prob(x, 6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("z_dim", [1, 3])
def test_every_parameter_gets_a_gradient(kind, z_dim):
    embedding = nn.Sequential(nn.Linear(X_DIM, 8), nn.Tanh())
    encoder = make(kind, z_dim, embedding=embedding)
    assert encoder.context_dim == 8  # inferred by the dry run
    x = observations(5)
    z = encoder.sample(x, 4)
    encoder.log_prob(z, x).mean().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("kind", REPARAMETERIZED)
@pytest.mark.parametrize("z_dim", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_rsample_and_log_prob_is_reparameterized_and_consistent(kind, z_dim, dtype):
    encoder = make(kind, z_dim, dtype)
    x = observations(5, dtype)
    z, log_q = encoder.rsample_and_log_prob(x, 8, generator=torch.Generator().manual_seed(1))
    # the flow's fused inverse pass must agree with a separate forward evaluation
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(log_q, encoder.log_prob(z, x), atol=tol, rtol=tol)
    (z.sum() + log_q.sum()).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    encoder = make(kind, 2)
    state = encoder.state_dict()
    assert {"x_loc", "x_scale", "z_loc", "z_scale"} <= set(state)
    torch.manual_seed(99)  # a different initialisation (inside the test's forked RNG)
    other = build_encoder(kind, X_DIM, 2, hidden=(16, 16)).double()
    other.load_state_dict(state)
    x, z = observations(3), torch.randn(3, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(other.log_prob(z, x), encoder.log_prob(z, x), atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_to_moves_buffers_and_follows_dtype(kind):
    encoder = build_encoder(kind, X_DIM, 2, hidden=(8,))
    assert encoder.z_loc.dtype == torch.float32
    encoder = encoder.to(torch.float64)
    for buffer in (encoder.x_loc, encoder.x_scale, encoder.z_loc, encoder.z_scale):
        assert buffer.dtype == torch.float64
    x = observations(2, torch.float32)  # inputs are cast to the encoder's dtype
    assert encoder.log_prob(torch.zeros(2, 3, 2), x).dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_runs_on_cuda(kind):
    encoder = make(kind, 2).to("cuda")
    x = observations(3).cuda()
    z = encoder.sample(x, 4, generator=torch.Generator("cuda").manual_seed(0))
    assert encoder.log_prob(z, x).device.type == "cuda"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("z_dim", [1, 2])
def test_standardization_is_an_affine_map_with_its_log_det(kind, z_dim):
    # q_B(z | x) for standardization (a, s; m, c) equals q_A(u | xs) / prod(c) at
    # x = a + s * xs, z = m + c * u, where A is the same network with identity standardization.
    identity = build_encoder(kind, X_DIM, z_dim, hidden=(16, 16)).double()
    shifted = copy.deepcopy(identity)
    g = torch.Generator().manual_seed(5)
    x_data = torch.randn(300, X_DIM, generator=g, dtype=torch.float64) * 4.0 - 10.0
    z_data = torch.randn(300, z_dim, generator=g, dtype=torch.float64) * 0.1 + 7.0
    shifted.set_standardization(x=x_data, z=z_data)
    torch.testing.assert_close(shifted.x_loc, x_data.mean(0))
    torch.testing.assert_close(shifted.z_scale, z_data.std(0, unbiased=False))
    xs = torch.randn(3, X_DIM, generator=g, dtype=torch.float64)
    u = torch.randn(3, 6, z_dim, generator=g, dtype=torch.float64)
    x = shifted.x_loc + shifted.x_scale * xs
    z = shifted.z_loc + shifted.z_scale * u
    expected = identity.log_prob(u, xs) - shifted.z_scale.log().sum()
    torch.testing.assert_close(shifted.log_prob(z, x), expected)


# ---------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("kind", KINDS)
def test_bad_shapes_raise_with_expected_and_received(kind):
    encoder = build_encoder(kind, 100, 3, hidden=(8,))
    with pytest.raises(ValueError, match=r"x: expected shape \[\*, 100\], received \[50, 99\]"):
        encoder.log_prob(torch.zeros(50, 4, 3), torch.zeros(50, 99))
    with pytest.raises(ValueError, match=r"x\[None, :\]"):
        encoder.sample(torch.zeros(100), 2)
    with pytest.raises(
        ValueError, match=r"z: expected shape \[B=50, S, d=3\], received \[50, 4, 2\]"
    ):
        encoder.log_prob(torch.zeros(50, 4, 2), torch.zeros(50, 100))
    with pytest.raises(ValueError, match="dims do not match"):
        encoder.log_prob(torch.zeros(49, 4, 3), torch.zeros(50, 100))
    with pytest.raises(ValueError, match="n: expected a positive int"):
        encoder.sample(torch.zeros(2, 100), 0)


def test_build_encoder_kinds():
    assert isinstance(build_encoder("nsf", 2, 1), FlowEncoder)
    assert isinstance(build_encoder("flow", 2, 1), FlowEncoder)
    assert isinstance(build_encoder("mdn", 2, 1, components=3), MixtureDensityEncoder)
    assert build_encoder("gaussian", 2, 1).full_rank
    assert not build_encoder("gaussian-diag", 2, 1).full_rank
    with pytest.raises(ValueError, match="expected one of flow, nsf, mdn, gaussian"):
        build_encoder("realnvp", 2, 1)
    assert len(ENCODER_KINDS) == 5


@pytest.mark.parametrize("kind", KINDS)
def test_generator_reproducible_and_global_rng_untouched(kind):
    encoder = make(kind, 2)
    x = observations(3)
    before = torch.get_rng_state()
    a = encoder.sample(x, 5, generator=torch.Generator().manual_seed(11))
    b = encoder.sample(x, 5, generator=torch.Generator().manual_seed(11))
    c = encoder.sample(x, 5, generator=torch.Generator().manual_seed(12))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------------------- numeric truth
@pytest.mark.parametrize("full_rank", [True, False])
def test_gaussian_log_prob_matches_multivariate_normal(full_rank):
    encoder = make("gaussian" if full_rank else "gaussian-diag", 3)
    x = observations(4)
    z = torch.randn(4, 6, 3, dtype=torch.float64)
    mean, cov = encoder.gaussian_params(x)
    assert mean.shape == (4, 3)
    assert cov.shape == (4, 3, 3)
    expected = MultivariateNormal(mean[:, None], cov[:, None]).log_prob(z)
    torch.testing.assert_close(encoder.log_prob(z, x), expected)


@pytest.mark.parametrize("full_rank", [True, False])
def test_gaussian_sample_covariance_matches_gaussian_params(full_rank):
    # Off-diagonal Cholesky entries pushed to ~2 so that L L^T and L^T L differ clearly. The
    # centred product (z_i - m_i)(z_j - m_j) has variance S_ii S_jj + S_ij^2 (Isserlis), so
    # 4 standard errors over n draws bound each covariance entry.
    encoder, n = make("gaussian" if full_rank else "gaussian-diag", 3), 20_000
    with torch.no_grad():
        encoder.net[-1].bias[6:] += 2.0
    x = observations(2)
    mean, cov = encoder.gaussian_params(x)
    z = encoder.sample(x, n, generator=torch.Generator().manual_seed(4)) - mean[:, None, :]
    sample_cov = z.mT @ z / n  # [B, d, d] around the exact mean
    variances = cov.diagonal(dim1=-2, dim2=-1)
    se = ((variances[:, :, None] * variances[:, None, :] + cov**2) / n).sqrt()
    assert ((sample_cov - cov).abs() <= 4 * se).all()
    if full_rank:
        correlation = cov / (variances[:, :, None] * variances[:, None, :]).sqrt()
        assert correlation.triu(1).abs().max() > 0.3  # premise: the test sees correlations


def grid_density(encoder, x, points: int, half_width: float):
    """exp(log_prob) on a regular grid over z_loc +- half_width * z_scale (d = 1 or 2).

    Returns the axes (one [points] tensor per dimension) and the density [B, points, ...].
    """
    d = encoder.z_dim
    axes = [
        torch.linspace(loc - half_width * scale, loc + half_width * scale, points)
        for loc, scale in zip(encoder.z_loc.tolist(), encoder.z_scale.tolist(), strict=True)
    ]
    axes = [axis.to(torch.float64) for axis in axes]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, d)
    with torch.no_grad():
        log_q = encoder.log_prob(grid.expand(x.shape[0], -1, -1), x)
    return axes, log_q.exp().reshape(x.shape[0], *[points] * d)


def integrate(values, axes):
    """Trapezoid rule over the trailing len(axes) dimensions. Shapes: [B, m, ...] -> [B]."""
    for axis in reversed(axes):
        values = torch.trapezoid(values, axis, dim=-1)
    return values


# Grid: +-12 standard units covers every density a small random network produces here (MDN and
# Gaussian scales stay below ~3 and locations within ~+-3; the flow's splines act on [-5, 5] and
# are the identity outside, leaving N(0, 1) tails), so truncation error is < 1e-6. What remains
# is trapezoid error, largest for the flow (its spline density has kinks at the knots): with
# h = 0.025 (d=1) and 0.1 (d=2) it was <= 1e-3 over several seeds and shrinks ~4x when h halves,
# hence atol 1e-2.
GRID = {1: 961, 2: 241}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("z_dim", [1, 2])
def test_density_integrates_to_one(kind, z_dim):
    encoder = make(kind, z_dim)
    x = observations(2)
    axes, q = grid_density(encoder, x, GRID[z_dim], 12.0)
    torch.testing.assert_close(integrate(q, axes), torch.ones(2, dtype=q.dtype), atol=1e-2, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("z_dim", [1, 2])
def test_sample_moments_match_density(kind, z_dim):
    # Statistics f(z): each coordinate, its centred square, and (d = 2) the centred cross product.
    # E[f] from the grid, the sample mean over n draws must be within 4 standard errors
    # sqrt(Var f / n), Var f = E[f^2] - E[f]^2 also from the grid (grid error is far smaller).
    encoder, n = make(kind, z_dim), 20_000
    x = observations(2)
    axes, q = grid_density(encoder, x, GRID[z_dim], 12.0)
    coords = torch.meshgrid(*axes, indexing="ij")
    mean = torch.stack([integrate(q * c, axes) for c in coords], -1)  # [B, d]
    centred = [c - mean[:, i].reshape(-1, *[1] * z_dim) for i, c in enumerate(coords)]
    stats_grid = [*coords, *(c**2 for c in centred)]
    z = encoder.sample(x, n, generator=torch.Generator().manual_seed(3))  # [B, n, d]
    zc = z - mean[:, None, :]
    stats_sample = [*z.unbind(-1), *(zc**2).unbind(-1)]
    if z_dim == 2:
        stats_grid.append(centred[0] * centred[1])
        stats_sample.append(zc[..., 0] * zc[..., 1])
    for f_grid, f_sample in zip(stats_grid, stats_sample, strict=True):
        expected = integrate(q * f_grid, axes)
        variance = integrate(q * f_grid**2, axes) - expected**2
        error = (f_sample.mean(-1) - expected).abs()
        assert (error <= 4 * (variance / n).sqrt()).all(), (error, (variance / n).sqrt())


# ---------------------------------------------------------------------------- support transform
class NormalGamma(Distribution):
    """A mixed-support prior: z_0 ~ N(0, 1) on R, z_1 ~ Gamma(2, 1) on (0, inf), independent."""

    arg_constraints: dict = {}
    support = constraints.cat([constraints.real, constraints.positive], dim=-1, lengths=[1, 1])

    def __init__(self):
        super().__init__(event_shape=torch.Size([2]), validate_args=False)
        self.parts = (Normal(0.0, 1.0), Gamma(2.0, 1.0))

    def sample(self, sample_shape=()):
        return torch.stack([part.sample(sample_shape) for part in self.parts], -1)

    def log_prob(self, value):
        return self.parts[0].log_prob(value[..., 0]) + self.parts[1].log_prob(value[..., 1])


PRIORS = {
    "box": lambda: Independent(Uniform(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 3.0])), 1),
    "halfnormal": lambda: Independent(HalfNormal(2.0 * torch.ones(3)), 1),
    "gamma": lambda: Independent(Gamma(0.5 * torch.ones(3), torch.ones(3)), 1),
    "lognormal": lambda: Independent(LogNormal(torch.zeros(2), 2.0 * torch.ones(2)), 1),
    "beta": lambda: Independent(Beta(torch.tensor([0.5, 2.0]), torch.tensor([0.5, 5.0])), 1),
    "normal-gamma": NormalGamma,
}


def on_support(prior_name, kind, support=True, **options):
    """An untrained encoder for a prior, standardized from 4,000 prior draws, and its Model."""
    prior = PRIORS[prior_name]()
    d = prior.event_shape[0]
    encoder = build_encoder(
        kind, X_DIM, d, hidden=(16, 16), support=prior.support if support else None, **options
    ).double()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        z = prior.sample((4000,)).double()
    encoder.set_standardization(x=observations(50), z=z)
    model = Model(prior, lambda z, x: z.new_zeros(z.shape[:2]))
    return encoder, model


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prior_name", list(PRIORS))
def test_draws_never_leave_the_support(prior_name, kind):
    encoder, model = on_support(prior_name, kind)
    x = observations(4)
    z = encoder.sample(x, 2000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model.log_prior(z.float())).all()  # the library's own support test
    log_q = encoder.log_prob(z, x)
    assert torch.isfinite(log_q).all()
    if kind in REPARAMETERIZED:
        z_r, log_q_r = encoder.rsample_and_log_prob(x, 500)
        assert torch.isfinite(model.log_prior(z_r.detach().float())).all()
        torch.testing.assert_close(log_q_r, encoder.log_prob(z_r, x), atol=1e-8, rtol=1e-8)
    # premise: the same network without the transform does put draws outside the support
    plain, _ = on_support(prior_name, kind, support=False)
    z_plain = plain.sample(x, 2000, generator=torch.Generator().manual_seed(0))
    outside = (~torch.isfinite(model.log_prior(z_plain.float()))).float().mean()
    assert float(outside) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_minus_inf_outside_and_agrees_with_forward(kind):
    encoder, _ = on_support("box", kind)
    x = observations(2)
    z = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [-1.5, 1.0], [0.5, -0.1], [0.5, 3.5]]] * 2)
    z = z.double().requires_grad_()
    log_q = encoder.log_prob(z, x)
    # interval's closed check: z_0 = 1 is on the boundary, finite after T^-1's clipping
    assert torch.isfinite(log_q[:, :2]).all()
    assert (log_q[:, 2:] == -math.inf).all()
    log_q[:, :2].sum().backward()
    assert torch.isfinite(z.grad).all()
    for parameter in encoder.parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()
    inside = z.detach()[:, :1]  # forward() is the same density as a torch Distribution
    torch.testing.assert_close(
        encoder(x).log_prob(inside.movedim(1, 0)).movedim(0, 1), encoder.log_prob(inside, x)
    )


def test_standardization_is_in_the_unconstrained_space():
    # LogNormal(0, 2): v = log z ~ N(0, 2^2). The buffers are v's mean and sd, not z's (whose
    # sd is about 55 for these draws); 4 standard errors of the mean (2 / sqrt(4000) = 0.032)
    # and of the sd (2 / sqrt(2 * 4000) = 0.022) bound them.
    encoder, _ = on_support("lognormal", "gaussian-diag")
    assert (encoder.z_loc.abs() < 4 * 0.032).all(), encoder.z_loc
    assert ((encoder.z_scale - 2.0).abs() < 4 * 0.022).all(), encoder.z_scale
    with pytest.raises(ValueError, match="outside the encoder's support"):
        encoder.set_standardization(z=-torch.ones(3, 2, dtype=torch.float64))
    # Gamma's support [0, inf) holds z = 0, where v = log z = -inf: that row is left out
    gamma, _ = on_support("gamma", "gaussian-diag")
    z = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 2.0], [4.0, 4.0, 4.0]], dtype=torch.float64)
    gamma.set_standardization(z=z)
    torch.testing.assert_close(gamma.z_loc, torch.full((3,), math.log(2.0), dtype=torch.float64))


def test_supports_reach_the_encoder_through_check_support():
    real = Independent(Normal(torch.zeros(2), 1.0), 1).support
    assert build_encoder("flow", 2, 2, support=real).support is None
    with pytest.raises(ValueError, match="maps v"):
        build_encoder("flow", 2, 3, support=constraints.simplex)
    encoder, _ = on_support("box", "gaussian")
    with pytest.raises(ValueError, match="not Gaussian in z"):
        encoder.gaussian_params(observations(2))


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_with_support(kind):
    encoder, _ = on_support("normal-gamma", kind)
    torch.manual_seed(99)  # a different initialisation (inside the test's forked RNG)
    other = build_encoder(kind, X_DIM, 2, hidden=(16, 16), support=NormalGamma.support).double()
    other.load_state_dict(encoder.state_dict())
    x = observations(3)
    z = encoder.sample(x, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(other.log_prob(z, x), encoder.log_prob(z, x), atol=0, rtol=0)


# Quadrature on bounded supports. The density is integrated in z, so the test fails if the
# log-Jacobian of T is missing or wrong. Midpoint rule on [0.5, 2] (d = 1, 20,000 cells) and on
# [-1, 1] x [0, 3] (d = 2, 400^2 cells): the logit-normal densities vanish at the edges. The
# error at these grids was below 3e-6 (d = 1) and 1.8e-3 (d = 2, the diagonal Gaussian), and
# 2 to 5 times larger at half the grids, so atol 5e-3; without the log-Jacobian it is O(1).
BOUNDED = {
    1: lambda: Independent(Uniform(torch.tensor([0.5]), torch.tensor([2.0])), 1),
    2: PRIORS["box"],
}
CELLS = {1: 20_000, 2: 400}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("z_dim", [1, 2])
def test_density_on_a_bounded_support_integrates_to_one(kind, z_dim):
    prior = BOUNDED[z_dim]()
    encoder = build_encoder(kind, X_DIM, z_dim, hidden=(16, 16), support=prior.support).double()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        encoder.set_standardization(x=observations(50), z=prior.sample((4000,)).double())
    low, high = prior.base_dist.low.double(), prior.base_dist.high.double()
    n = CELLS[z_dim]
    width = (high - low) / n
    axes = [low[j] + width[j] * (torch.arange(n, dtype=torch.float64) + 0.5) for j in range(z_dim)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, z_dim)
    x = observations(2)
    with torch.no_grad():
        log_q = encoder.log_prob(grid.expand(2, -1, -1), x)
    total = log_q.exp().sum(-1) * width.prod()
    torch.testing.assert_close(total, torch.ones(2, dtype=total.dtype), atol=5e-3, rtol=0)


def test_encoder_kernel_proposes_inside_a_positive_support():
    # Gamma-Poisson: z ~ Gamma(2, 1), x_k | z ~ Poisson(z), k = 1..5; p(x) in closed form,
    # log p(x) = a log b - lgamma(a) + lgamma(a + s) - (a + s) log(b + n) - sum lgamma(x_k + 1).
    # SMC whose moves propose from an untrained encoder on (0, inf) must still be exact; K =
    # 2,000 puts the log-evidence's Monte Carlo sd near 0.02, so 0.1 is 5 sd.
    from smcwake import run_smc
    from smcwake.smc.kernels import get_kernel

    a, b = 2.0, 1.0
    prior = Independent(Gamma(torch.tensor([a]), torch.tensor([b])), 1)
    model = Model(prior, lambda z, x: Poisson(z).log_prob(x[:, None, :]).sum(-1))
    x = torch.tensor([[3.0, 5.0, 2.0, 4.0, 6.0], [0.0, 1.0, 0.0, 0.0, 2.0]])
    encoder = build_encoder("flow", 5, 1, hidden=(16,), support=prior.support)
    encoder.set_standardization(x=x, z=prior.sample((1000,)))
    result = run_smc(
        model,
        x,
        2000,
        kernel=get_kernel("encoder+rwmh", encoder=encoder),
        generator=torch.Generator().manual_seed(0),
    )
    s, n = x.sum(-1).double(), x.shape[1]
    exact = (
        a * math.log(b)
        - math.lgamma(a)
        + torch.lgamma(a + s)
        - (a + s) * math.log(b + n)
        - torch.lgamma(x.double() + 1).sum(-1)
    )
    assert result.converged.all()
    torch.testing.assert_close(result.log_evidence, exact, atol=0.1, rtol=0)
    assert (result.particles > 0).all()


# ------------------------------------------------------- the flow against zuko's own NSF
@pytest.mark.parametrize("z_dim", [1, 3])
def test_flow_is_zukos_spline_flow(z_dim):
    """The flow's spline knots are computed without ATen's softmax (faster on CPU); with the
    same parameters it must be zuko's NSF: same state dict, densities, draws and gradients
    (float64, so any difference beyond rounding is a wrong squashing, bound or slope)."""
    import zuko

    torch.manual_seed(0)
    encoder = FlowEncoder(X_DIM, z_dim, transforms=2, hidden=(16,), bins=6).double()
    with torch.no_grad():  # far from the initial near-identity splines, raw values up to ~10
        for param in encoder.flow.parameters():
            param.copy_(3.0 * torch.randn_like(param))
    reference = zuko.flows.NSF(
        features=z_dim, context=X_DIM, transforms=2, bins=6, hidden_features=(16,)
    ).double()
    reference.load_state_dict(encoder.flow.state_dict())
    h = observations(5)
    u = 2.5 * torch.randn(7, 5, z_dim, dtype=torch.float64)  # inside and outside [-5, 5]
    mine, theirs = encoder.flow(h).log_prob(u), reference(h).log_prob(u)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-10)
    grads = [
        torch.autograd.grad(f(h).log_prob(u).sum(), list(f.parameters()))
        for f in (encoder.flow, reference)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    torch.manual_seed(5)
    draws = encoder.flow(h).sample((4,))
    torch.manual_seed(5)
    torch.testing.assert_close(draws, reference(h).sample((4,)), rtol=1e-9, atol=1e-10)


def test_drawing_from_a_flow_leaves_nothing_for_the_cycle_collector():
    """Each autoregressive pass of the flow's inverse builds a spline with knots for every
    draw and dimension; if the spline and its inverse refer to each other (torch's
    ``Transform.inv`` stores the inverse on the transform), the d passes' knots pile up until
    Python's cycle collector runs: gigabytes for a few thousand draws in 40 dimensions. With
    the collector off, nothing the draw built may be left for it."""
    from smcwake.encoders import _SplineTransform

    encoder = FlowEncoder(X_DIM, 4, transforms=2, hidden=(8,)).double()
    transform = encoder.flow(observations(2)).transform.transforms[0]
    spline = transform.meta(torch.zeros(3, 2, 4, dtype=torch.float64)).base
    assert isinstance(spline, _SplineTransform)
    assert spline.inv.inv is spline  # still an inverse pair
    del spline
    gc.collect()
    gc.disable()
    try:
        encoder.sample(observations(2), 5)
        encoder.rsample_and_log_prob(observations(2), 5)[1].sum().backward()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [obj for obj in gc.garbage if isinstance(obj, _SplineTransform)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


@pytest.mark.parametrize("kind", KINDS)
def test_large_requests_are_drawn_in_blocks_from_the_same_distribution(kind, monkeypatch):
    """Past DRAW_BLOCK draws a request is drawn in blocks of observations and draws. The blocks
    must be fresh draws (no block repeating another's random numbers) of the same distribution
    as one whole draw."""
    from smcwake import encoder_base

    encoder = make(kind, 2)
    x = observations(1).expand(6, -1)  # one observation six times: 6 x 2000 iid draws
    g = torch.Generator().manual_seed(0)
    whole = encoder.sample(x, 2000, generator=g)
    monkeypatch.setattr(encoder_base, "DRAW_BLOCK", 500)  # one observation, 500 draws
    calls = []
    draw_block = encoder._draw_block
    monkeypatch.setattr(
        encoder, "_draw_block", lambda x, n, g: calls.append(n) or draw_block(x, n, g)
    )
    blocks = encoder.sample(x, 2000, generator=g)
    assert calls == [500] * 24  # 6 observations x 4 blocks of draws
    assert blocks.shape == whole.shape == (6, 2000, 2)
    assert torch.unique(blocks.reshape(-1, 2), dim=0).shape[0] == 6 * 2000
    n = whole.shape[0] * whole.shape[1]
    m_whole, m_blocks = whole.mean((0, 1)), blocks.mean((0, 1))
    sd = whole.std((0, 1))
    # difference of two means of n iid draws: standard error sd sqrt(2 / n); 5 of them
    assert ((m_whole - m_blocks).abs() <= 5 * sd * math.sqrt(2 / n)).all()
    # sd: relative standard error about sqrt((kurtosis - 1) / (4 n)) per estimate; mixtures have
    # heavier tails than a normal, so allow kurtosis up to 9 (sqrt(2 * 8 / (4 n)) for the two)
    assert ((blocks.std((0, 1)) / sd - 1).abs() <= 5 * math.sqrt(2 * 8 / (4 * n))).all()


@pytest.mark.parametrize(
    ("z_dim", "hidden", "support"),
    [(2, (16, 16), None), (5, (16, 16), None), (5, (16,), constraints.positive), (3, (), None)],
)
def test_flow_draws_are_zukos_inverse_of_the_same_noise(z_dim, hidden, support):
    """``sample`` inverts each autoregressive transform one coordinate at a time instead of
    zuko's d passes over every coordinate; in float64 it must give zuko's own draws of the same
    base noise, to rounding (splines far from the identity: raw parameters of size ~1). Without
    hidden layers zuko inverts."""
    from smcwake._rng import forked_rng

    torch.manual_seed(0)
    encoder = FlowEncoder(X_DIM, z_dim, hidden=hidden, support=support).double()
    with torch.no_grad():
        for param in encoder.flow.parameters():
            param.copy_(torch.randn_like(param))
    x = observations(4)
    mine = encoder.sample(x, 50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), forked_rng(torch.Generator().manual_seed(1)):
        v = encoder._distribution(encoder._context(x)).rsample((50,)).movedim(0, 1)
    transform = encoder.support_transform(v)
    theirs = v if transform is None else transform(v)
    torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9)


def test_autoregressive_inverse_with_several_coordinates_per_pass():
    """Coordinates of one level of the transform's order are inverted together (zuko's
    ``passes`` < features): the transform maps the inverse back onto y."""
    from zuko.flows.autoregressive import MaskedAutoregressiveTransform

    from smcwake.encoders import _autoregressive_inverse, _SplineTransform

    torch.manual_seed(0)
    transform = MaskedAutoregressiveTransform(
        features=5,
        context=3,
        passes=2,
        univariate=_SplineTransform,
        shapes=[(8,), (8,), (7,)],
        hidden_features=(16,),
    ).double()
    assert torch.unique(transform.order).numel() == 2
    with torch.no_grad():
        for param in transform.parameters():
            param.copy_(0.5 * torch.randn_like(param))
    h = torch.randn(4, 3, dtype=torch.float64)
    y = 2.0 * torch.randn(6, 4, 5, dtype=torch.float64)  # inside and outside [-5, 5]
    with torch.no_grad():
        x = _autoregressive_inverse(transform, h, y)
        torch.testing.assert_close(transform(h)(x), y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("support", [None, constraints.positive], ids=["real", "positive"])
def test_flow_reparameterized_draws_log_q_and_gradients_are_zukos(support, monkeypatch):
    """``rsample_and_log_prob`` uses the per-coordinate inverse and adds each transform's
    log-determinant at the point it inverted to; draws, log q and the gradients of both with
    respect to every parameter must be zuko's fused inverse pass's, to rounding (float64)."""
    from smcwake.encoder_base import Encoder

    torch.manual_seed(0)
    encoder = FlowEncoder(X_DIM, 4, hidden=(16, 16), support=support).double()
    with torch.no_grad():
        for param in encoder.flow.parameters():
            param.copy_(0.5 * torch.randn_like(param))
    x = observations(5)
    params = [p for p in encoder.parameters() if p.requires_grad]

    def draw_and_grads():
        z, log_q = encoder.rsample_and_log_prob(x, 6, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad(z.square().sum() + log_q.sum(), params)
        return z.detach(), log_q.detach(), torch.cat([g.flatten() for g in grads])

    mine = draw_and_grads()
    monkeypatch.setattr(FlowEncoder, "_rsample_given", Encoder._rsample_given)  # zuko's pass
    theirs = draw_and_grads()
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(encoder.log_prob(mine[0], x), mine[1], rtol=1e-8, atol=1e-8)
