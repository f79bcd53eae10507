"""fit(): reaches the exact posterior on a conjugate model; resume reproduces an unbroken run."""

import logging
import math

import pytest
import torch
from torch.distributions import HalfNormal, Independent, Normal, Uniform, constraints

import faults
from faults import BAD_X, Counted, FaultyEncoder, bounded_noise, g0, with_encoder
from smcwake import Model, run_smc
from smcwake.diagnostics import forward_kl_gaussian
from smcwake.encoders import GaussianEncoder
from smcwake.train import SMCOptions, TrainConfig, fit

PRIOR_SD, NOISE_SD, D = 2.0, 0.5, 2


def conjugate():
    prior = Independent(Normal(torch.zeros(D), PRIOR_SD * torch.ones(D)), 1)
    model = Model(
        prior,
        lambda z, x: Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1),
        simulate=lambda z: z + NOISE_SD * torch.randn_like(z),
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, D, generator=g) * math.sqrt(PRIOR_SD**2 + NOISE_SD**2)
    return model, x


def forward_kl(encoder, x):
    post_var = 1 / (1 / PRIOR_SD**2 + 1 / NOISE_SD**2)
    mean, cov = encoder.gaussian_params(x)
    post_cov = post_var * torch.eye(D).expand(len(x), D, D)
    return forward_kl_gaussian(post_var * x / NOISE_SD**2, post_cov, mean.detach(), cov.detach())


@pytest.mark.parametrize("kernel", ["rwmh", "encoder+rwmh"])
def test_short_fit_reaches_the_exact_posterior(kernel):
    model, x = conjugate()
    out = fit(
        model,
        x,
        encoder="gaussian",
        smc=SMCOptions(kernel=kernel),
        steps=300,
        num_particles=200,
        batch_size=20,
        lr=3e-3,
        progress=False,
    )
    kl = forward_kl(out.encoder, x)
    assert float(kl.mean()) < 0.05, float(kl.mean())
    h = out.history
    assert h["step"][-1] == 300
    assert h["likelihood_evals"][-1] > 0
    assert h["runs_per_obs"][-1] > 1  # refreshes added runs


def small(**kw):
    base = dict(
        encoder="gaussian",
        method="smc-wake-c",
        steps=30,
        num_particles=50,
        batch_size=10,
        refresh_every=5,
        checkpoint_every=10,
        progress=False,
    )
    return {**base, **kw}


