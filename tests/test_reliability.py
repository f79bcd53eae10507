"""Bad input, numerical faults and interruptions: clear errors, honest flags, no lost work.

Each test is one row of docs/RELIABILITY.md. Tests marked ``xfail`` describe behaviour the
library does not have yet; they turn into failures (``xfail_strict``) once it does.
"""

import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal, Uniform

from smcwake import Model, TrainConfig, fit, run_smc
from smcwake.encoders import GaussianEncoder
from smcwake.objectives import Batch, Context, get_objective
from smcwake.smc.resampling import normalize
from smcwake.train import CHECKPOINT_NAME, SMCOptions

PRIOR_SD, NOISE_SD, D = 2.0, 0.5, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: faster on these tiny tensors, and the same in the child processes
    (which set it too), so that runs in different processes are bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_loglik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1)


def conjugate(n: int = 12, *, loglik=gaussian_loglik, dtype=torch.float64):
    """z ~ N(0, PRIOR_SD^2 I_2), x | z ~ N(z, NOISE_SD^2 I_2), n observations."""
    prior = Independent(
        Normal(torch.zeros(D, dtype=dtype), PRIOR_SD * torch.ones(D, dtype=dtype)), 1
    )
    model = Model(prior, loglik, simulate=lambda z: z + NOISE_SD * torch.randn_like(z))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g, dtype=dtype) * math.sqrt(PRIOR_SD**2 + NOISE_SD**2)
    return model, x


def small(**kw):
    """A fit that takes about a second on two cores."""
    base = dict(
        encoder="gaussian",
        method="smc-wake-c",
        steps=20,
        num_particles=50,
        batch_size=6,
        refresh_every=5,
        refresh_size=4,
        checkpoint_every=10,
        progress=False,
    )
    return {**base, **kw}


def with_encoder(**kw):
    """Settings for a fit given a built encoder (no encoder kind)."""
    settings = small(**kw)
    del settings["encoder"]
    return settings


def same_training(a, b) -> None:
    """Two FitResults made the same updates: equal parameters, losses and banks."""
    for (name, p), q in zip(
        a.encoder.state_dict().items(), b.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert a.history["step"] == b.history["step"]
    assert a.history["loss"] == b.history["loss"]
    assert torch.equal(a.bank.z, b.bank.z)
    assert torch.equal(a.bank.log_z_runs, b.bank.log_z_runs)


def g0() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ============================================================================ 1. input validation
BAD_X = [
    pytest.param(lambda x: x[0], ValueError, r"expected shape \[B, p\].*x\[None, :\]", id="1-D"),
    pytest.param(lambda x: x.long(), TypeError, "floating-point tensor.*int64", id="integer"),
    pytest.param(lambda x: x.tolist(), TypeError, "torch.Tensor.*list", id="list"),
    pytest.param(lambda x: x[:0], ValueError, "no observations", id="empty"),
    pytest.param(
        lambda x: torch.cat([x, torch.full((1, D), math.nan, dtype=x.dtype)]),
        ValueError,
        r"finite.*NaN in observation 12",
        id="NaN",
    ),
    pytest.param(
        lambda x: torch.cat([x[:3], torch.tensor([[0.0, -math.inf]], dtype=x.dtype)]),
        ValueError,
        r"finite.*inf in observation 3",
        id="inf",
    ),
]


@pytest.mark.parametrize(("corrupt", "error", "message"), BAD_X)
def test_run_smc_rejects_bad_observations(corrupt, error, message):
    model, x = conjugate()
    with pytest.raises(error, match=message):
        run_smc(model, corrupt(x), 20, generator=g0())


@pytest.mark.parametrize(("corrupt", "error", "message"), BAD_X)
def test_fit_rejects_bad_observations(corrupt, error, message):
    model, x = conjugate()
    with pytest.raises(error, match=message):
        fit(model, corrupt(x), **small())


def test_observations_with_the_wrong_number_of_columns_are_named():
    model, x = conjugate()
    x3 = torch.cat([x, x[:, :1]], dim=1)  # p = 3 where the likelihood expects 2
    # a fresh model does not know p: its first likelihood evaluation fails, and says why
    with pytest.raises(ValueError, match=r"first evaluation.*x \[12, 3\].*number of columns"):
        run_smc(model, x3, 20, generator=g0())
    with pytest.raises(ValueError, match=r"first evaluation.*x \[12, 3\]"):
        fit(model, x3, **small())
    # once used, the model knows p and checks it up front
    run_smc(model, x, 20, generator=g0())
    with pytest.raises(ValueError, match=r"expected shape \[\*, 2\].*received \[12, 3\]"):
        run_smc(model, x3, 20, generator=g0())


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


def test_encoder_whose_dimensions_do_not_match_is_refused():
    model, x = conjugate()
    with pytest.raises(ValueError, match=r"z_dim=3, x_dim=2; the model has d=2 and x has p=2"):
        fit(model, x, encoder=GaussianEncoder(D, 3), **with_encoder())
    with pytest.raises(ValueError, match=r"z_dim=2, x_dim=5; the model has d=2 and x has p=2"):
        fit(model, x, encoder=GaussianEncoder(5, D), **with_encoder())
    encoder = GaussianEncoder(D, D)
    with pytest.raises(
        ValueError, match=r"z: expected shape \[B=12, S, d=2\], received \[12, 4, 3\]"
    ):
        encoder.log_prob(torch.zeros(12, 4, 3), x.float())
    with pytest.raises(
        ValueError, match=r"z: expected shape \[B=12, S, d=2\], received \[12, 2\]"
    ):
        encoder.log_prob(torch.zeros(12, 2), x.float())
    with pytest.raises(ValueError, match=r"x: expected shape \[\*, 2\], received \[12, 3\]"):
        encoder.log_prob(torch.zeros(12, 4, 2), torch.zeros(12, 3))


def test_fit_refuses_an_encoder_that_is_not_an_encoder():
    model, x = conjugate()
    with pytest.raises(TypeError, match="encoder"):
        fit(model, x, encoder=torch.nn.Linear(D, D), **with_encoder())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_particles=1), "num_particles: expected an integer >= 2, received 1"),
        (dict(num_particles=2.5), "num_particles: expected an integer >= 2, received 2.5"),
        (dict(ess_target=0.0), r"ess_target: expected a fraction in \(0, 1\), received 0.0"),
        (dict(ess_target=1.0), r"ess_target: .*received 1.0"),
        (dict(ess_target=math.nan), r"ess_target: .*received nan"),
        (dict(resample_threshold=1.5), r"resample_threshold: expected a fraction in \[0, 1\]"),
        (dict(max_stages=0), "max_stages: expected .*>= 1, received 0"),
        (dict(resampling="sytematic"), "resampling: unknown scheme 'sytematic'; expected one of"),
        (dict(kernel="rwm"), "kernel: unknown name 'rwm'; expected one of"),
        (dict(num_mcmc_steps=0), "num_steps: expected >= [12].*received 0"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_run_smc_rejects_invalid_options(options, message):
    model, x = conjugate()
    with pytest.raises(ValueError, match=message):
        run_smc(model, x, **{"num_particles": 20, **options}, generator=g0())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(ess_target="0.5"), "ess_target"),
        (dict(max_stages=2.5), "max_stages"),
        (dict(min_increment=0.0), "min_increment"),
        (dict(min_increment=-1e-9), "min_increment"),
        (dict(generator=0), r"generator: expected a torch.Generator .*received int.*seed=0"),
        (dict(seed="0"), "seed: expected an integer or None, received '0'"),
        (dict(seed=0, generator=g0()), "seed and generator: pass one of them, not both"),
        (dict(num_mcmc_steps=2.5), "num_mcmc_steps: expected None or an integer >= 1.*2.5"),
        (dict(dtype=torch.int32), r"dtype: expected .*torch.float64, received torch.int32"),
        (dict(dtype=torch.float16), "dtype: .*received torch.float16"),
        (dict(dtype="float64"), "dtype: .*received 'float64'"),
    ],
    ids=[
        "ess-str",
        "max-stages-float",
        "min-increment-0",
        "min-increment-negative",
        "generator-int",
        "seed-str",
        "seed-and-generator",
        "mcmc-steps-float",
        "dtype-int32",
        "dtype-float16",
        "dtype-str",
    ],
)
def test_run_smc_rejects_mistyped_options(options, message):
    model, x = conjugate()
    with pytest.raises((ValueError, TypeError), match=message):
        run_smc(model, x, 20, **{"generator": g0(), **options})


