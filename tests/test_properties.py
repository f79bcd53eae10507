"""Property-based tests: random shapes and values (NaN, inf, huge magnitudes, tiny B, K, d) fed
to run_smc and to every objective give either a correct result or a clear ValueError/TypeError,
never a silent NaN; fit stopped at a random point and resumed equals the uninterrupted run."""

import math
import os
import signal
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal

from smcwake import Model, fit, run_smc
from smcwake.bank import ParticleBank
from smcwake.encoders import GaussianEncoder
from smcwake.objectives import METHOD_NAMES, SMC_WAKE_METHODS, Batch, Context, get_objective

MAX_STAGES = 30
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tensors are tiny, and thread hand-offs would dominate."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# moderate: values a float64 run normalizes exactly today; every: any magnitude, float32 too
MODERATE = [0.0, -0.0, 1e-30, math.nan, math.inf, -math.inf]
EVERY = [*MODERATE, 1e3, -1e3, 1e6, -1e6, 1e30, -1e30, 1e300]
KINDS = ["gaussian", "scaled", "offset", "masked", "dead-rows", "nan-region", "posinf-region"]


class Likelihood:
    """A family of likelihoods that misbehave in known ways; records whether it returned NaN or
    +inf (the only reason run_smc may raise on finite observations)."""

    def __init__(self, kind: str, magnitude: float, threshold: float) -> None:
        self.kind, self.magnitude, self.threshold = kind, magnitude, threshold
        self.returned_bad = False

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ll = Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1)
        region = z[..., 0] > self.threshold
        if self.kind == "scaled":
            ll = self.magnitude * ll
        elif self.kind == "offset":
            ll = ll + math.copysign(self.magnitude, self.threshold)
        elif self.kind == "masked":
            ll = torch.where(region, -math.inf, ll)
        elif self.kind == "dead-rows":
            ll = torch.where(x[:, :1] > self.threshold, -math.inf, ll)
        elif self.kind == "nan-region":
            ll = torch.where(region, math.nan, ll)
        elif self.kind == "posinf-region":
            ll = torch.where(region, math.inf, ll)
        self.returned_bad |= bool((torch.isnan(ll) | (ll == math.inf)).any())
        return ll


def make_model(d: int, dtype: torch.dtype, loglik: Likelihood) -> Model:
    prior = Independent(Normal(torch.zeros(d, dtype=dtype), 3 * torch.ones(d, dtype=dtype)), 1)
    return Model(prior, loglik, simulate=lambda z: z + torch.randn_like(z))


@st.composite
def problems(draw, *, moderate: bool):
    B = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    if moderate:
        dtype, special, top = torch.float64, MODERATE, 2
    else:
        dtype, special, top = draw(st.sampled_from([torch.float32, torch.float64])), EVERY, 7
    values = st.one_of(st.floats(-20.0, 20.0), st.sampled_from(special))
    x = torch.tensor(draw(st.lists(values, min_size=B * d, max_size=B * d)), dtype=torch.float64)
    loglik = Likelihood(
        draw(st.sampled_from(KINDS)),
        10.0 ** draw(st.integers(0, top)),
        draw(st.floats(-4.0, 4.0)),
    )
    return x.reshape(B, d).to(dtype), loglik


SMC_OPTIONS = dict(
    K=st.integers(2, 12),
    ess_target=st.floats(0.05, 0.95),
    kernel=st.sampled_from(["rwmh", "mala", "hmc"]),
    resampling=st.sampled_from(["systematic", "stratified", "multinomial", "residual"]),
    seed=st.integers(0, 2**16),
)


@PROPERTY
@given(problem=problems(moderate=True), **SMC_OPTIONS)
def test_run_smc_returns_honest_results_or_a_clear_error(
    problem, K, ess_target, kernel, resampling, seed
):
    check_run_smc(problem, K, ess_target, kernel, resampling, seed)


@settings(PROPERTY, derandomize=True)
@given(problem=problems(moderate=False), **SMC_OPTIONS)
def test_run_smc_returns_honest_results_at_any_magnitude(
    problem, K, ess_target, kernel, resampling, seed
):
    check_run_smc(problem, K, ess_target, kernel, resampling, seed)


