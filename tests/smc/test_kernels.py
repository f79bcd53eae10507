"""Move kernels against a known target: invariance, convergence, the contract and the registry.

The target is a tempered two-component Gaussian-mixture posterior with a closed form: prior
0.3 N(m_1, I) + 0.7 N(m_2, I) in d = 2, likelihood N(x; z, I), temperature tau = 1/2, so that
pi_tau(z) ∝ p(z) N(x; z, 2 I) is a mixture of N(v (m_j + x / 2), v I), v = 2 / 3, with weights
∝ a_j N(x; m_j, 3 I).
"""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, Uniform

from smcwake import Model, run_smc
from smcwake.encoders import GaussianEncoder
from smcwake.smc import proposal_mixture
from smcwake.smc.base import ADAPTATION_GAIN, MAX_SCALE, MIN_SCALE
from smcwake.smc.composite import adaptive_steps, compose
from smcwake.smc.gmm import (
    GaussianMixture,
    apply_component,
    log_responsibilities,
)
from smcwake.smc.kernels import (
    KERNEL_NAMES,
    get_kernel,
    hmc,
    mala,
    random_walk_metropolis,
)
from smcwake.smc.mh import (
    MoveInfo,
    Target,
    accept,
    log_target_ratio,
    update_where,
    weighted_cholesky,
)
from smcwake.smc.multimodal import encoder_independence, local_random_walk, mixture_independence
from smcwake.smc.sampler import SMCState
from smcwake.smc.steppers import mala_stepper

DT = torch.float64
TAU = 0.5
LOCS = torch.tensor([[-2.5, 0.0], [2.5, 1.0]], dtype=DT)
PRIOR_WEIGHTS = torch.tensor([0.3, 0.7], dtype=DT)
X = torch.tensor([0.5, 0.5], dtype=DT)


def mixture_model() -> Model:
    prior = MixtureSameFamily(
        Categorical(probs=PRIOR_WEIGHTS), Independent(Normal(LOCS, torch.ones_like(LOCS)), 1)
    )
    return Model(prior, lambda z, x: Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1))


def tempered_truth(tau: float = TAU):
    """Weights [2], means [2, d] and variance of pi_tau."""
    noise_var = 1.0 / tau
    log_w = torch.log(PRIOR_WEIGHTS) + Normal(LOCS, math.sqrt(1 + noise_var)).log_prob(X).sum(-1)
    var = 1 / (1 + 1 / noise_var)
    return torch.softmax(log_w, 0), var * (LOCS + X / noise_var), var


def exact_draws(n: int, g: torch.Generator, weights=None, widen: float = 1.0) -> torch.Tensor:
    """Draws from pi_tau (or its components with other weights, or widened by ``widen``)."""
    w, means, var = tempered_truth()
    w = w if weights is None else weights
    comp = torch.multinomial(w, n, replacement=True, generator=g)
    return means[comp] + widen * math.sqrt(var) * torch.randn(n, 2, generator=g, dtype=DT)


def statistics(z: torch.Tensor) -> torch.Tensor:
    """What is compared with the truth: side of the mid-plane, coordinates and their squares.

    Shapes: z [..., 2] -> [..., 5].
    """
    _, means, _ = tempered_truth()
    axis = means[1] - means[0]
    side = ((z - means.mean(0)) @ axis > 0).to(z.dtype)
    return torch.cat([side[..., None], z, z**2], -1)


TRUTH = statistics(exact_draws(2_000_000, torch.Generator().manual_seed(123))).mean(0)


class PoorEncoder:
    """q(z | x) = N(0, 3^2 I): far from pi_tau, so the defensive mixture must carry the kernel."""

    def __init__(self, d: int = 2) -> None:
        self.dist = Independent(Normal(torch.zeros(d, dtype=DT), 3.0 * torch.ones(d, dtype=DT)), 1)

    def sample(self, x, n, *, generator=None):
        shape = (x.shape[0], n, self.dist.event_shape[0])
        return 3.0 * torch.randn(shape, generator=generator, dtype=DT)

    def log_prob(self, z, x):
        return self.dist.log_prob(z)