def test_run_smc_seed_is_a_generator_seeded_with_it():
    model, x = conjugate(4)
    by_seed = run_smc(model, x, 30, seed=7)
    by_generator = run_smc(model, x, 30, generator=torch.Generator().manual_seed(7))
    assert torch.equal(by_seed.particles, by_generator.particles)
    assert torch.equal(by_seed.log_evidence, by_generator.log_evidence)
    assert not torch.equal(run_smc(model, x, 30, seed=8).particles, by_seed.particles)


def test_run_smc_runs_half_precision_observations_in_the_prior_precision():
    # x only conditions the likelihood: it is converted to the run's dtype (the prior's, or
    # dtype=), which is exact from float16 and bfloat16, so the run is the one on those values
    model, x = conjugate(4)
    for low in (torch.float16, torch.bfloat16):
        result = run_smc(model, x.to(low), 30, generator=g0())
        same_values = run_smc(model, x.to(low).double(), 30, generator=g0())
        assert result.particles.dtype == torch.float64
        assert torch.equal(result.log_evidence, same_values.log_evidence)


class _Emulator(torch.nn.Module):
    """A learnable stand-in for a neural emulator: mean = z @ W + b, Gaussian noise."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(D, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))

    def forward(self, z, x):
        return Normal(z @ self.weight + self.bias, NOISE_SD).log_prob(x[:, None, :]).sum(-1)


def _parameter_noise_loglik():
    noise = torch.nn.Parameter(torch.tensor(NOISE_SD, dtype=torch.float64))

    def loglik(z, x):
        return Normal(z, noise).log_prob(x[:, None, :]).sum(-1)

    return loglik, [noise]


def _emulator_loglik():
    emulator = _Emulator()
    return emulator, list(emulator.parameters())


def _kernels_by_name():
    from smcwake.smc.kernels import ENCODER_KERNEL_NAMES, KERNEL_NAMES, get_kernel

    encoder = GaussianEncoder(D, D).double()
    built = [
        (name, lambda n=name: get_kernel(n, encoder=encoder)) for name in ENCODER_KERNEL_NAMES
    ]
    return [(name, lambda n=name: n) for name in KERNEL_NAMES] + built


@pytest.mark.parametrize(
    "likelihood",
    [_parameter_noise_loglik, _emulator_loglik],
    ids=["parameter-noise", "module-emulator"],
)
@pytest.mark.parametrize(
    ("name", "kernel"), _kernels_by_name(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_run_smc_with_a_likelihood_whose_output_requires_grad(likelihood, name, kernel):
    # premise: the likelihood's output is part of an autograd graph
    loglik, parameters = likelihood()
    _, x = conjugate(4)
    assert loglik(torch.zeros(4, 3, D, dtype=torch.float64), x).requires_grad
    model = Model(conjugate()[0].prior, loglik)
    result = run_smc(model, x, 30, kernel=kernel(), generator=g0())
    # no graph was kept and no gradient reached the parameters
    assert not any(t.requires_grad for t in result if isinstance(t, torch.Tensor))
    assert all(p.grad is None for p in parameters)
    # the same numbers as the same likelihood with its parameters frozen
    for p in parameters:
        p.requires_grad_(False)
    frozen = run_smc(Model(model.prior, loglik), x, 30, kernel=kernel(), generator=g0())
    assert bool(frozen.converged.all()), name
    assert torch.equal(result.particles, frozen.particles), name
    assert torch.equal(result.log_evidence, frozen.log_evidence), name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(method="smc-wake-d"), "method: unknown 'smc-wake-d'; expected one of"),
        (dict(steps=-1), "steps: expected an integer >= 0, received -1"),
        (dict(batch_size=0), "batch_size: expected an integer >= 1, received 0"),
        (dict(num_particles=1), "num_particles: expected >= 2, received 1"),
        (dict(lr=0.0), "lr: expected .*> 0, received 0.0"),
        (dict(lr=math.nan), "lr: expected .*> 0, received nan"),
        (dict(max_bad_steps=0), "max_bad_steps: expected an integer >= 1"),
        (dict(checkpoint_every=0), "checkpoint_every: expected an integer >= 1"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_train_config_rejects_invalid_values(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lr=math.inf), "lr"),  # the first step makes every parameter NaN
        (dict(grad_clip=-1.0), "grad_clip"),  # silently turns descent into ascent
        (dict(grad_clip=math.nan), "grad_clip"),
        (dict(refresh_size=-3), "refresh_size"),  # silently refreshes n - 3 observations
        (dict(runs_per_step=0), "runs_per_step"),  # fails later with "math domain error"
        (dict(max_evals=-1), "max_evals"),
        (dict(encoder="flw"), "encoder"),  # fails only after the data were checked
        (dict(smc="rwmh"), "smc"),  # AttributeError inside fit
        (dict(smc=dict(kernel="rwm")), "kernel"),  # fails at the first SMC run
        (dict(smc=dict(ess_target=2.0)), "ess_target"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_train_config_rejects_values_that_fail_late_or_silently(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(**options)


def test_objectives_validate_their_batch():
    model, x = conjugate()
    encoder = GaussianEncoder(D, D).double()
    wake = get_objective("wake")
    ctx = Context(model, 8, g0())
    idx = torch.arange(12)
    with pytest.raises(ValueError, match="finite.*NaN in observation 2"):
        wake(encoder, Batch(idx, x.index_fill(0, torch.tensor([2]), math.nan)), ctx)
    with pytest.raises(ValueError, match=r"one index per observation, received idx \[5\]"):
        wake(encoder, Batch(idx[:5], x), ctx)
    with pytest.raises(TypeError, match="batch.idx: expected a 1-D integer tensor"):
        wake(encoder, Batch(idx.double(), x), ctx)
    with pytest.raises(ValueError, match="num_particles: expected an integer >= 1, received 0"):
        wake(encoder, Batch(idx, x), Context(model, 0, g0()))
    with pytest.raises(ValueError, match="num_particles: expected an integer >= 2, received 1"):
        get_objective("msc")(encoder, Batch(idx, x), Context(model, 1, g0()))


# ============================================================================ 2. numerical faults
def bounded_noise(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gaussian noise truncated at 5: zero likelihood when any |x - z| > 5."""
    far = (x[:, None, :] - z).abs().amax(-1) > 5.0
    return torch.where(far, -math.inf, gaussian_loglik(z, x))