def test_resume_equals_an_uninterrupted_run(tmp_path):
    # resuming with more steps continues an unbroken run only under a schedule that does not
    # depend on ``steps`` (a cosine one is stretched: see the callback-stop test for that case)
    model, x = conjugate()
    constant = {"lr_schedule": "constant"}
    whole = fit(model, x, run_dir=tmp_path / "whole", **small(**constant))
    fit(model, x, run_dir=tmp_path / "split", **small(steps=13, **constant))
    resumed = fit(model, x, run_dir=tmp_path / "split", resume=True, **small(**constant))
    for a, b in zip(
        whole.encoder.state_dict().values(), resumed.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert whole.history["loss"] == resumed.history["loss"]
    assert torch.equal(whole.bank.z, resumed.bank.z)


def test_callback_stop_writes_checkpoint_and_resume_continues(tmp_path):
    model, x = conjugate()
    whole = fit(model, x, **small(method="msc"))
    stopped = fit(
        model,
        x,
        run_dir=tmp_path,
        callbacks=[lambda step, enc, row: step >= 20],
        **small(method="msc"),
    )
    assert stopped.history["step"][-1] == 20
    resumed = fit(model, x, run_dir=tmp_path, resume=True, **small(method="msc"))
    assert resumed.history["loss"] == whole.history["loss"]


def test_resume_refuses_other_settings_or_data(tmp_path):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    with pytest.raises(ValueError, match="other settings .*lr"):
        fit(model, x, run_dir=tmp_path, resume=True, **small(lr=0.5))
    with pytest.raises(ValueError, match="different observations"):
        fit(model, x + 1, run_dir=tmp_path, resume=True, **small())
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        fit(model, x, run_dir=tmp_path, resume=True, **small())


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown 'bogus'"):
        TrainConfig(method="bogus")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown name 'bogus'"):
        SMCOptions(kernel="bogus")
    with pytest.raises(ValueError, match="num_steps"):
        SMCOptions(kernel="encoder+rwmh", num_mcmc_steps=1)
    model, x = conjugate()
    from smcwake.encoders import GaussianEncoder

    with pytest.raises(ValueError, match="encoder: built for z_dim=3"):
        fit(model, x, encoder=GaussianEncoder(D, 3), steps=1, progress=False)


def test_max_evals_budget_stops_training():
    model, x = conjugate()
    out = fit(model, x, **small(method="wake", num_proposals=10, max_evals=1000))
    assert out.history["likelihood_evals"][-1] >= 1000
    assert out.history["step"][-1] == 1000 // (10 * 10)


def test_learned_decoder_improves_its_bound_and_stale_runs_are_dropped():
    # x | z ~ N(w z, 0.5^2) with w learned from w = 0.2 towards the truth w = 1.5
    decoder = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(decoder.weight, 0.2)
    prior = Independent(Normal(torch.zeros(1), torch.ones(1)), 1)

    def loglik(z, x):
        return Normal(decoder(z), 0.5).log_prob(x[:, None, :]).sum(-1)

    g = torch.Generator().manual_seed(1)
    x = 1.5 * torch.randn(200, 1, generator=g) + 0.5 * torch.randn(200, 1, generator=g)
    out = fit(
        Model(prior, loglik),
        x,
        decoder=decoder,
        **small(
            steps=300,
            batch_size=50,
            decoder_lr=2e-2,
            lr=1e-2,
            stale_after=20,
            refresh_every=10,
            refresh_size=200,
            method="smc-wake-a",
        ),
    )
    # maximum likelihood: w^2 + 0.25 = var(x)
    w_mle = math.sqrt(max(float(x.var()) - 0.25, 0.0))
    assert abs(abs(float(decoder.weight.detach())) - w_mle) < 0.15
    kept = torch.isfinite(out.bank.log_z_runs)
    assert int(out.bank.created[kept].min()) >= 300 - 20 - 10  # only recent runs are kept


def test_elbo_with_a_full_rank_gaussian_in_50_dimensions_does_not_diverge():
    # log q of the draws used to come from a float32 solve with the Cholesky factor; once the
    # factor grew ill-conditioned the optimizer climbed its rounding error and every gradient
    # turned non-finite by step ~60. From eps directly the bound keeps improving.
    from smcwake.tasks import get

    task = get("linear-gaussian")
    _, x = task.observations(50, seed=0)
    out = fit(
        task.model,
        x.float(),
        encoder="gaussian",
        method="elbo",
        steps=150,
        lr=3e-3,
        batch_size=32,
        progress=False,
        log_every=1,
    )
    losses = out.history["loss"]
    assert out.history["skipped_steps"][-1] == 0
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])  # the bound improves, not explodes


# ---------------------------------------------------------------------------- support transform
def box_model():
    """z ~ U([-1, 1] x [0, 3]), x | z ~ N(z, 0.5^2): posteriors that the box truncates."""

    prior = Independent(Uniform(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 3.0])), 1)
    model = Model(prior, lambda z, x: Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1))
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([-1.0, 0.0]) + torch.tensor([2.0, 3.0]) * torch.rand(20, 2, generator=g)
    return model, x + NOISE_SD * torch.randn(20, 2, generator=g)