def check_run_smc(problem, K, ess_target, kernel, resampling, seed) -> None:
    """Either a ValueError the input explains, or a result whose flags and weights are honest."""
    x, loglik = problem
    B, d = x.shape
    model = make_model(d, x.dtype, loglik)
    finite_x = bool(torch.isfinite(x).all())
    error = None
    try:
        result = run_smc(
            model,
            x,
            K,
            ess_target=ess_target,
            kernel=kernel,
            resampling=resampling,
            max_stages=MAX_STAGES,
            generator=torch.Generator().manual_seed(seed),
        )
    except ValueError as err:
        error = str(err)
    if error is not None:
        if not finite_x:
            assert "x: expected finite observations" in error
        else:
            assert loglik.returned_bad, error
            assert "log_likelihood returned NaN or +inf" in error
        return
    assert finite_x, "non-finite observations were accepted"
    assert not loglik.returned_bad, "a NaN or +inf likelihood was accepted"

    assert result.particles.shape == (B, K, d)
    assert result.log_weights.shape == (B, K)
    for name in ("particles", "log_weights", "log_evidence", "ess", "loglik"):
        assert not torch.isnan(getattr(result, name)).any(), name
    assert torch.isfinite(result.particles).all()
    assert (result.log_weights < math.inf).all()
    # normalized weights on every row, converged or not (float32: a few ulps of log K)
    atol = 1e-5 if x.dtype == torch.float32 else 1e-9
    total = torch.logsumexp(result.log_weights.double(), -1)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=atol, rtol=0)
    assert ((result.ess > 1 - 1e-3) & (result.ess < K + 1e-3)).all()

    conv, zero = result.converged, result.zero_likelihood
    assert not (conv & zero).any()
    assert (result.log_evidence[zero] == -math.inf).all()
    assert torch.isfinite(result.log_evidence[conv]).all()
    last_tau = torch.nan_to_num(result.temperatures, nan=-1.0).amax(-1)
    assert (last_tau[conv] == 1.0).all()
    # a run that neither converged nor hit zero likelihood used every stage it was allowed
    stuck = ~conv & ~zero
    assert (result.num_stages[stuck] == MAX_STAGES).all()
    assert (last_tau[stuck] < 1.0).all()
    # a converged posterior puts no weight on particles of zero likelihood
    weighted = result.log_weights > -math.inf
    assert torch.isfinite(result.loglik[conv][weighted[conv]]).all()


@st.composite
def objective_problems(draw):
    B = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    # finite magnitudes up to 1e6 (float32) or 1e30 (float64): what a data set could hold
    big = 1e6 if dtype == torch.float32 else 1e30
    special = st.sampled_from([0.0, big, -big, math.nan, math.inf])
    entries = st.one_of(st.floats(-20.0, 20.0), special)
    x = torch.tensor(draw(st.lists(entries, min_size=B * d, max_size=B * d)), dtype=dtype)
    kind = draw(st.sampled_from(["gaussian", "scaled", "masked", "dead-rows", "nan-region"]))
    loglik = Likelihood(kind, 10.0 ** draw(st.integers(0, 6)), draw(st.floats(-4.0, 4.0)))
    return x.reshape(B, d), loglik