def test_run_smc_flags_zero_likelihood_and_keeps_other_rows_exact(caplog):
    model, x = conjugate(loglik=bounded_noise)
    x[[2, 9]] = 100.0  # far outside where the prior puts any particle
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        result = run_smc(model, x, 200, generator=g0())
    flagged = torch.zeros(12, dtype=torch.bool)
    flagged[[2, 9]] = True
    assert torch.equal(result.zero_likelihood, flagged)
    assert torch.equal(result.converged, ~flagged)
    assert torch.equal(result.log_evidence[flagged], torch.full((2,), -math.inf).double())
    assert torch.isfinite(result.log_evidence[~flagged]).all()
    # every row, flagged or not, carries normalized weights and no NaN
    torch.testing.assert_close(
        torch.logsumexp(result.log_weights, -1), torch.zeros(12, dtype=torch.float64)
    )
    assert not torch.isnan(result.particles).any()
    assert "2 of 12 observations have zero likelihood" in caplog.text


def test_fit_excludes_zero_likelihood_observations_and_trains_the_rest(caplog):
    model, x = conjugate(loglik=bounded_noise)
    x[[2, 9]] = 100.0
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        out = fit(model, x, **small(steps=30))
    excluded = torch.nonzero(out.bank.excluded).flatten().tolist()
    assert excluded == [2, 9]
    assert out.bank.num_runs[[2, 9]].tolist() == [0, 0]  # never stored, never refreshed
    assert (out.bank.num_runs[~out.bank.excluded] >= 1).all()
    assert int(out.bank.num_runs.sum()) > 10  # refreshes kept running on the others
    assert out.history["step"][-1] == 30
    assert out.history["skipped_steps"][-1] == 0
    assert all(torch.isfinite(p).all() for p in out.encoder.parameters())
    assert "zero likelihood at every particle (first: [2, 9])" in caplog.text


