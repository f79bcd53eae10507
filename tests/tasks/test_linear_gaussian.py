"""Linear Gaussian and many-samplers tasks: exact posterior and evidence against direct
computations (numpy, scipy), and Bayes' rule tying them to the model's likelihood."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from smcwake.tasks import get
from smcwake.tasks.linear_gaussian import design_matrix


def test_design_matrix_has_the_identity_block():
    g = torch.randn(7, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = design_matrix(3, 7, scale=2.0, identity_weight=0.01, matrix_seed=5)
    expected = g.clone()
    expected[:3] += 0.01 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(a, 2.0 * expected, rtol=0, atol=0)


def test_default_sizes_follow_spec():
    task = get("linear-gaussian")
    assert task.model.dim == 50
    assert task.defaults["design_matrix"].shape == (100, 50)
    assert task.defaults["num_observations"] == 50
    assert task.defaults["encoder"] == "gaussian"  # full-rank in smcwake.encoders
    z, x = task.observations(2, 0)
    assert z.shape == (2, 50)
    assert x.shape == (2, 100)
    assert x.dtype == torch.float32


@pytest.mark.parametrize(("noise", "scale"), [(1.0, 1.0), (0.5, 2.0)])
def test_posterior_moments_match_numpy_solve(noise, scale):
    task = get("linear-gaussian", noise=noise, scale=scale, dtype=torch.float64)
    a = task.defaults["design_matrix"].numpy()
    _, x = task.observations(4, 1)
    precision = np.eye(50) + a.T @ a / noise**2
    expected_mean = np.linalg.solve(precision, a.T @ x.numpy().T / noise**2).T
    mean, cov = task.posterior_moments(x)
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(cov[2].numpy(), np.linalg.inv(precision), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("noise", "scale"), [(1.0, 1.0), (0.5, 2.0)])
def test_evidence_matches_scipy(noise, scale):
    task = get("linear-gaussian", noise=noise, scale=scale, dtype=torch.float64)
    a = task.defaults["design_matrix"].numpy()
    _, x = task.observations(4, 2)
    marginal = stats.multivariate_normal(np.zeros(100), noise**2 * np.eye(100) + a @ a.T)
    np.testing.assert_allclose(
        task.log_evidence(x).numpy(), marginal.logpdf(x.numpy()), rtol=1e-10
    )


def test_bayes_rule_ties_likelihood_to_posterior_and_evidence():
    """log p(z) + log p(x | z) - log p(z | x) = log p(x) at any z (an exact identity)."""
    task = get("linear-gaussian", d=6, p=9, noise=0.7, scale=1.5, dtype=torch.float64)
    _, x = task.observations(3, 0)
    mean, cov = task.posterior_moments(x)
    z = task.model.sample_prior((3, 4), generator=torch.Generator().manual_seed(0))
    log_post = torch.distributions.MultivariateNormal(mean[:, None], cov[:, None]).log_prob(z)
    log_joint = task.model.log_prior(z) + task.model.log_likelihood(z, x)
    torch.testing.assert_close(log_joint - log_post, task.log_evidence(x)[:, None].expand(3, 4))


def test_reference_samples_have_the_exact_moments():
    task = get("linear-gaussian", d=4, p=6, scale=3.0, dtype=torch.float64)
    _, x = task.observations(2, 0)
    n = 20_000
    samples = task.reference_posterior(x, n, 0)
    mean, cov = task.posterior_moments(x)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()  # [B, d]
    # Mean: standard error sd / sqrt(n); covariance entries: se <= sqrt(2 / n) sd_i sd_j.
    assert ((samples.mean(1) - mean).abs() < 4 * sd / math.sqrt(n)).all()
    centred = samples - samples.mean(1, keepdim=True)
    emp_cov = centred.mT @ centred / (n - 1)
    bound = 4 * math.sqrt(2 / n) * sd[:, :, None] * sd[:, None, :]
    assert ((emp_cov - cov).abs() < bound).all()


def test_importance_sampling_from_the_prior_agrees_with_the_exact_mean():
    """Self-normalized importance sampling with the model's own prior and likelihood (d = 2)."""
    task = get("linear-gaussian", d=2, p=3, dtype=torch.float64)
    _, x = task.observations(1, 3)
    z = task.model.sample_prior((1, 200_000), generator=torch.Generator().manual_seed(1))
    w = torch.softmax(task.model.log_likelihood(z, x), -1)  # [1, K]
    is_mean = (w[..., None] * z).sum(1)
    mean, cov = task.posterior_moments(x)
    ess = float(1 / w.square().sum())
    assert ess > 1_000  # premise: enough effective samples for the tolerance below
    se = cov.diagonal(dim1=-2, dim2=-1).sqrt() / math.sqrt(ess)
    assert ((is_mean - mean).abs() < 5 * se).all()


def test_float32_likelihood_agrees_with_float64():
    t32 = get("linear-gaussian", dtype=torch.float32)
    t64 = get("linear-gaussian", dtype=torch.float64)
    z, x = t64.observations(3, 0)
    ll64 = t64.model.log_likelihood(z[:, None], x)
    ll32 = t32.model.log_likelihood(z[:, None].float(), x.float())
    torch.testing.assert_close(ll32.double(), ll64, rtol=1e-5, atol=1e-3)


def test_bad_noise_is_rejected():
    with pytest.raises(ValueError, match="noise: expected a standard deviation > 0"):
        get("linear-gaussian", noise=0.0)


def test_many_samplers_reuses_the_model_with_a_scaled_matrix():
    many = get("many-samplers", dtype=torch.float64)
    base = get("linear-gaussian", dtype=torch.float64)
    torch.testing.assert_close(
        many.defaults["design_matrix"], 10.0 * base.defaults["design_matrix"], rtol=1e-15, atol=0
    )
    assert many.name == many.model.name == "many-samplers"
    assert many.defaults["num_observations"] == 10
    assert [(s["num_runs"], s["num_particles"]) for s in many.defaults["settings"]] == [
        (1, 10_000),
        (100, 100),
    ]
    # Equal particle budget per observation in both settings.
    assert len({s["num_runs"] * s["num_particles"] for s in many.defaults["settings"]}) == 1
    # A 10x larger A makes the posterior ~100x tighter.
    _, x = many.observations(2, 0)
    ratio = base.posterior_moments(x)[1].diagonal(dim1=-2, dim2=-1).mean() / (
        many.posterior_moments(x)[1].diagonal(dim1=-2, dim2=-1).mean()
    )
    assert 50 < float(ratio) < 200