class ExactEncoder:
    """q(z | x) = pi_tau exactly (for the fixed X of this module)."""

    def __init__(self) -> None:
        w, means, var = tempered_truth()
        comps = Independent(Normal(means, math.sqrt(var) * torch.ones_like(means)), 1)
        self.dist = MixtureSameFamily(Categorical(probs=w), comps)

    def sample(self, x, n, *, generator=None):
        return torch.stack([exact_draws(n, generator) for _ in range(x.shape[0])])

    def log_prob(self, z, x):
        return self.dist.log_prob(z)


KERNELS = {
    "rwmh": lambda: random_walk_metropolis(5),
    "mala": lambda: mala(5),
    "hmc": lambda: hmc(2, 5),
    "mixture": lambda: mixture_independence(3),
    "local_rwmh": lambda: local_random_walk(5),
    "encoder": lambda: encoder_independence(PoorEncoder(), 3),
    "mixture+rwmh": lambda: compose(mixture_independence(2), random_walk_metropolis(3)),
    "mixture+local_rwmh": lambda: compose(mixture_independence(2), local_random_walk(3)),
    "adaptive": lambda: adaptive_steps(mixture_independence(1), min_moved=0.9, max_calls=5),
}
JUMPING = ["mixture", "encoder", "mixture+rwmh", "mixture+local_rwmh", "adaptive"]


def initial_state(z: torch.Tensor, log_weights: torch.Tensor, target: Target, scale: float):
    log_prior, loglik = target.evaluate(z)
    B = z.shape[0]
    return SMCState(
        z=z,
        log_weights=log_weights - torch.logsumexp(log_weights, -1, keepdim=True),
        log_prior=log_prior,
        loglik=loglik,
        tau=torch.full((B,), TAU, dtype=DT),
        log_evidence=torch.zeros(B, dtype=DT),
        scale=torch.full((B,), scale, dtype=DT),
    )


def run_kernel(kernel, state, target, calls: int, g: torch.Generator):
    """Apply ``kernel`` ``calls`` times, adapting the scale between calls as the sampler does."""
    acceptance = []
    for _ in range(calls):
        chol = weighted_cholesky(state.z, state.log_weights)
        state, info = kernel(state, target, g, chol)
        acceptance.append(info.acceptance_rate)
        gain = ADAPTATION_GAIN * (info.acceptance_rate - kernel.target_acceptance)
        state = state._replace(scale=(state.scale * torch.exp(gain)).clamp(MIN_SCALE, MAX_SCALE))
    return state, torch.stack(acceptance).mean(0)


def assert_matches_truth(state, what: str) -> None:
    """Weighted means of the statistics within 4 standard errors of the exact values.

    The standard error of a self-normalized weighted mean is sqrt(sum_k W_k^2 (f_k - fbar)^2)
    (delta method); with uniform weights it is the iid s.e. sd(f) / sqrt(K).
    """
    w = state.log_weights.exp()[..., None]  # [B, K, 1]
    f = statistics(state.z)  # [B, K, 5]
    mean = (w * f).sum(1)
    se = (w.square() * (f - mean[:, None]).square()).sum(1).sqrt()
    z_scores = (mean - TRUTH) / se
    assert z_scores.abs().max() < 4, f"{what}: standardized errors {z_scores.tolist()}"


def assert_cache_is_consistent(state, target: Target) -> None:
    log_prior, loglik = target.evaluate(state.z)
    torch.testing.assert_close(state.log_prior, log_prior)
    torch.testing.assert_close(state.loglik, loglik)


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_leaves_weighted_mixture_target_invariant(name):
    # an importance-weighted start: draws from a wider mixture with weights pi_tau / q, which
    # stays a valid weighted sample of pi_tau under any pi_tau-invariant move of each particle
    g = torch.Generator().manual_seed(1)
    B, K = 1, 1500
    model = mixture_model()
    target = Target(model, X.expand(B, 2))
    kernel = KERNELS[name]()
    w, means, var = tempered_truth()
    z = torch.stack([exact_draws(K, g, weights=torch.tensor([0.5, 0.5]), widen=1.3)] * B)
    proposal = MixtureSameFamily(
        Categorical(probs=torch.tensor([0.5, 0.5], dtype=DT)),
        Independent(Normal(means, 1.3 * math.sqrt(var) * torch.ones_like(means)), 1),
    )
    exact = MixtureSameFamily(
        Categorical(probs=w),
        Independent(Normal(means, math.sqrt(var) * torch.ones_like(means)), 1),
    )
    log_weights = exact.log_prob(z) - proposal.log_prob(z)
    state = initial_state(z, log_weights, target, kernel.initial_scale)
    assert_matches_truth(state, "start")  # the premise: the weighted start is right
    state, acceptance = run_kernel(kernel, state, target, calls=4, g=g)
    assert_matches_truth(state, name)
    assert (acceptance > 0.05).all()  # the kernel moves: invariance is not vacuous
    assert_cache_is_consistent(state, target)