def test_fit_with_no_usable_observation_stops_with_a_clear_error():
    model, x = conjugate(loglik=bounded_noise)
    with pytest.raises(RuntimeError, match="no observation has a usable SMC run"):
        fit(model, x + 100.0, **small())


class FaultyEncoder(GaussianEncoder):
    """A Gaussian encoder whose log_prob is NaN on chosen calls (1-based), e.g. an overflow."""

    def __init__(self, bad_calls) -> None:
        super().__init__(D, D)
        self.double()
        self.bad_calls = bad_calls
        self.calls = 0

    def log_prob(self, z, x):
        self.calls += 1
        out = super().log_prob(z, x)
        return out * math.nan if self.calls in self.bad_calls else out


def test_non_finite_losses_are_skipped_counted_and_logged(caplog):
    # smc-wake-c calls log_prob once per step, so call i is step i
    model, x = conjugate()
    encoder = FaultyEncoder({3, 4, 9})
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        out = fit(model, x, encoder=encoder, **with_encoder(log_every=1))
    h = out.history
    assert h["step"] == list(range(1, 21))
    assert h["skipped_steps"][1:5] == [0, 1, 2, 2]
    assert h["skipped_steps"][-1] == 3
    assert [math.isnan(v) for v in h["loss"]].count(True) == 3
    assert caplog.text.count("step skipped") == 3
    assert all(torch.isfinite(p).all() for p in out.encoder.parameters())


def test_consecutive_non_finite_losses_raise_and_leave_a_usable_checkpoint(tmp_path):
    model, x = conjugate()
    bad_from_13 = FaultyEncoder(range(13, 10**6))
    with pytest.raises(FloatingPointError, match="4 consecutive non-finite losses at step 16"):
        fit(model, x, encoder=bad_from_13, run_dir=tmp_path, **with_encoder(max_bad_steps=4))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["encoder"].values())
    # after the fault is fixed, the run resumes and finishes
    healthy = GaussianEncoder(D, D).double()
    out = fit(
        model,
        x,
        encoder=healthy,
        run_dir=tmp_path,
        resume=True,
        **with_encoder(max_bad_steps=4),
    )
    assert out.history["step"][-1] == 20


def test_floating_point_error_keeps_the_last_good_checkpoint(tmp_path):
    # Parameters that became NaN after checkpoint 10 (a stand-in for an overflowing update)
    # make every later loss NaN. The checkpoint left behind must be the one of step 10: resuming
    # it gives a full, gap-free history and finite parameters.
    model, x = conjugate()

    def poison_at_12(step, encoder, row):
        if step == 12:
            with torch.no_grad():
                next(encoder.parameters()).fill_(math.nan)

    settings = small(steps=20, log_every=1, max_bad_steps=3)
    with pytest.raises(FloatingPointError):
        fit(model, x, run_dir=tmp_path, callbacks=[poison_at_12], **settings)
    out = fit(model, x, run_dir=tmp_path, resume=True, **settings)
    assert out.history["step"] == list(range(1, 21))
    assert all(torch.isfinite(p).all() for p in out.encoder.parameters())


def scaled_loglik(scale: float, offset: float):
    def loglik(z, x):
        return scale * gaussian_loglik(z, x) + offset

    return loglik


@pytest.mark.parametrize(
    ("scale", "offset"),
    [(1e6, 0.0), (1.0, 1e6), (1.0, -1e6), (1e6, -1e6)],
    ids=["scale-1e6", "offset+1e6", "offset-1e6", "both"],
)
def test_huge_log_likelihoods_give_finite_unbiased_evidence(scale, offset):
    # scale * log N(x; z, s^2) + offset = scale * c + offset - |x - z|^2 / (2 v), v = s^2 / scale,
    # c = -log(s sqrt(2 pi)), so log p(x) = offset + scale * D * c + (D / 2) log(2 pi v)
    # + log N(x; 0, (PRIOR_SD^2 + v) I). Zhat / p(x) has mean 1: 32 independent samplers on one
    # observation, tolerance 3 standard errors of the mean; an overflow or a lost 1e6 term would
    # give inf, NaN or a ratio of exp(+-1e6).
    model, x = conjugate(1, loglik=scaled_loglik(scale, offset))
    x = x.repeat(32, 1)
    result = run_smc(model, x, 200, generator=g0())
    assert result.converged.all()
    assert torch.isfinite(result.log_evidence).all()
    assert not torch.isnan(result.log_weights).any()
    torch.testing.assert_close(
        torch.logsumexp(result.log_weights, -1), torch.zeros(32, dtype=torch.float64)
    )
    var = NOISE_SD**2 / scale
    c = -math.log(NOISE_SD * math.sqrt(2 * math.pi))
    exact = (
        offset
        + scale * D * c
        + 0.5 * D * math.log(2 * math.pi * var)
        + Normal(0.0, math.sqrt(PRIOR_SD**2 + var)).log_prob(x).sum(-1)
    )
    ratio = torch.exp(result.log_evidence - exact)
    se = float(ratio.std()) / math.sqrt(32)
    assert abs(float(ratio.mean()) - 1) < 3 * se, (float(ratio.mean()), se)
    assert se < 0.15  # the check has power


