"""The start/end correlation, the kernel that steps until decorrelated, and the mixed flag."""

import logging
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from smcwake import Model, run_smc
from smcwake.smc.mh import Target
from smcwake.smc.mixing import start_end_correlation, until_decorrelated
from smcwake.smc.precondition import shrunk_cholesky
from smcwake.smc.sampler import SMCState
from smcwake.smc.steppers import mala_stepper, random_walk_stepper
from smcwake.tasks.linear_gaussian import linear_gaussian

DT = torch.float64


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8])
def test_start_end_correlation_recovers_a_known_correlation(rho):
    # end = rho start + sqrt(1 - rho^2) noise, coordinates with different scales: r estimates
    # rho; its s.e. is about sqrt((1 - rho^2)^2 / (K d)), so 4 s.e. at K d = 20,000 is < 0.03
    g = torch.Generator().manual_seed(0)
    B, K, d = 3, 4000, 5
    scale = torch.tensor([0.1, 1.0, 3.0, 10.0, 1.0], dtype=DT)
    start = torch.randn(B, K, d, generator=g, dtype=DT) * scale
    noise = torch.randn(B, K, d, generator=g, dtype=DT) * scale
    end = rho * start + math.sqrt(1 - rho**2) * noise
    r = start_end_correlation(start, end, torch.zeros(B, K, dtype=DT))
    assert (r - rho).abs().max() < 0.03, r
    assert (start_end_correlation(start, start, torch.zeros(B, K, dtype=DT)) == 1).all()


def test_start_end_correlation_of_a_point_that_spreads_out():
    start = torch.zeros(1, 100, 2, dtype=DT)
    end = torch.randn(1, 100, 2, dtype=DT)
    flat = torch.zeros(1, 100, dtype=DT)
    assert float(start_end_correlation(start, end, flat)) <= 0.0
    assert float(start_end_correlation(start, start, flat)) == 1.0


def standard_state(B: int, K: int, d: int, target: Target, scale: float, seed: int):
    z = torch.randn(B, K, d, generator=torch.Generator().manual_seed(seed), dtype=DT)
    log_prior, loglik = target.evaluate(z)
    return SMCState(
        z=z,
        log_weights=torch.full((B, K), -math.log(K), dtype=DT),
        log_prior=log_prior,
        loglik=loglik,
        tau=torch.ones(B, dtype=DT),
        log_evidence=torch.zeros(B, dtype=DT),
        scale=torch.full((B,), scale, dtype=DT),
    )


def flat_model(d: int) -> Model:
    prior = Independent(Normal(torch.zeros(d, dtype=DT), torch.ones(d, dtype=DT)), 1)
    return Model(prior, lambda z, x: torch.zeros(z.shape[:2], dtype=z.dtype))


def test_until_decorrelated_stops_each_observation_at_its_target():
    # three samplers at the target N(0, I_4) with random-walk scales 2.38 (good), 0.8 and 0.4
    # (slow): the slow ones need more steps, each stops once its correlation is <= 0.2, and the
    # evaluations are counted per observation
    B, K, d = 3, 800, 4
    target = Target(flat_model(d), torch.zeros(B, 1, dtype=DT))
    state = standard_state(B, K, d, target, 2.38, seed=1)
    state = state._replace(scale=torch.tensor([2.38, 0.8, 0.4], dtype=DT))
    kernel = until_decorrelated(random_walk_stepper(), target_correlation=0.2, max_steps=400)
    chol = shrunk_cholesky(state.z, state.log_weights)
    start = state.z
    state, info = kernel(state, target, torch.Generator().manual_seed(2), chol)
    steps = info.extra["steps"]
    assert steps[0] < steps[1] < steps[2], steps
    # the rule is applied per fold of the crosswise moves, with one standard error of the
    # measure allowed (here sqrt(2 / (4 x 200)) = 0.05 per fold of 200 particles in d = 4);
    # over the whole cloud the correlation is the folds' average up to the spread of their means
    assert (info.extra["correlation"] <= 0.2 + 0.05).all()
    r = start_end_correlation(start, state.z, state.log_weights)
    assert ((r - info.extra["correlation"]).abs() < 0.03).all(), (r, info.extra["correlation"])
    # a fold released before it reached the target itself keeps stepping (its moves are
    # discarded) until it does, for the other folds' benefit: those steps are evaluations too
    assert (info.evals_per_particle >= steps).all()
    assert (info.evals_per_particle <= steps + 400).all()
    # the stationary law is kept: N(0, 1) moments within 4 s.e. after many steps
    assert (state.z.mean(1).abs() < 4 / math.sqrt(K)).all()
    assert ((state.z.var(1) - 1).abs() < 4 * math.sqrt(2 / K)).all()


