"""bench.evaluate: metrics against known answers (exact posteriors, closed-form evidences)."""

import dataclasses
import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

from smcwake import Model
from smcwake.bench.evaluate import (
    EvalOptions,
    Reference,
    curve_metric,
    evaluate,
    grid_log_evidence,
    importance_log_evidence,
    mean_finite,
)
from smcwake.tasks import Task, get

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors; seeded runs reproduce

TINY_EVAL = EvalOptions(
    num_samples=200, c2st_observations=0, c2st_samples=100, mmd_samples=50, sbc_samples=49
)


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


def test_grid_log_evidence_refuses_other_tasks():
    task = get("toy-collapse")
    with pytest.raises(ValueError, match="2-D task with a box-uniform prior"):
        grid_log_evidence(task, torch.zeros(1, 1))


def test_importance_log_evidence_with_the_posterior_as_proposal_is_exact():
    # every weight p(z, x) / p(z | x) equals p(x), whatever the draws
    task = get("toy-collapse", dtype=torch.float64)
    _, x = task.observations(5, 0)
    q = ExactPosterior(task)
    z = q.sample(x, 7, generator=torch.Generator().manual_seed(0))
    got = importance_log_evidence(task.model, z, q.log_prob(z, x), x)
    torch.testing.assert_close(got, task.log_evidence(x), atol=1e-10, rtol=0)


def test_importance_log_evidence_is_unbiased_for_the_evidence():
    # proposal N(0, 3^2) for the toy posterior: mean over 4000 draws of the weights estimates
    # p(x); its relative standard error is sd(w) / (mean(w) sqrt(S)), checked within 4 s.e.
    task = get("toy-collapse", dtype=torch.float64)
    x = torch.tensor([[2.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(1, 4000, 1, generator=g, dtype=torch.float64)
    log_q = Normal(0.0, 3.0).log_prob(z).sum(-1)
    log_w = task.model.log_joint(z, x).double() - log_q
    w = (log_w - task.log_evidence(x)[:, None]).exp()  # weights / p(x): mean 1
    se = float(w.std() / math.sqrt(w.numel()))
    got = importance_log_evidence(task.model, z, log_q, x)
    assert abs(float(got - task.log_evidence(x))) < 4 * se


def test_mean_finite_skips_infinities_and_nans():
    assert mean_finite(torch.tensor([1.0, math.inf, math.nan, 3.0])) == 2.0
    assert math.isinf(mean_finite(torch.tensor([math.inf, math.inf])))


def test_the_tracked_forward_kl_is_zero_at_the_exact_posterior():
    task = get("linear-gaussian", d=2, p=3, dtype=torch.float64)
    _, x = task.observations(6, 0)
    options = EvalOptions(c2st_observations=0, curve_observations=4)
    name, metric = curve_metric(task, Reference(task, x, options), x, options)
    assert name == "forward_kl"
    assert metric(ExactPosterior(task)) == pytest.approx(0.0, abs=1e-10)
    assert metric(ExactPosterior(task, closed_form=False)) == pytest.approx(0.0, abs=1e-10)