@pytest.mark.parametrize(
    ("dtype", "level"),
    [(torch.float32, -1e4), (torch.float64, -5e59)],
    ids=["float32-10k-data-points", "float64-x-1e30"],
)
def test_normalize_is_exact_for_large_log_weights(dtype, level):
    # a likelihood of ~10^4 data points has log-likelihoods ~ -1e4, where one float32 ulp is
    # 1e-3; x = 1e30 gives float64 log-likelihoods ~ -5e59 (equal for every particle)
    log_weights = level + torch.tensor([[0.0, -0.5, -1.0, -3.0]], dtype=dtype)
    total = torch.logsumexp(normalize(log_weights).double(), -1)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=4e-7, rtol=0)


def test_run_smc_weights_are_normalized_when_every_likelihood_is_huge():
    # x = 1e30: every particle has log-likelihood -5e59 (z is lost in (x - z)^2 at that scale)
    model, x = conjugate(4)
    result = run_smc(model, x + 1e30, 200, generator=g0())
    total = torch.logsumexp(result.log_weights, -1)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-9, rtol=0)


def sharpness_model():
    """d = 1, x = (value, noise sd): sd 1e-3 needs ~8 tempering stages, sd 0.5 needs 2."""
    prior = Independent(
        Normal(torch.zeros(1, dtype=torch.float64), PRIOR_SD * torch.ones(1, dtype=torch.float64)),
        1,
    )
    model = Model(prior, lambda z, x: Normal(z[..., 0], x[:, 1:2]).log_prob(x[:, :1]))
    x = torch.tensor([[1.0, 0.5], [0.3, 1e-3], [-1.0, 0.5], [2.0, 1e-3]] * 3, dtype=torch.float64)
    return model, x


def test_unconverged_runs_are_flagged_and_not_stored_unless_asked(caplog):
    model, x = sharpness_model()
    sharp = x[:, 1] < 0.1
    result = run_smc(model, x, 100, max_stages=4, generator=g0())
    assert torch.equal(result.converged, ~sharp)
    assert (result.num_stages[sharp] == 4).all()
    assert (result.temperatures[sharp, -1] < 1).all()
    assert not torch.isnan(result.log_weights).any()

    settings = small(steps=10, smc=SMCOptions(max_stages=4), batch_size=4, refresh_size=4)
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        strict = fit(model, x, **settings)
    assert (strict.bank.num_runs[sharp] == 0).all()
    assert (strict.bank.num_runs[~sharp] >= 1).all()
    assert not strict.bank.excluded.any()  # not excluded: a later refresh may converge
    assert "dropped 6 SMC runs that did not reach tau=1" in caplog.text
    loose = fit(model, x, use_unconverged=True, **settings)
    assert (loose.bank.num_runs >= 1).all()


@pytest.mark.parametrize("method", ["elbo", "iwae"])
def test_a_bound_that_is_minus_inf_everywhere_gives_an_infinite_loss_not_zero(method):
    # with zero likelihood at every draw the bound is -inf; a loss of 0 would make the trainer
    # take an Adam step on a zero gradient instead of counting a skipped step
    model, x = conjugate(4, loglik=lambda z, x: torch.full(z.shape[:2], -math.inf).double())
    encoder = GaussianEncoder(D, D).double()
    loss, _ = get_objective(method)(encoder, Batch(torch.arange(4), x), Context(model, 8, g0()))
    assert loss == math.inf


def test_training_on_a_bound_that_is_minus_inf_everywhere_stops_with_floating_point_error():
    model, x = conjugate(4, loglik=lambda z, x: torch.full(z.shape[:2], -math.inf).double())
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite losses at step 3"):
        fit(model, x, **small(method="elbo", num_proposals=4, max_bad_steps=3))


# ============================================================================ 3. interruptions
@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_during_fit_writes_a_final_checkpoint_and_resume_is_exact(tmp_path, signum, raised):
    model, x = conjugate()
    settings = small(checkpoint_every=1000, log_every=1)
    whole = fit(model, x, **settings)

    def signal_at_7(step, encoder, row):
        if step == 7:
            os.kill(os.getpid(), signum)

    with pytest.raises(raised) as info:
        fit(model, x, run_dir=tmp_path, callbacks=[signal_at_7], **settings)
    if raised is SystemExit:
        assert info.value.code == 128 + signal.SIGTERM
    # the only checkpoint is the one written on the signal, at the step where fit stopped
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["history"]["step"][-1] == 7
    resumed = fit(model, x, run_dir=tmp_path, resume=True, **settings)
    same_training(whole, resumed)