@pytest.mark.parametrize("name", JUMPING)
def test_jumping_kernel_restores_mode_masses_from_a_wrong_start(name):
    # start with masses 0.5 / 0.5 instead of the target's and 1.5x too wide: only a kernel whose
    # stationary law is pi_tau, and that crosses between the modes, ends at the right masses
    g = torch.Generator().manual_seed(2)
    B, K = 1, 1500
    target = Target(mixture_model(), X.expand(B, 2))
    kernel = KERNELS[name]()
    wrong = torch.tensor([0.5, 0.5], dtype=DT)
    z = torch.stack([exact_draws(K, g, weights=wrong, widen=1.5) for _ in range(B)])
    state = initial_state(z, torch.zeros(B, K, dtype=DT), target, kernel.initial_scale)
    start_side = statistics(state.z)[..., 0].mean(-1)
    assert ((start_side - TRUTH[0]).abs() > 0.1).all()  # premise: the start is far off
    state, _ = run_kernel(kernel, state, target, calls=6, g=g)
    assert_matches_truth(state, name)


@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc", "local_rwmh"])
def test_local_kernel_restores_mode_widths_from_a_wrong_start(name):
    # right masses, each mode 1.5x too wide: local moves must shrink them to the target widths
    g = torch.Generator().manual_seed(3)
    B, K = 1, 1500
    target = Target(mixture_model(), X.expand(B, 2))
    kernel = KERNELS[name]()
    z = torch.stack([exact_draws(K, g, widen=1.5) for _ in range(B)])
    state = initial_state(z, torch.zeros(B, K, dtype=DT), target, kernel.initial_scale)
    state, _ = run_kernel(kernel, state, target, calls=15, g=g)
    assert_matches_truth(state, name)


# ------------------------------------------------------------------- the local random walk


def core_and_shell(B: int) -> GaussianMixture:
    """A fixed, deliberately uneven fit of N(0, I_2): core N(0, 0.3^2 I), shell N(0, 2^2 I)."""
    scales = torch.stack([0.3 * torch.eye(2, dtype=DT), 2.0 * torch.eye(2, dtype=DT)])
    return GaussianMixture(
        torch.log(torch.full((B, 2), 0.5, dtype=DT)),
        torch.zeros(B, 2, 2, dtype=DT),
        scales.expand(B, 2, 2, 2),
    )


class NaiveLocalWalk:
    """The tempting wrong kernel: the current point's likeliest component, ratio pi' / pi only."""

    target_acceptance, initial_scale, num_steps, name, uses_scale = 0.234, 2.38, 5, "naive", True

    def __call__(self, state, target, generator, chol):
        mixture = core_and_shell(state.z.shape[0])
        acc_sum = torch.zeros_like(state.scale)
        for _ in range(self.num_steps):
            comp = log_responsibilities(mixture, state.z).argmax(-1)
            h = (state.scale**2 / 2).sqrt()[:, None, None]
            noise = torch.randn(state.z.shape, generator=generator, dtype=DT)
            z_new = state.z + h * apply_component(mixture.scale_tril, comp, noise)
            lp, ll = target.evaluate(z_new)
            acc = accept(log_target_ratio(state, lp, ll), generator)
            state = update_where(state, acc, z_new, lp, ll)
            acc_sum += acc.to(DT).mean(-1) / self.num_steps
        return state, MoveInfo(acc_sum, self.num_steps, torch.zeros_like(acc_sum))