def test_fit_keeps_the_encoder_on_the_prior_support_by_default():
    model, x = box_model()
    settings = small(encoder="flow", steps=5, encoder_options={"hidden": (8,)})
    out = fit(model, x, **settings)
    assert str(out.encoder.support) == str(model.prior.support)
    z = out.encoder.sample(x, 500, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model.log_prior(z)).all()
    # premise: without it, the same untrained flow puts draws outside the box
    plain = fit(model, x, support_transform=False, **settings).encoder
    assert plain.support is None
    z = plain.sample(x, 500, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(model.log_prior(z)).all()


def test_a_support_without_a_bijection_falls_back_to_r_d_with_a_warning(caplog):
    from torch.distributions import constraints

    class Odd(constraints.Constraint):  # a support biject_to knows nothing about
        event_dim = 1

        def check(self, value):
            return (value > -10).all(-1)

    class OddNormal(Independent):
        @property
        def support(self):
            return Odd()

    model = Model(
        OddNormal(Normal(torch.zeros(D), PRIOR_SD), 1),
        lambda z, x: Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1),
    )
    _, x = conjugate()
    with caplog.at_level("WARNING", logger="smcwake.train"):
        out = fit(model, x, **small(steps=2))
    assert out.encoder.support is None
    assert "all of R^d" in caplog.text


# ---------------------------------------------------------------------------- learning rate
def test_learning_rate_schedules():
    from smcwake.train import learning_rate

    def rates(**kw):
        config = TrainConfig(lr=1.0, steps=101, **kw)
        return [learning_rate(config, s) for s in range(101)]

    assert rates() == rates(lr_schedule="cosine")  # the default, chosen by measurement
    assert rates(lr_schedule="constant") == [1.0] * 101
    warm = rates(lr_schedule="constant", warmup_steps=10)
    assert warm[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert warm[10:] == [1.0] * 91
    cosine = rates(lr_schedule="cosine")
    assert cosine[0] == 1.0
    assert cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert cosine[50] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(cosine, cosine[1:], strict=False))
    step = rates(lr_schedule="step")
    assert [step[s] for s in (49, 50, 74, 75)] == [1.0, 0.1, 0.1, 0.01]
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)


def test_fit_applies_the_schedule_to_the_optimizer():
    # Adam moves every parameter by about lr per step whatever the gradient's scale, so with a
    # warm-up of 10^6 steps (lr t / 10^6 at step t) 20 steps move a parameter by about
    # sum_t 1e-2 t / 10^6 = 2.1e-6 at most, and by orders of magnitude more without it.
    model, x = conjugate()

    def moved(**kw):
        torch.manual_seed(0)
        start = fit(model, x, **small(steps=0, lr=1e-2)).encoder.state_dict()
        end = fit(model, x, **small(steps=20, lr=1e-2, **kw)).encoder.state_dict()
        return max(float((end[k] - start[k]).abs().max()) for k in start)

    assert moved(warmup_steps=10**6) < 3e-6
    assert moved() > 1e-2