TRAINING_SCRIPT = '''
"""Train on a conjugate Gaussian model; used by the interruption tests."""
import math
import os
import signal
import sys
import time

import torch
from torch.distributions import Independent, Normal

from smcwake import Model, fit

SETTINGS = dict(
    encoder="gaussian", method="smc-wake-c", steps=40, num_particles=50, batch_size=8,
    refresh_every=4, refresh_size=4, smc_batch_size=4, checkpoint_every=5, log_every=1,
    progress=False, seed=3,
)


def build(signal_on_smc_call=None):
    calls = [0]

    def loglik(z, x):
        if z.shape[1] != SETTINGS["num_particles"]:  # the model's fingerprint, not SMC
            return Normal(z, 0.5).log_prob(x[:, None, :]).sum(-1)
        calls[0] += 1
        if calls[0] == signal_on_smc_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return Normal(z, 0.5).log_prob(x[:, None, :]).sum(-1)

    prior = Independent(Normal(torch.zeros(2, dtype=torch.float64), 2.0 * torch.ones(2,
                        dtype=torch.float64)), 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64) * math.sqrt(4.25)
    return Model(prior, loglik), x


if __name__ == "__main__":
    run_dir, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)

    def record(step, encoder, row):
        with open(os.path.join(run_dir, "seen_steps.txt"), "a") as fh:
            fh.write(f"{step}\\n")
        time.sleep(0.05)  # slow enough for the parent to interrupt mid-run

    model, x = build(signal_on_smc_call=1 if mode == "term-in-initial-smc" else None)
    fit(model, x, run_dir=run_dir, callbacks=[record], **SETTINGS)
'''


@pytest.fixture(scope="module")
def training_script(tmp_path_factory):
    """The script's path, its module (build, SETTINGS) and an uninterrupted run of it."""
    folder = tmp_path_factory.mktemp("script")
    path = folder / "train_conjugate.py"
    path.write_text(TRAINING_SCRIPT)
    spec = importlib.util.spec_from_file_location("train_conjugate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, x = module.build()
    whole = fit(model, x, **module.SETTINGS)
    return path, module, whole


def start(script: Path, run_dir: Path, mode: str) -> subprocess.Popen:
    run_dir.mkdir()
    return subprocess.Popen(
        [sys.executable, str(script), str(run_dir), mode],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def saved_step(run_dir: Path) -> int:
    """The last training step recorded by the checkpoint's history (0 before the first)."""
    try:
        steps = json.loads((run_dir / "history.json").read_text())["history"]["step"]
    except FileNotFoundError:
        return 0
    return steps[-1] if steps else 0


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, step: int) -> None:
    """Poll until a checkpoint at training step >= ``step`` is on disk."""
    deadline = time.monotonic() + 120.0
    while saved_step(run_dir) < step:
        if proc.poll() is not None:
            pytest.fail(f"training ended before checkpoint {step}: {proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint at step {step} after 120 s")
        time.sleep(0.005)


def test_sigkill_leaves_the_last_checkpoint_intact_and_resume_is_exact(tmp_path, training_script):
    script, module, whole = training_script
    run_dir = tmp_path / "run"
    proc = start(script, run_dir, "slow")
    wait_for_checkpoint(run_dir, proc, 5)  # the first checkpoint of a training step
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 5 <= saved_step(run_dir) < module.SETTINGS["steps"]  # killed mid-run
    (run_dir / f".{CHECKPOINT_NAME}.tmp-1").write_bytes(b"half a write")  # a leftover temp file
    model, x = module.build()
    resumed = fit(model, x, run_dir=run_dir, resume=True, **module.SETTINGS)
    same_training(whole, resumed)


def test_sigterm_from_outside_writes_a_checkpoint_at_the_step_it_stopped(
    tmp_path, training_script
):
    script, module, whole = training_script
    run_dir = tmp_path / "run"
    proc = start(script, run_dir, "slow")
    wait_for_checkpoint(run_dir, proc, 5)
    time.sleep(0.12)  # land between checkpoints
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    seen = (run_dir / "seen_steps.txt").read_text().split()
    saved = saved_step(run_dir)
    assert saved == int(seen[-1])  # the checkpoint is at the last step taken
    assert saved < module.SETTINGS["steps"]
    model, x = module.build()
    resumed = fit(model, x, run_dir=run_dir, resume=True, **module.SETTINGS)
    same_training(whole, resumed)


def test_sigterm_during_the_initial_smc_writes_a_checkpoint(tmp_path, training_script):
    script, module, whole = training_script
    run_dir = tmp_path / "run"
    proc = start(script, run_dir, "term-in-initial-smc")  # the first SMC evaluation signals
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    # the batch in progress (smc_batch_size=4 of 16 observations) finished and was saved
    counters = torch.load(run_dir / CHECKPOINT_NAME, weights_only=False)["counters"]
    assert counters[6] == 4  # the next observation of the initial SMC
    model, x = module.build()
    resumed = fit(model, x, run_dir=run_dir, resume=True, **module.SETTINGS)
    same_training(whole, resumed)


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=10))
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(fh.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        fit(model, x, run_dir=tmp_path, resume=True, **small(steps=20))
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    out = fit(model, x, run_dir=tmp_path, resume=True, **small(steps=20))
    assert out.history["step"][-1] == 20


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate, "unreadable.*delete it to restart"),
        (lambda path: path.write_bytes(b""), "unreadable"),
        (lambda path: torch.save({"weights": torch.zeros(3)}, path), "not an smcwake v1"),
        (lambda path: torch.save([1, 2, 3], path), "not an smcwake v1"),
    ],
    ids=["truncated", "empty", "foreign-dict", "foreign-list"],
)
def test_a_corrupted_checkpoint_is_refused(tmp_path, damage, message):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    damage(tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=message):
        fit(model, x, run_dir=tmp_path, resume=True, **small())