def test_local_walk_needs_its_reverse_density(monkeypatch):
    # Target N(0, I_2) (a prior without likelihood), cut by a fixed mixture into a narrow core
    # and a wide shell. Taking the step's covariance from the current point and accepting with
    # pi' / pi is not reversible and biases E|z|^2 / 2 (= 1); the kernel with the reverse proposal
    # density in its ratio keeps it. The premise (the naive kernel is biased) is asserted, so the
    # test has power.
    g = torch.Generator().manual_seed(4)
    prior = Independent(Normal(torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)), 1)
    model = Model(prior, lambda z, x: torch.zeros(z.shape[:2], dtype=z.dtype))
    B, K = 2, 4000
    target = Target(model, torch.zeros(B, 1, dtype=DT))
    monkeypatch.setattr(proposal_mixture, "fit_mixture", lambda *args, **kw: core_and_shell(B))

    def half_sq_norm(kernel) -> tuple[float, float]:
        z = torch.randn(B, K, 2, generator=g, dtype=DT)
        state = initial_state(z, torch.zeros(B, K, dtype=DT), target, kernel.initial_scale)
        state, _ = run_kernel(kernel, state, target, calls=20, g=g)
        f = state.z.square().sum(-1) / 2  # mean 1, sd 1 under N(0, I_2)
        return float(f.mean()), float(f.std() / math.sqrt(f.numel()))

    naive, naive_se = half_sq_norm(NaiveLocalWalk())
    assert abs(naive - 1) > 6 * naive_se, (naive, naive_se)  # premise
    exact, se = half_sq_norm(local_random_walk(5))
    assert abs(exact - 1) < 4 * se, (exact, se)


# --------------------------------------------------------------------------- the encoder


def test_encoder_proposals_are_accepted_when_the_encoder_is_exact():
    g = torch.Generator().manual_seed(5)
    B, K = 2, 2000
    target = Target(mixture_model(), X.expand(B, 2))
    z = torch.stack([exact_draws(K, g) for _ in range(B)])
    kernel = encoder_independence(ExactEncoder(), 3)
    state = initial_state(z, torch.zeros(B, K, dtype=DT), target, 1.0)
    state, info = kernel(state, target, g, weighted_cholesky(state.z, state.log_weights))
    # g = (q + m) / 2 with q = pi: the ratio pi(z') g(z) / (pi(z) g(z')) is near 1 wherever the
    # cloud mixture m is near pi too, so almost every proposal is accepted
    assert (info.extra["acceptance/from_encoder"] > 0.8).all()
    assert (info.acceptance_rate > 0.8).all()


def test_encoder_kernel_runs_a_real_encoder_without_gradients():
    g = torch.Generator().manual_seed(6)
    encoder = GaussianEncoder(2, 2)  # float32 parameters, untrained
    encoder.train()
    kernel = encoder_independence(encoder, 2)
    result = run_smc(mixture_model(), X.expand(3, 2), 300, kernel=kernel, generator=g)
    assert result.converged.all()
    assert result.particles.dtype == DT
    assert not result.particles.requires_grad
    assert all(p.grad is None for p in encoder.parameters())
    assert encoder.training  # the mode is restored
    assert set(result.kernel_info) >= {"acceptance/from_encoder", "sq_jump"}


def test_encoder_kernel_rejects_what_is_not_an_encoder():
    with pytest.raises(TypeError, match="without sample"):
        encoder_independence(object())
    with pytest.raises(ValueError, match="encoder_weight"):
        encoder_independence(PoorEncoder(), encoder_weight=1.0)


# ------------------------------------------------------------------------- the composites


