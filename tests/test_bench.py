"""bench: metrics against known answers, unavailable methods kept, budgets matched."""

import dataclasses
import json
import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

from smcwake import Model
from smcwake.bench import (
    EvalOptions,
    evaluate,
    grid_log_evidence,
    run_bench,
    unavailable_reason,
)
from smcwake.tasks import Task, get

TINY_EVAL = EvalOptions(
    num_samples=200, c2st_observations=0, c2st_samples=100, mmd_samples=50, sbc_samples=49
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is fastest and does not fight other processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ExactPosterior:
    """An 'encoder' that is the exact Gaussian posterior of a task (optionally hiding its form)."""

    def __init__(self, task: Task, closed_form: bool = True) -> None:
        self.task = task
        if closed_form:
            self.gaussian_params = lambda x: task.posterior_moments(x)

    def _dist(self, x):
        mean, cov = self.task.posterior_moments(x)
        return MultivariateNormal(mean.double(), covariance_matrix=cov.double())

    def sample(self, x, n, *, generator=None):
        d = self._dist(x)
        eps = torch.randn(
            x.shape[0], n, d.event_shape[0], generator=generator, dtype=torch.float64
        )
        return (d.loc[:, None, :] + eps @ d.scale_tril.mT).to(x.dtype)

    def log_prob(self, z, x):
        return self._dist(x).log_prob(z.double().movedim(1, 0)).movedim(0, 1).to(x.dtype)


@pytest.mark.parametrize("closed_form", [True, False])
def test_the_exact_posterior_scores_perfectly(closed_form):
    task = get("linear-gaussian", d=2, p=3, dtype=torch.float64)
    z, x = task.observations(200, 0)
    options = dataclasses.replace(TINY_EVAL, c2st_observations=1)
    metrics, arrays = evaluate(task, ExactPosterior(task, closed_form), z, x, options=options)
    # KLs are exactly 0 in closed form and, by sampling, log p - log q = 0 at every draw
    assert metrics["forward_kl"] == pytest.approx(0.0, abs=1e-8)
    assert metrics["reverse_kl"] == pytest.approx(0.0, abs=1e-8)
    # sampled means: 200 draws, posterior sd < 1 per dimension -> L1 well below 0.3
    assert metrics["mean_l1"] < (1e-8 if closed_form else 0.3)
    # with the posterior as proposal every importance weight equals p(x): no error at all
    assert metrics["evidence_error"] == pytest.approx(0.0, abs=1e-6)
    # 200 calibrated observations: coverage within a few binomial standard errors (~0.035)
    assert metrics["coverage_error"] < 0.08
    assert metrics["sbc_p"] > 1e-3
    # C2ST of 100 exact draws against 100 reference draws: chance level, ~0.05 standard error
    assert 0.3 < metrics["c2st"] < 0.7
    assert len(arrays["coverage"]["level"]) == len(arrays["coverage"]["coverage"]) == 101


def test_a_collapsed_encoder_scores_badly():
    task = get("toy-collapse", dtype=torch.float64)
    z, x = task.observations(50, 0)

    class Collapsed(ExactPosterior):
        def __init__(self, task):
            super().__init__(task)
            self.gaussian_params = lambda x: (
                task.posterior_moments(x)[0],
                1e-4 * torch.ones(x.shape[0], 1, 1, dtype=x.dtype),
            )

        def _dist(self, x):
            mean, cov = self.gaussian_params(x)
            return MultivariateNormal(mean.double(), covariance_matrix=cov.double())

    metrics, _ = evaluate(task, Collapsed(task), z, x, options=TINY_EVAL)
    # KL(N(m, 0.99) || N(m, 1e-4)) = 0.5 (0.99 / 1e-4 - 1 - log(0.99 / 1e-4)) ~ 4944
    assert metrics["forward_kl"] == pytest.approx(
        0.5 * (0.990099 / 1e-4 - 1 - math.log(9900.99)), rel=1e-3
    )
    assert metrics["coverage_error"] > 0.3  # the truth is almost never inside


def test_grid_log_evidence_of_a_box_uniform_prior():
    prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)
    model = Model(prior, lambda z, x: Normal(z, 0.1).log_prob(x[:, None, :]).sum(-1))
    task = Task("box", model, "box", lambda n, seed: None)
    x = torch.tensor([[0.0, 0.2], [0.9, 0.0]])
    got = grid_log_evidence(task, x, grid_size=256)
    # p(x) = 1/4 * P(|N(x, 0.1^2)| inside the box): 1 for the first, Phi(1) for the second
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    expected = torch.tensor([math.log(0.25), math.log(0.25 * phi1)], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_unavailable_methods_have_reasons():
    two_moons = get("two-moons")
    assert "bounded support" in unavailable_reason(
        two_moons, "elbo", "flow", support_transform=False
    )
    assert unavailable_reason(two_moons, "elbo", "flow") is None  # q kept on the support
    assert "reparameterized" in unavailable_reason(get("toy-collapse"), "elbo", "mdn")
    assert unavailable_reason(two_moons, "sleep", "flow") is None
    with pytest.raises(ValueError, match="unknown"):
        unavailable_reason(two_moons, "nope", "flow")


def test_bench_matches_budgets_within_one_step(tmp_path):
    budget = 30_000
    results = run_bench(
        "toy-collapse",
        ["smc-wake-c", "wake", "msc", "sleep"],
        seeds=1,
        steps=1000,
        budget=budget,
        out=tmp_path,
        num_observations=8,
        overrides={"num_particles": 100, "batch_size": 8, "log_every": 1},
        eval_options=TINY_EVAL,
        progress=False,
    )
    for method in ("smc-wake-c", "wake", "msc"):
        run = results["methods"][method]["runs"][0]
        history = json.loads((tmp_path / "runs" / method / "seed0" / "history.json").read_text())
        evals = history["history"]["likelihood_evals"]
        largest_step = max(b - a for a, b in zip([0, *evals[:-1]], evals, strict=True))
        assert run["stopped_by"] == "budget", method
        assert budget <= run["likelihood_evals"] < budget + largest_step, method
    sleep = results["methods"]["sleep"]["runs"][0]
    assert budget <= sleep["simulations"] < budget + 8 * 100  # one step: 8 obs x 100 sims
    assert (tmp_path / "report.md").exists()
    assert not list(tmp_path.glob("runs/*/seed0/checkpoint.pt"))  # finished runs drop them


def test_default_budget_is_the_first_methods_and_resume_reuses_runs(tmp_path):
    kwargs = {
        "seeds": 1,
        "steps": 20,
        "out": tmp_path,
        "num_observations": 4,
        "overrides": {"num_particles": 50, "batch_size": 4},
        "eval_options": TINY_EVAL,
        "progress": False,
    }
    first = run_bench("toy-collapse", ["smc-wake-a", "wake"], **kwargs)
    used = first["methods"]["smc-wake-a"]["runs"][0]["likelihood_evals"]
    assert first["budgets"] == {0: used}
    again = run_bench("toy-collapse", ["smc-wake-a", "wake"], resume=True, **kwargs)
    assert again["methods"]["wake"]["runs"][0] == json.loads(
        json.dumps(first["methods"]["wake"]["runs"][0], default=lambda t: t.tolist())
    )


def test_digits_learns_a_decoder_and_scores_held_out_images(tmp_path):
    results = run_bench(
        "digits",
        ["smc-wake-c", "wake"],
        seeds=1,
        steps=3,
        out=tmp_path,
        num_observations=16,
        overrides={"refresh_size": 8, "num_particles": 30},
        eval_options=EvalOptions(num_samples=30, heldout_particles=30),
        progress=False,
    )
    for method in ("smc-wake-c", "wake"):
        run = results["methods"][method]["runs"][0]
        assert run["steps"] == 3
        # log p(x) of a binary 8x8 image lies in [64 log(1e-3), 0) for any sane decoder
        assert -450 < run["metrics"]["heldout_loglik"] < 0
        assert len(run["reconstructions"]) == 8
    assert (tmp_path / "reconstructions.png").exists()