def test_a_checkpoint_of_other_data_or_settings_is_refused(tmp_path):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    with pytest.raises(ValueError, match="different observations"):
        fit(model, x[:-1], run_dir=tmp_path, resume=True, **small())
    with pytest.raises(ValueError, match="other settings .*method: checkpoint 'smc-wake-c'"):
        fit(model, x, run_dir=tmp_path, resume=True, **small(method="smc-wake-naive"))
    with pytest.raises(ValueError, match="other settings .*seed"):
        fit(model, x, run_dir=tmp_path, resume=True, **small(seed=1))


@pytest.mark.parametrize("case", ["other-model-dimension", "missing-keys"])
def test_a_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path, case):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    path = tmp_path / CHECKPOINT_NAME
    if case == "missing-keys":
        state = torch.load(path, weights_only=False)
        torch.save({"version": state["version"]}, path)
    else:  # same data and settings, but a model with d = 3
        prior = Independent(Normal(torch.zeros(3).double(), torch.ones(3).double()), 1)
        model = Model(prior, lambda z, x: Normal(z[..., :2], 1.0).log_prob(x[:, None]).sum(-1))
    with pytest.raises(ValueError, match="checkpoint"):
        fit(model, x, run_dir=tmp_path, resume=True, **small())


# ============================================================================ 4. run folders
class Counted:
    """A likelihood that counts its calls (to show that a check came before any of them)."""

    def __init__(self, loglik=gaussian_loglik):
        self.calls, self.loglik = 0, loglik

    def __call__(self, z, x):
        self.calls += 1
        return self.loglik(z, x)


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in (CHECKPOINT_NAME, "history.json")}


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=20))
    before = run_files(tmp_path)
    counted = Counted()
    model, x = conjugate(loglik=counted)
    refused = (
        r"already holds a run \(checkpoint.pt, history.json\); pass resume=True .*overwrite=True"
    )
    with pytest.raises(ValueError, match=refused):
        fit(model, x, run_dir=tmp_path, **small(steps=1))
    with pytest.raises(ValueError, match="resume=True and overwrite=True: choose one"):
        fit(model, x, run_dir=tmp_path, resume=True, overwrite=True, **small(steps=1))
    assert counted.calls == 0  # refused before any likelihood evaluation
    assert run_files(tmp_path) == before
    # asked to, it replaces the run
    out = fit(model, x, run_dir=tmp_path, overwrite=True, **small(steps=1))
    assert out.history["step"] == [1]
    assert json.loads((tmp_path / "history.json").read_text())["history"]["step"] == [1]
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["counters"][0] == 1


def test_a_history_without_its_checkpoint_is_not_overwritten_by_a_resume(tmp_path):
    # a finished benchmark run keeps its history and drops its checkpoint
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    (tmp_path / CHECKPOINT_NAME).unlink()
    history = (tmp_path / "history.json").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run \(history.json\)"):
        fit(model, x, run_dir=tmp_path, **small())
    with pytest.raises(ValueError, match="holds history.json but no checkpoint.pt to resume"):
        fit(model, x, run_dir=tmp_path, resume=True, **small())
    assert (tmp_path / "history.json").read_bytes() == history
    assert fit(model, x, run_dir=tmp_path, overwrite=True, **small()).history["step"][-1] == 20


def test_resume_without_a_run_dir_is_an_error():
    counted = Counted()
    model, x = conjugate(loglik=counted)
    with pytest.raises(ValueError, match="resume=True needs run_dir"):
        fit(model, x, resume=True, **small())
    assert counted.calls == 0


def _unwritable_dirs(tmp_path: Path):
    if Path("/proc/self").is_dir():  # a folder that exists but takes no new files
        yield "proc", Path("/proc/self")
    (tmp_path / "a-file").write_text("")
    yield "below-a-file", tmp_path / "a-file" / "run"
    if os.geteuid() != 0:  # permissions do not bind root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        yield "read-only", locked


def test_an_unwritable_run_dir_is_refused_before_any_smc(tmp_path):
    for label, run_dir in _unwritable_dirs(tmp_path):
        counted = Counted()
        model, x = conjugate(loglik=counted)
        with pytest.raises(ValueError, match=r"run_dir .*: cannot write checkpoints there"):
            fit(model, x, run_dir=run_dir, **small())
        assert counted.calls == 0, label


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fit_refuses_half_precision_observations_before_any_smc(dtype):
    counted = Counted()
    model, x = conjugate(loglik=counted)
    with pytest.raises(TypeError, match=rf"torch.float32 or torch.float64; received {dtype}"):
        fit(model, x.to(dtype), **small())
    assert counted.calls == 0