# ---------------------------------------------------------------------------- convergence signal
class ScaledPosterior(torch.nn.Module):
    """q(z | x) = the exact posterior of conjugate() with its sd multiplied by ``factor``."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def log_prob(self, z, x):
        post_var = 1 / (1 / PRIOR_SD**2 + 1 / NOISE_SD**2)
        mean = post_var * x / NOISE_SD**2
        return Normal(mean[:, None, :], self.factor * post_var**0.5).log_prob(z).sum(-1)


def exact_bank(model, x, num_particles, seed=0):
    """A bank holding one run per observation of exact posterior draws with the exact log p(x)."""
    from smcwake.bank import ParticleBank

    post_var = 1 / (1 / PRIOR_SD**2 + 1 / NOISE_SD**2)
    g = torch.Generator().manual_seed(seed)
    z = post_var * x[:, None, :] / NOISE_SD**2 + post_var**0.5 * torch.randn(
        len(x), num_particles, D, generator=g
    )
    log_z = Normal(0.0, (PRIOR_SD**2 + NOISE_SD**2) ** 0.5).log_prob(x.double()).sum(-1)
    bank = ParticleBank(len(x), num_particles, D, estimator="c")
    uniform = torch.full((len(x), num_particles), -math.log(num_particles))
    bank.add(torch.arange(len(x)), z, uniform, log_z)
    return bank


@pytest.mark.parametrize("factor", [1.0, 2.0, 0.5])
def test_bank_monitor_matches_the_closed_form(factor):
    # For q = N(m, (f s)^2) per coordinate against p = N(m, s^2), d = 2:
    #   KL(p || q) = d (log f + 1 / (2 f^2) - 1/2),
    #   ESS = 1 / E_p[p / q] with E_p[p / q] = (f / sqrt(2 - 1 / f^2))^d (infinite for f^2 <= 1/2).
    # The bank holds exact draws and log p(x), so only Monte Carlo error remains: 40 x 2,000
    # draws put the KL estimate's standard error below 0.005 (measured from the draws' spread);
    # 5 of them bound it. The ESS ratio is averaged per observation from 2,000 draws each: for
    # f = 2, p / q is bounded, and its relative error per observation is below 1.5 %.
    from smcwake.train import bank_monitor

    model, x = conjugate()
    bank = exact_bank(model, x, 2000)
    kl, ess, evals = bank_monitor(
        model, ScaledPosterior(factor), x, bank, torch.arange(len(x)), num_particles=2000
    )
    assert evals == len(x) * 2000
    exact_kl = D * (math.log(factor) + 1 / (2 * factor**2) - 0.5)
    assert abs(kl - exact_kl) < 0.025, (kl, exact_kl)
    if factor == 1.0:
        assert ess == pytest.approx(1.0, abs=1e-6)
    elif factor == 2.0:
        assert ess == pytest.approx((factor / math.sqrt(2 - 1 / factor**2)) ** -D, rel=0.05)
    else:  # q too narrow: p / q has infinite mean, the estimate collapses
        assert ess < 0.2


def test_encoder_gaps_find_the_observation_q_gets_wrong():
    # q is the exact posterior for every observation but one, where its sd is 3 times too
    # large: there KL(p || q) = d (log 3 + 1 / 18 - 1 / 2) = 1.308 nats (d = 2), elsewhere 0
    # (the bank holds exact draws and the exact log p(x), so every l_s is 0 to rounding). From
    # 2,000 draws the estimate's standard error is sqrt(d (8 / 9)^2 / 2 / 2000) = 0.020; 5 of
    # them bound it. Only that observation is flagged.
    from smcwake.loop import encoder_gaps, flag_gaps

    model, x = conjugate()
    bank = exact_bank(model, x, 2000)
    factor = torch.ones(len(x), 1, 1)
    factor[5] = 3.0
    gaps = encoder_gaps(model, ScaledPosterior(factor), x, bank, num_particles=2000)
    exact = D * (math.log(3.0) + 1 / 18 - 0.5)
    assert abs(float(gaps[5]) - exact) < 0.1, (float(gaps[5]), exact)
    others = torch.cat([gaps[:5], gaps[6:]])
    assert others.abs().max() < 1e-4
    assert torch.nonzero(flag_gaps(gaps)).flatten().tolist() == [5]


def test_flag_gaps_reads_the_level_from_the_other_observations():
    from smcwake.loop import flag_gaps, gap_level

    gaps = torch.tensor([0.1] * 10 + [1.5, math.nan], dtype=torch.float64)
    assert gap_level(gaps) == 1.0  # 10 x the median 0.1 is not above the 1-nat floor
    assert torch.nonzero(flag_gaps(gaps)).flatten().tolist() == [10]  # NaN: not measured
    # many dimensions: every observation's KL is larger, the level follows the median
    gaps = torch.tensor([2.0] * 10 + [15.0], dtype=torch.float64)
    assert gap_level(gaps) == 20.0
    assert not flag_gaps(gaps).any()
    assert not flag_gaps(torch.full((3,), math.nan, dtype=torch.float64)).any()


def test_fit_warns_about_an_observation_its_encoder_gets_wrong(caplog):
    # A half-normal scale with 10 N(0, scale^2) draws per observation: one observation's
    # scale is 0.002, 250 times below the smallest other (0.5): its standardized x is about 0,
    # which the network does not tell from a scale of 0.5 in 400 steps. Premise: the
    # encoder's posterior mean there is more than 10 posterior sd from its own SMC particles',
    # while the others are close; fit says so and names it.
    g = torch.Generator().manual_seed(0)
    scale = 0.5 + 2 * torch.rand(40, 1, generator=g)
    scale[7] = 0.002
    x = scale * torch.randn(40, 10, generator=g)
    prior = Independent(HalfNormal(torch.tensor([2.0])), 1)
    model = Model(prior, lambda z, x: Normal(0.0, z).log_prob(x[..., None, :]).sum(-1))
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        out = fit(model, x, steps=400, num_particles=200, progress=False, seed=0)
    assert "for 1 of 40 observations" in caplog.text
    assert "first: [7]" in caplog.text
    gaps = out.encoder_gaps
    assert gaps.shape == (40,)
    assert float(gaps[7]) > 5
    assert float(torch.cat([gaps[:7], gaps[8:]]).max()) < 0.5
    smc = run_smc(model, x[[7, 8]], 1000, seed=0)
    w = smc.log_weights.double().exp()
    mean = (w * smc.particles[..., 0].double()).sum(-1)
    sd = (w * (smc.particles[..., 0].double() - mean[:, None]) ** 2).sum(-1).sqrt()
    q_mean = out.posterior.sample(x[[7, 8]], 2000, generator=g)[..., 0].double().mean(-1)
    off = ((q_mean - mean) / sd).abs()
    assert off[0] > 10, off
    assert off[1] < 1, off


def test_fit_history_carries_the_convergence_signal():
    # The signal of a trained Gaussian encoder on the conjugate model against the closed-form
    # forward KL: the bank's posteriors come from SMC (K = 200) and log Zbar from the runs, so
    # the estimate is off by minus the mean error of log Zbar (-0.012 here: +0.012) plus Monte
    # Carlo error (40 x 256 draws, about 0.003); it was 0.011 above the exact value.
    model, x = conjugate()
    out = fit(
        model,
        x,
        encoder="gaussian",
        steps=300,
        num_particles=200,
        batch_size=20,
        lr=3e-3,
        monitor_every=100,
        monitor_size=40,
        progress=False,
    )
    h = out.history
    monitored = [s for s, v in zip(h["step"], h["bank_forward_kl"], strict=True) if v is not None]
    assert monitored == [100, 200, 300]
    # an estimate of 1 / E_p[p / q]: near 1 for this well-fitted q, and above 1 by up to the
    # error of log Zbar plus Monte Carlo error (about 0.015 together here)
    assert all(0.9 < v < 1.05 for v in h["bank_ess"] if v is not None)
    exact = float(forward_kl(out.encoder, x).mean())
    assert abs(h["bank_forward_kl"][-1] - exact) < 0.05, (h["bank_forward_kl"][-1], exact)
    off = fit(model, x, **small(monitor_every=None))
    assert all(v is None for v in off.history["bank_forward_kl"])


def test_a_new_method_is_an_objective_and_a_registration(monkeypatch):
    # fit reads what a method needs from its declaration: a chain state per observation, a
    # particle bank refreshed by SMC, simulations to count; no name is special-cased
    from smcwake import objectives

    monkeypatch.setattr(objectives, "_METHODS", dict(objectives._METHODS))  # undone after
    seen = []

    def chain_score(encoder, batch, ctx):
        seen.append((ctx.chains is not None, ctx.bank is not None))
        z = ctx.chains[batch.idx][:, None, :]  # prior draws: a sleep-like score at the chains
        return -encoder.log_prob(z, batch.x).mean(), 0

    objectives.register_method("chain-score", chain_score, chains=True, simulates=True)
    objectives.register_method("banked-score", chain_score, estimator="c", chains=True)
    model, x = conjugate()
    settings = dict(encoder="gaussian", steps=3, batch_size=5, num_proposals=7, progress=False)
    out = fit(model, x[:10], method="chain-score", log_every=1, **settings)
    assert seen == [(True, False)] * 3
    assert out.bank is None
    assert out.history["simulations"] == [5 * 7, 2 * 5 * 7, 3 * 5 * 7]
    assert out.history["likelihood_evals"] == [0, 0, 0]  # no SMC without a declared bank
    seen.clear()
    out = fit(model, x[:10], method="banked-score", num_particles=20, **settings)
    assert seen == [(True, True)] * 3
    assert bool(out.bank.has_runs.all())
    assert out.history["simulations"][-1] == 0
    with pytest.raises(ValueError, match="already registered"):
        objectives.register_method("chain-score", chain_score)
    with pytest.raises(ValueError, match="estimator: expected None or one of"):
        objectives.register_method("other", chain_score, estimator="z")


@pytest.mark.parametrize(("corrupt", "error", "message"), BAD_X)
def test_fit_rejects_bad_observations(corrupt, error, message):
    model, x = faults.conjugate()
    with pytest.raises(error, match=message):
        fit(model, corrupt(x), **faults.small())


def test_encoder_whose_dimensions_do_not_match_is_refused():
    model, x = faults.conjugate()
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
    model, x = faults.conjugate()
    with pytest.raises(TypeError, match="encoder"):
        fit(model, x, encoder=torch.nn.Linear(D, D), **with_encoder())


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


def test_fit_names_an_unknown_option_and_the_closest_ones():
    model, x = faults.conjugate(loglik=bounded_noise)
    with pytest.raises(TypeError, match=r"'stepz' \(did you mean steps\?\), 'foo'"):
        fit(model, x, stepz=10, foo=1)
    # replace checks the new values as the constructor does
    with pytest.raises(ValueError, match="steps: expected an integer >= 0"):
        TrainConfig().replace(steps=-1)
    assert TrainConfig().replace(steps=7).steps == 7


def test_fit_excludes_zero_likelihood_observations_and_trains_the_rest(caplog):
    model, x = faults.conjugate(loglik=bounded_noise)
    x[[2, 9]] = 100.0
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        out = fit(model, x, **faults.small(steps=30))
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
    model, x = faults.conjugate(loglik=bounded_noise)
    with pytest.raises(RuntimeError, match="no observation has a usable SMC run"):
        fit(model, x + 100.0, **faults.small())


def test_non_finite_losses_are_skipped_counted_and_logged(caplog):
    # smc-wake-c calls log_prob once per step, so call i is step i
    model, x = faults.conjugate()
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


def sharpness_model():
    """d = 1, x = (value, noise sd): sd 1e-3 needs ~8 tempering stages, sd 0.5 needs 2."""
    prior = Independent(
        Normal(
            torch.zeros(1, dtype=torch.float64),
            PRIOR_SD * torch.ones(1, dtype=torch.float64),
        ),
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

    settings = faults.small(steps=10, smc=SMCOptions(max_stages=4), batch_size=4, refresh_size=4)
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        strict = fit(model, x, **settings)
    assert (strict.bank.num_runs[sharp] == 0).all()
    assert (strict.bank.num_runs[~sharp] >= 1).all()
    assert not strict.bank.excluded.any()  # not excluded: a later refresh may converge
    assert "dropped 6 SMC runs that did not reach tau=1" in caplog.text
    loose = fit(model, x, use_unconverged=True, **settings)
    assert (loose.bank.num_runs >= 1).all()


def test_training_on_a_bound_that_is_minus_inf_everywhere_stops_with_floating_point_error():
    model, x = faults.conjugate(4, loglik=lambda z, x: torch.full(z.shape[:2], -math.inf).double())
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite losses at step 3"):
        fit(model, x, **faults.small(method="elbo", num_proposals=4, max_bad_steps=3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fit_refuses_half_precision_observations_before_any_smc(dtype):
    counted = Counted()
    model, x = faults.conjugate(loglik=counted)
    with pytest.raises(TypeError, match=rf"torch.float32 or torch.float64; received {dtype}"):
        fit(model, x.to(dtype), **faults.small())
    assert counted.calls == 0


def test_a_built_encoder_is_standardized_by_the_first_smc_pass():
    """Observations far in the prior's tails: the z buffers follow the pooled posteriors.

    Exact posteriors N(m_i, v); the pooled moments are mean_i m_i and sqrt(var_i m_i + v). The
    buffers come from about 20,000 pooled draws over n SMC runs of K particles (ESS >= K / 2
    per run, say), so a moment's standard error is below sd * sqrt(1 / (n K / 2)); the tolerance
    is five of those. Prior draws (what the encoder held before) would give loc 0, scale ~2.
    """
    model, _ = conjugate()
    g = torch.Generator().manual_seed(3)
    n, K = 40, 500
    z_true = 6.0 + 0.5 * torch.randn(n, D, generator=g)  # 3 prior sd out
    x = z_true + NOISE_SD * torch.randn(n, D, generator=g)
    out = fit(model, x, encoder="gaussian", steps=0, num_particles=K, progress=False)
    v = 1 / (1 / PRIOR_SD**2 + 1 / NOISE_SD**2)
    means = v * x / NOISE_SD**2
    loc, sd = means.mean(0), (means.var(0, unbiased=False) + v).sqrt()
    tol = 5 * sd * math.sqrt(1 / (n * K / 2))
    torch.testing.assert_close(out.encoder.z_loc, loc, atol=float(tol.max()), rtol=0)
    torch.testing.assert_close(out.encoder.z_scale, sd, atol=float(tol.max()), rtol=0)
    # an encoder the user gives is used as it is
    mine = GaussianEncoder(D, D)
    out = fit(model, x, encoder=mine, steps=0, num_particles=K, progress=False)
    assert torch.equal(out.encoder.z_loc, torch.zeros(D))
    assert torch.equal(out.encoder.z_scale, torch.ones(D))


def test_standardizing_from_particles_it_cannot_use_keeps_the_prior_moments(caplog):
    from smcwake.bank import ParticleBank
    from smcwake.encoders import build_encoder
    from smcwake.loop import standardize_from_bank

    box = constraints.independent(constraints.interval(-1.0, 1.0), 1)
    encoder = build_encoder("gaussian", 2, D, support=box)
    before = encoder.z_loc.clone(), encoder.z_scale.clone()
    bank = ParticleBank(3, 5, D)
    assert not standardize_from_bank(encoder, bank)  # no runs yet
    outside = torch.full((3, 5, D), 2.0)  # not in the box the encoder maps onto
    bank.add(torch.arange(3), outside, torch.zeros(3, 5), torch.zeros(3))
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        assert not standardize_from_bank(encoder, bank, generator=g0())
    assert "keeps the prior's standardization" in caplog.text
    assert torch.equal(encoder.z_loc, before[0])
    assert torch.equal(encoder.z_scale, before[1])
    bank.reset()
    inside = torch.linspace(-0.5, 0.5, 5)[None, :, None].expand(3, 5, D)
    bank.add(torch.arange(3), inside, torch.zeros(3, 5), torch.zeros(3))
    assert standardize_from_bank(encoder, bank, generator=g0())
    assert not torch.equal(encoder.z_scale, before[1])
