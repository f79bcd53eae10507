"""fit(): reaches the exact posterior on a conjugate model; resume reproduces an unbroken run."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from smcwake import Model
from smcwake.diagnostics import forward_kl_gaussian
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
    model, x = conjugate()
    whole = fit(model, x, run_dir=tmp_path / "whole", **small())
    fit(model, x, run_dir=tmp_path / "split", **small(steps=13))
    resumed = fit(model, x, run_dir=tmp_path / "split", resume=True, **small())
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