def test_until_decorrelated_respects_its_cap_and_counts_start_evaluations():
    B, K, d = 2, 200, 3
    target = Target(flat_model(d), torch.zeros(B, 1, dtype=DT))
    state = standard_state(B, K, d, target, 0.01, seed=3)  # tiny steps: never decorrelates
    kernel = until_decorrelated(mala_stepper(), max_steps=7)
    chol = shrunk_cholesky(state.z, state.log_weights)
    _, info = kernel(state, target, torch.Generator().manual_seed(4), chol)
    assert info.extra["steps"].tolist() == [7.0, 7.0]
    assert info.evals_per_particle.tolist() == [8, 8]  # MALA: the gradient at the start, 7 steps
    assert (info.extra["correlation"] > 0.9).all()


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="target_correlation"):
        until_decorrelated(random_walk_stepper(), target_correlation=1.0)
    with pytest.raises(ValueError, match="min_steps"):
        until_decorrelated(random_walk_stepper(), max_steps=3, min_steps=4)
    with pytest.raises(ValueError, match="max_correlation"):
        run_smc(flat_model(1), torch.zeros(1, 1, dtype=DT), 10, max_correlation=1.5)


def test_broken_configuration_is_flagged_and_the_default_is_not(caplog):
    # d = 50 linear Gaussian, random walk with 1 step per stage: the particles never move far
    # from where the prior put them, tau still reaches 1 (converged), but every stage leaves
    # them correlated with their start: the run is flagged and a warning names the field. The
    # default kernel on the same observation decorrelates every stage.
    task = linear_gaussian(d=50, p=100, dtype=DT)
    _, x = task.observations(1, seed=1)
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        broken = run_smc(
            task.model,
            x,
            200,
            kernel="rwmh",
            num_mcmc_steps=1,
            generator=torch.Generator().manual_seed(0),
        )
    assert broken.converged.all()
    assert not broken.mixed.any()
    assert float(broken.correlation_history.nan_to_num(0).amax()) > 0.9
    assert "SMCResult.mixed" in caplog.text
    # the premise: the broken run is far from the posterior (log evidence off by > 100 nats)
    assert float((broken.log_evidence - task.log_evidence(x)).abs()) > 100
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        good = run_smc(task.model, x, 200, generator=torch.Generator().manual_seed(0))
    assert good.converged.all() & good.mixed.all()
    assert float(good.correlation_history.nan_to_num(0).amax()) <= 0.5
    assert "SMCResult.mixed" not in caplog.text


def test_fit_counts_and_skips_unmixed_runs(caplog):
    # d = 20 linear Gaussian with one random-walk step per stage: every run reaches tau = 1
    # unmixed. fit drops them as it drops unconverged runs (no usable run: an error), and with
    # use_unconverged=True keeps them; either way the history counts them.
    from smcwake import fit
    from smcwake.train import SMCOptions

    task = linear_gaussian(d=20, p=40, dtype=DT)
    _, x = task.observations(6, seed=2)
    settings = dict(
        method="smc-wake-c",
        encoder="gaussian",
        steps=3,
        num_particles=100,
        batch_size=3,
        refresh_every=2,
        progress=False,
        smc=SMCOptions(kernel="rwmh", num_mcmc_steps=1),
    )
    with (
        caplog.at_level(logging.WARNING, logger="smcwake"),
        pytest.raises(RuntimeError, match="no observation has a usable SMC run"),
    ):
        fit(task.model, x, **settings)
    assert "SMCResult.mixed" in caplog.text
    kept = fit(task.model, x, use_unconverged=True, **settings)
    assert kept.history["unmixed_runs"][-1] >= 6  # the initial runs at least
    assert int(kept.bank.num_runs.sum()) == kept.history["smc_runs"][-1]
    good = fit(task.model, x, **{**settings, "smc": SMCOptions()})  # the default kernel
    assert good.history["unmixed_runs"][-1] == 0
    assert int(good.bank.num_runs.sum()) > 0