def test_compose_reports_each_sub_kernel_and_adapts_to_the_lead():
    # a fixed number of mixture steps (min_moved=0), so that every stage costs the same
    mixture = mixture_independence(2, min_moved=0.0)
    kernel = compose(mixture, random_walk_metropolis(3), random_walk_metropolis(1))
    assert kernel.name == "mixture+rwmh+rwmh_2"
    assert kernel.num_steps == 6
    assert kernel.target_acceptance == 0.234
    assert kernel.initial_scale == 2.38
    g = torch.Generator().manual_seed(7)
    result = run_smc(mixture_model(), X.expand(2, 2), 300, kernel=kernel, generator=g)
    info = result.kernel_info
    assert {"acceptance/mixture", "acceptance/rwmh", "acceptance/rwmh_2"} <= set(info)
    assert {"sq_jump/mixture", "sq_jump/rwmh"} <= set(info)
    # the reported acceptance (which drives the scale) is the first random walk's
    torch.testing.assert_close(
        result.acceptance_rate, info["acceptance/rwmh"].to(result.acceptance_rate.dtype)
    )
    per_stage = 300 * 6
    assert (result.num_likelihood_evals == 300 + per_stage * result.num_stages).all()


def test_compose_rejects_unbuilt_kernels():
    with pytest.raises(TypeError, match="not a built kernel"):
        compose(mixture_independence(2), random_walk_metropolis)
    with pytest.raises(ValueError, match="at least one"):
        compose()


def test_adaptive_steps_stops_each_observation_when_enough_particles_moved():
    g = torch.Generator().manual_seed(8)
    B, K = 3, 1000
    target = Target(mixture_model(), X.expand(B, 2))
    z = torch.stack([exact_draws(K, g) for _ in range(B)])
    state = initial_state(z, torch.zeros(B, K, dtype=DT), target, 2.38)
    calls = []
    inner = random_walk_metropolis(1)

    def counting(state, target, generator, chol):
        calls.append(state.z.shape[0])
        return inner(state, target, generator, chol)

    counting.target_acceptance, counting.initial_scale, counting.num_steps = 0.234, 2.38, 1
    kernel = adaptive_steps(counting, min_moved=0.9, max_calls=50)
    # a huge scale for the first observation (almost every step rejected): it needs many more
    # calls than the others
    state = state._replace(scale=torch.tensor([6.0, 1.0, 1.0], dtype=DT))
    state, info = kernel(state, target, g, weighted_cholesky(state.z, state.log_weights))
    assert (info.extra["moved"] >= 0.9).all(), info.extra
    assert info.extra["calls"][0] > info.extra["calls"][1:].max() + 3, info.extra
    assert calls[-1] == 1  # only the slow observation was still evaluated
    # evaluations are counted per observation: one per call that included it
    assert info.evals_per_particle.tolist() == info.extra["calls"].long().tolist()
    assert int(info.evals_per_particle[0]) == len(calls)


def test_adaptive_steps_counts_evaluations_per_observation_in_run_smc():
    # through run_smc the per-observation counts must equal K * (1 + sum of calls per stage)
    g = torch.Generator().manual_seed(11)
    B, K = 3, 200
    model = mixture_model()
    x_rows = torch.tensor([[0.5, 0.5], [0.3, 0.6], [0.7, 0.2]], dtype=DT)
    calls_by_row = torch.zeros(B, dtype=torch.int64)
    original = model._log_likelihood

    def loglik(z, x):
        # each call sees only the rows still moving: count the points per row by its x
        for row in range(B):
            calls_by_row[row] += int((x == x_rows[row]).all(-1).sum()) * z.shape[1]
        return original(z, x)

    model = Model(model.prior, loglik)
    result = run_smc(
        model,
        x_rows,
        K,
        kernel=adaptive_steps(random_walk_metropolis(1), max_calls=20),
        generator=g,
    )
    torch.testing.assert_close(result.num_likelihood_evals, calls_by_row)


# -------------------------------------------------------------------- registry and support