@PROPERTY
@given(
    problem=objective_problems(),
    K=st.integers(2, 6),
    runs_per_step=st.one_of(st.none(), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
)
def test_objectives_return_a_loss_that_is_never_nan(problem, K, runs_per_step, seed):
    x, loglik = problem
    B, d = x.shape
    dtype = x.dtype
    model = make_model(d, dtype, loglik)
    g = torch.Generator().manual_seed(seed)
    finite_x = bool(torch.isfinite(x).all())
    encoder = GaussianEncoder(d, d, hidden=(8,)).to(dtype)
    if finite_x:  # as fit does: standardize with the data and prior draws
        encoder.set_standardization(x=x, z=model.sample_prior((256,), generator=g))
    idx = torch.arange(B)
    for name in METHOD_NAMES:
        objective = get_objective(name)
        bank = None
        if name in SMC_WAKE_METHODS and finite_x:
            try:
                result = run_smc(model, x, 8, max_stages=MAX_STAGES, generator=g)
            except ValueError:
                result = None
            if result is None:
                assert loglik.returned_bad
                continue
            bank = ParticleBank(B, 8, d, estimator=SMC_WAKE_METHODS[name], dtype=dtype)
            keep = torch.nonzero(result.converged).flatten()
            bank.add(
                keep, result.particles[keep], result.log_weights[keep], result.log_evidence[keep]
            )
        chains = model.sample_prior((B,), generator=g)
        ctx = Context(model, K, g, bank, chains, runs_per_step)
        encoder.zero_grad(set_to_none=True)
        error = None
        try:
            loss, evals = objective(encoder, Batch(idx, x), ctx)
        except ValueError as err:
            error = str(err)
        if error is not None:
            if not finite_x:
                assert "x: expected finite observations" in error
            else:
                assert loglik.returned_bad, (name, error)
            continue
        assert finite_x, name
        assert isinstance(evals, int), name
        assert evals >= 0, name
        assert loss.shape == (), name
        assert not torch.isnan(loss), f"{name} returned a NaN loss"
        if torch.isfinite(loss):
            loss.backward()
        else:  # +inf only where the loss really is infinite: q or p has zero density
            assert loss == math.inf, name


# ------------------------------------------------------------------- fit: stop anywhere, resume
# every SMC-Wake estimator, and baselines that call the likelihood in their objective (wake,
# msc, iwae) or never (sleep)
RESUME_METHODS = [*SMC_WAKE_METHODS, "wake", "msc", "iwae", "sleep"]


class CountingLikelihood:
    """The conjugate Gaussian likelihood; sends SIGINT to this process on call ``stop_on``."""

    def __init__(self, stop_on: int | None = None) -> None:
        self.calls, self.stop_on = 0, stop_on

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_on:
            os.kill(os.getpid(), signal.SIGINT)
        return Normal(z, 0.5).log_prob(x[:, None, :]).sum(-1)


def resume_problem(stop_on: int | None = None):
    prior = Independent(Normal(torch.zeros(2).double(), 2 * torch.ones(2).double()), 1)
    loglik = CountingLikelihood(stop_on)
    model = Model(prior, loglik, simulate=lambda z: z + 0.5 * torch.randn_like(z))
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    return model, x, loglik


def resume_settings(method: str, kernel: str, smc_batch_size: int, checkpoint_every: int):
    return dict(
        encoder="gaussian",
        method=method,
        steps=9,
        num_particles=20,
        num_proposals=8,
        batch_size=4,
        refresh_every=4,
        refresh_size=3,
        smc_batch_size=smc_batch_size,  # 3: the initial SMC pass takes three batches
        smc={"kernel": kernel, "num_mcmc_steps": 2},
        max_runs=3,
        num_resampled=5,
        particles_per_step=16,
        checkpoint_every=checkpoint_every,
        log_every=1,
        progress=False,
        seed=1,
    )


_UNINTERRUPTED: dict[tuple, tuple] = {}


def uninterrupted(method: str, kernel: str, smc_batch_size: int):
    """The run without a stop, and how many likelihood calls it makes (cached per settings)."""
    key = (method, kernel, smc_batch_size)
    if key not in _UNINTERRUPTED:
        model, x, loglik = resume_problem()
        with tempfile.TemporaryDirectory() as run_dir:  # a run_dir fingerprints the model too
            out = fit(model, x, run_dir=run_dir, **resume_settings(*key, checkpoint_every=1000))
        _UNINTERRUPTED[key] = (out, loglik.calls)
    return _UNINTERRUPTED[key]


def same_run(a, b) -> None:
    """Bit-identical training: parameters, every history column but wall time, bank."""
    for (name, p), q in zip(
        a.encoder.state_dict().items(), b.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    for column, values in a.history.items():
        if column != "wall_time":
            assert b.history[column] == values, column
    assert (a.bank is None) == (b.bank is None)
    if a.bank is not None:
        for name, value in a.bank.state_dict().items():
            other = b.bank.state_dict()[name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def check_resume_anywhere(data, method: str, kernel: str, smc_batch_size: int) -> None:
    whole, total_calls = uninterrupted(method, kernel, smc_batch_size)
    checkpoint_every = data.draw(st.integers(1, 10), label="checkpoint_every")
    settings = resume_settings(method, kernel, smc_batch_size, checkpoint_every)
    # a stop at a likelihood call lands anywhere: the model's fingerprint, any batch of the
    # initial SMC pass, a refresh, an objective; a callback stops after a given step (sleep
    # never calls the likelihood, so it is always stopped that way)
    by_signal = total_calls > 0 and data.draw(st.booleans(), label="stop by SIGINT")
    with tempfile.TemporaryDirectory() as run_dir:
        if by_signal:
            call = data.draw(st.integers(1, total_calls), label="SIGINT at likelihood call")
            model, x, _ = resume_problem(stop_on=call)
            with pytest.raises(KeyboardInterrupt):
                fit(model, x, run_dir=run_dir, **settings)
        else:
            last = data.draw(st.integers(1, settings["steps"]), label="callback stops at step")
            model, x, _ = resume_problem()
            fit(model, x, run_dir=run_dir, callbacks=[lambda s, e, r: s == last], **settings)
        model, x, _ = resume_problem()
        resumed = fit(model, x, run_dir=run_dir, resume=True, **settings)
    same_run(whole, resumed)


RESUME_PROPERTY = settings(PROPERTY, max_examples=12)
RESUME_CASES = dict(
    data=st.data(),
    method=st.sampled_from(RESUME_METHODS),
    kernel=st.sampled_from(["rwmh", "mixture+rwmh"]),
    smc_batch_size=st.sampled_from([3, 8]),
)


@RESUME_PROPERTY
@given(**RESUME_CASES)
def test_fit_stopped_anywhere_and_resumed_equals_the_uninterrupted_run(
    data, method, kernel, smc_batch_size
):
    check_resume_anywhere(data, method, kernel, smc_batch_size)


@pytest.mark.slow
@settings(RESUME_PROPERTY, max_examples=150)
@given(**RESUME_CASES)
def test_fit_stopped_anywhere_and_resumed_equals_the_uninterrupted_run_many(
    data, method, kernel, smc_batch_size
):
    check_resume_anywhere(data, method, kernel, smc_batch_size)