def wider_noise(z, x):
    return Normal(z, 6 * NOISE_SD).log_prob(x[:, None, :]).sum(-1)


def other_models():
    """(label, model, what the refusal names): each differs from conjugate() in one way."""
    ones = torch.ones(D, dtype=torch.float64)
    yield "likelihood", conjugate(loglik=wider_noise)[0], r"log-likelihood at fixed prior draws"
    prior = Independent(Normal(0 * ones, 3 * ones), 1)
    yield (
        "prior-parameter",
        Model(prior, gaussian_loglik),
        r"base_dist.scale: .*\[2, 2\] vs now \[3, 3\]",
    )
    prior = Independent(torch.distributions.Laplace(0 * ones, PRIOR_SD * ones), 1)
    yield (
        "prior-class",
        Model(prior, gaussian_loglik),
        r"prior class at prior.base_dist: .*normal.Normal vs now .*laplace.Laplace",
    )


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(method="smc-wake-a", steps=10))
    before = run_files(tmp_path)
    for label, other, names in other_models():
        with pytest.raises(ValueError, match=f"made with another model .*{names}"):
            fit(other, x, run_dir=tmp_path, resume=True, **small(method="smc-wake-a"))
        assert run_files(tmp_path) == before, label


def test_resume_accepts_the_same_model_rebuilt_with_other_rounding(tmp_path):
    def same_in_another_order(z, x):
        r = (x[:, None, :] - z) / NOISE_SD
        return (-0.5 * r.square()).sum(-1) - D * (math.log(NOISE_SD) + 0.5 * math.log(2 * math.pi))

    model, x = conjugate()
    z = model.sample_prior((12, 4), generator=g0())
    a, b = gaussian_loglik(z, x), same_in_another_order(z, x)
    assert not torch.equal(a, b)  # premise: not bit-identical ...
    torch.testing.assert_close(a, b)  # ... only rounding apart
    fit(model, x, run_dir=tmp_path, **small(steps=10))
    rebuilt, _ = conjugate(loglik=same_in_another_order)
    assert fit(rebuilt, x, run_dir=tmp_path, resume=True, **small()).history["step"][-1] == 20


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


class _WideEmulator(_Emulator):
    def forward(self, z, x):
        return Normal(z @ self.weight + self.bias, 6 * NOISE_SD).log_prob(x[:, None, :]).sum(-1)


def test_resume_with_a_learned_decoder_checks_the_decoder_state_it_saved(tmp_path):
    model, x = conjugate()
    decoder = _Emulator()
    settings = small(decoder_lr=0.05)
    fit(
        Model(model.prior, decoder),
        x,
        run_dir=tmp_path,
        decoder=decoder,
        **{**settings, "steps": 6},
    )
    fresh = _Emulator()
    assert not torch.equal(fresh.weight, decoder.weight)  # premise: training moved the decoder
    out = fit(
        Model(model.prior, fresh), x, run_dir=tmp_path, resume=True, decoder=fresh, **settings
    )
    assert out.history["step"][-1] == 20
    other = _WideEmulator()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="another model .*log-likelihood"):
        fit(Model(model.prior, other), x, run_dir=tmp_path, resume=True, decoder=other, **settings)
    for name, value in other.state_dict().items():  # the refused decoder is left as it was
        assert torch.equal(value, before[name]), name


def test_a_checkpoint_without_a_model_fingerprint_resumes_with_a_warning(tmp_path, caplog):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    del state["model"]  # as written before checkpoints carried one
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        out = fit(model, x, run_dir=tmp_path, resume=True, **small())
    assert "no model fingerprint" in caplog.text
    assert out.history["step"][-1] == 20


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fit_distributed_follows_the_same_run_folder_rules(tmp_path, one_process_group):
    from smcwake.distributed import fit_distributed

    model, x = conjugate()
    run = tmp_path / "run"
    fit_distributed(model, x, run_dir=run, **small(steps=4))
    with pytest.raises(ValueError, match=r"rank 0: run_dir .*rank-0 already holds a run"):
        fit_distributed(model, x, run_dir=run, **small(steps=4))
    with pytest.raises(ValueError, match="resume=True needs run_dir"):
        fit_distributed(model, x, resume=True, **small(steps=4))
    assert (
        fit_distributed(model, x, run_dir=run, resume=True, **small(steps=6)).history["step"][-1]
        == 6
    )
    assert fit_distributed(model, x, run_dir=run, overwrite=True, **small(steps=2)).history[
        "step"
    ] == [2]


def test_bench_without_resume_starts_each_run_afresh(tmp_path):
    from smcwake.bench import EvalOptions, run_bench

    kwargs = dict(
        seeds=1,
        steps=4,
        out=tmp_path,
        num_observations=4,
        overrides={"num_particles": 30, "batch_size": 4},
        eval_options=EvalOptions(
            num_samples=50, c2st_observations=0, mmd_samples=20, sbc_samples=19
        ),
        progress=False,
        keep_checkpoints=True,
    )
    first = run_bench("toy-collapse", ["smc-wake-c"], **kwargs)
    again = run_bench("toy-collapse", ["smc-wake-c"], **{**kwargs, "steps": 2})
    for results, steps in ((first, 4), (again, 2)):
        run = results["methods"]["smc-wake-c"]["runs"][0]
        assert "failed" not in run
        assert run["steps"] == steps