def test_every_registered_name_builds_a_kernel():
    for name in KERNEL_NAMES:
        for steps in (None, 4):
            kernel = get_kernel(name, steps)
            assert callable(kernel)
            assert kernel.num_steps == (steps if steps is not None else kernel.num_steps)
    with pytest.raises(ValueError, match="unknown name"):
        get_kernel("nope")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: mixture_independence(0), "num_steps"),
        (lambda: mixture_independence(num_components=0), "num_components"),
        (lambda: mixture_independence(defensive_weight=1.0), "defensive_weight"),
        (lambda: local_random_walk(em_iterations=-1), "em_iterations"),
        (lambda: adaptive_steps(random_walk_metropolis(), min_moved=0.0), "min_moved"),
        (lambda: get_kernel("mixture+rwmh", 1), "num_steps"),
    ],
)
def test_bad_options_are_rejected(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize("name", ["mixture", "local_rwmh", "mixture+rwmh"])
def test_proposals_outside_the_support_are_rejected_not_clamped(name):
    # prior U(0, 1)^2, x | z ~ N(z, 0.3^2) near a corner: Gaussian proposals often leave the box
    prior = Independent(Uniform(torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)), 1)
    model = Model(prior, lambda z, x: Normal(z, 0.3).log_prob(x[:, None, :]).sum(-1))
    g = torch.Generator().manual_seed(11)
    result = run_smc(model, torch.full((2, 2), 0.95, dtype=DT), 500, kernel=name, generator=g)
    assert result.converged.all()
    inside = (result.particles > 0) & (result.particles < 1)
    assert inside.all()
    assert (result.particles < 1 - 1e-9).all()  # nothing piled up on the boundary


def test_float32_runs():
    prior = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    model = Model(prior, lambda z, x: Normal(z[..., :1] ** 2, 0.2).log_prob(x[:, None]).sum(-1))
    g = torch.Generator().manual_seed(12)
    x = torch.full((2, 1), 2.0)
    for name in ["mixture", "mixture+rwmh", "mixture+local_rwmh"]:
        result = run_smc(model, x, 500, kernel=name, generator=g)
        assert result.particles.dtype == torch.float32
        assert result.converged.all()
        assert torch.isfinite(result.log_evidence).all()


def test_mala_step_is_the_textbook_metropolis_hastings_step():
    # the stepper works in whitened coordinates without solves; here every density is taken
    # as written, N(z'; z + (h/2) Sigma grad(z), h Sigma) and its reverse, with torch's
    # Gaussians, from the same random draws: the same proposals, decisions and squared jumps
    from torch.distributions import MultivariateNormal

    g = torch.Generator().manual_seed(7)
    B, K, d = 2, 300, 2
    target = Target(mixture_model(), X.expand(B, 2), None)
    z = torch.randn(B, K, d, generator=g, dtype=DT) * 1.5
    state = initial_state(z, torch.zeros(B, K, dtype=DT), target, 1.3)
    chol = weighted_cholesky(z, state.log_weights)
    stepper = mala_stepper()
    carry = stepper.start(state, target, chol)
    moved, _, acc, jump = stepper.step(
        state, carry, target, torch.Generator().manual_seed(8), chol
    )
    draws = torch.Generator().manual_seed(8)
    xi = torch.randn(B, K, d, generator=draws, dtype=DT)
    log_u = torch.log(torch.rand(B, K, generator=draws, dtype=DT))
    h = 1.3**2 / d ** (1 / 3)
    sigma = chol @ chol.mT

    def drift(at):
        _, _, grad = target.evaluate_with_grad(at, state.tau)
        return at + 0.5 * h * (grad @ sigma.mT)

    def log_q(to, mean):  # log N(to; mean, h Sigma)
        return MultivariateNormal(mean, scale_tril=math.sqrt(h) * chol[:, None]).log_prob(to)

    mean = drift(z)
    z_new = mean + math.sqrt(h) * (xi @ chol.mT)
    lp, ll = target.evaluate(z_new)
    log_ratio = (
        lp
        + TAU * ll
        - state.log_prior
        - TAU * state.loglik
        + log_q(z, drift(z_new))
        - log_q(z_new, mean)
    )
    expected = log_u < log_ratio
    assert expected.any()  # the premise: some accepted, some rejected
    assert not expected.all()
    assert torch.equal(acc, expected)
    torch.testing.assert_close(moved.z, torch.where(acc[..., None], z_new, z))
    white = torch.linalg.solve_triangular(chol, (z_new - z).mT, upper=False).mT
    torch.testing.assert_close(jump, torch.where(acc, white.square().sum(-1), 0.0))
