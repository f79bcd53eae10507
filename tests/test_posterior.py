"""Posterior: save/load (same and a fresh process), clear errors, refine against exact answers."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import (
    Beta,
    Gamma,
    HalfNormal,
    Independent,
    LogNormal,
    Normal,
    Uniform,
    biject_to,
    constraints,
)

import smcwake
from smcwake import Model, Posterior, build_encoder, fit, load, run_smc
from smcwake.posterior import (
    FORMAT_VERSION,
    constraint_from_description,
    describe_constraint,
    refine,
)

# ------------------------------------------------------------------ save and load

BOX = constraints.independent(constraints.interval(torch.tensor([-1.0, 0.0]), 2.0), 1)
SUPPORTS = {
    "none": None,
    "box": Independent(Uniform(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 3.0])), 1).support,
    "half-normal": Independent(HalfNormal(torch.ones(2)), 1).support,
    "gamma": Independent(Gamma(torch.ones(2), 1.0), 1).support,
    "lognormal": Independent(LogNormal(torch.zeros(2), 1.0), 1).support,
    "beta": Independent(Beta(torch.ones(2), 2.0), 1).support,
    "mixed": constraints.independent(
        constraints.cat([constraints.positive, constraints.interval(-2.0, 5.0)], -1, [1, 1]), 1
    ),
}


def trained_like(kind, support, seed=0, x_dim=3):
    """An encoder with non-trivial weights and standardization (as after training)."""
    torch.manual_seed(seed)
    encoder = build_encoder(kind, x_dim, 2, hidden=(8,), support=support)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
        encoder.x_loc.fill_(0.5)
        encoder.x_scale.fill_(2.0)
        encoder.z_loc.copy_(torch.tensor([0.2, -0.1]))
        encoder.z_scale.copy_(torch.tensor([0.7, 1.3]))
    return encoder


def inside(support, n=5):
    """n points of the support, from a seeded draw through its bijection. -> [1, n, 2]."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(1, n, 2, generator=g)
    return v if support is None else biject_to(support)(v)


@pytest.mark.parametrize("kind", ["flow", "mdn", "gaussian", "gaussian-diag"])
@pytest.mark.parametrize("support", list(SUPPORTS), ids=list(SUPPORTS))
def test_save_then_load_gives_the_same_density_and_draws(tmp_path, kind, support):
    encoder = trained_like(kind, SUPPORTS[support])
    path = Posterior(encoder, names=["a", "b"]).save(tmp_path / "sub" / "q.pt")
    loaded = load(path)
    x = torch.linspace(-1, 1, 3)[None]
    z = inside(SUPPORTS[support])
    assert torch.equal(loaded.log_prob(z, x), Posterior(encoder).log_prob(z, x))
    draws = [
        p.sample(x, 4, generator=torch.Generator().manual_seed(3))
        for p in (loaded, Posterior(encoder))
    ]
    assert torch.equal(draws[0], draws[1])
    assert loaded.names == ["a", "b"]
    assert loaded.encoder.kind == kind


def test_the_file_is_weights_only_with_a_json_description(tmp_path):
    path = Posterior(trained_like("flow", SUPPORTS["box"])).save(tmp_path / "q.pt")
    payload = torch.load(path, weights_only=True)
    description = json.loads(payload["description"])
    assert payload["format"] == "smcwake.posterior"
    assert payload["format_version"] == FORMAT_VERSION
    assert description["encoder"]["kind"] == "flow"
    assert description["encoder"]["options"] == {"transforms": 3, "hidden": [8], "bins": 8}
    assert (description["encoder"]["x_dim"], description["encoder"]["z_dim"]) == (3, 2)
    assert description["support"]["type"] == "independent"
    assert not list(tmp_path.glob("*.partial"))  # written through a temporary file


def test_load_in_a_fresh_process_without_the_model(tmp_path):
    encoder = trained_like("flow", SUPPORTS["lognormal"])
    path = Posterior(encoder).save(tmp_path / "q.pt")
    x = torch.tensor([[0.1, -0.3, 2.0]])
    z = inside(SUPPORTS["lognormal"])
    torch.save({"x": x, "z": z}, tmp_path / "inputs.pt")
    script = (
        "import sys, torch, smcwake\n"
        "d = torch.load(sys.argv[2])\n"
        "q = smcwake.load(sys.argv[1])\n"
        "torch.save(q.log_prob(d['z'], d['x']), sys.argv[3])\n"
    )
    out = tmp_path / "out.pt"
    subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "inputs.pt"), str(out)],
        check=True,
        capture_output=True,
        # the smcwake being tested, whether installed or imported from a source tree
        env={**os.environ, "PYTHONPATH": str(Path(smcwake.__file__).parents[1])},
    )
    assert torch.equal(torch.load(out), Posterior(encoder).log_prob(z, x))


def test_load_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        load(tmp_path / "missing.pt")
    torch.save({"step": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a saved smcwake posterior"):
        load(tmp_path / "checkpoint.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a saved smcwake posterior"):
        load(tmp_path / "text.pt")
    path = Posterior(trained_like("gaussian", None)).save(tmp_path / "q.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="upgrade smcwake"):
        load(tmp_path / "newer.pt")


def test_an_embedding_is_restored_into_a_module_of_the_same_architecture(tmp_path):
    torch.manual_seed(0)
    embedding = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
    encoder = build_encoder("gaussian", 3, 2, hidden=(8,), embedding=embedding)
    path = Posterior(encoder).save(tmp_path / "q.pt")
    with pytest.raises(ValueError, match="embedding"):
        load(path)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())  # other random weights
    loaded = load(path, embedding=fresh)
    x, z = torch.randn(2, 3), torch.randn(2, 5, 2)
    assert torch.equal(loaded.log_prob(z, x), Posterior(encoder).log_prob(z, x))
    with pytest.raises(ValueError, match="do not fit"):
        load(path, embedding=torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4)))


@pytest.mark.parametrize("support", [c for c in SUPPORTS.values() if c is not None])
def test_constraint_descriptions_round_trip(support):
    rebuilt = constraint_from_description(json.loads(json.dumps(describe_constraint(support))))
    v = torch.randn(7, 2, dtype=torch.float64)
    assert torch.allclose(biject_to(rebuilt)(v), biject_to(support)(v).double())


def test_a_support_that_cannot_be_described_is_refused():
    with pytest.raises(ValueError, match="cannot be described"):
        describe_constraint(constraints.simplex)


def test_fit_returns_a_posterior_that_saves(tmp_path):
    model, x = conjugate(d=2, n=12)
    result = fit(model, x, encoder="gaussian", steps=3, num_particles=32, batch_size=4)
    assert result.posterior.model is model
    loaded = load(result.save(tmp_path / "q.pt"), model=model)
    z = torch.randn(12, 4, 2)
    assert torch.equal(loaded.log_prob(z, x), result.posterior.log_prob(z, x))
    assert loaded.refine(x[:2], 64, seed=0).particles.shape == (2, 64, 2)


# ------------------------------------------------------------------ refine
PRIOR_SD, NOISE_SD = 1.0, 0.5
POST_VAR = 1 / (1 / PRIOR_SD**2 + 1 / NOISE_SD**2)


def conjugate(d=3, n=8):
    """z ~ N(0, I), x | z ~ N(z, 0.25 I): posterior N(0.8 x, 0.2 I), p(x) = N(0, 1.25 I)."""
    prior = Independent(Normal(torch.zeros(d), PRIOR_SD), 1)
    model = Model(prior, lambda z, x: Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) * math.sqrt(PRIOR_SD**2 + NOISE_SD**2)
    return model, x


def exact_log_evidence(x):
    return Normal(0.0, math.sqrt(PRIOR_SD**2 + NOISE_SD**2)).log_prob(x).double().sum(-1)


def amortized_exact_fit(d, steps=300):
    """A Gaussian encoder trained on exact (z, x) pairs: close to, not equal to, p(z | x)."""
    torch.manual_seed(0)
    encoder = build_encoder("gaussian", d, d, hidden=(32,))
    optimizer = torch.optim.Adam(encoder.parameters(), 1e-2)
    for _ in range(steps):
        xs = torch.randn(256, d) * math.sqrt(PRIOR_SD**2 + NOISE_SD**2)
        zs = POST_VAR / NOISE_SD**2 * xs + math.sqrt(POST_VAR) * torch.randn(256, d)
        loss = -encoder.log_prob(zs[:, None], xs).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return encoder


def check_against_exact(result, x, K):
    # log Zhat: each stage's ESS is about half or more of K, so var(log Zhat) <~ S / K per
    # observation (relative variance of an importance-sampling mean, 1/ESS - 1/K per stage)
    err = result.log_evidence - exact_log_evidence(x)
    sd = torch.sqrt(result.num_stages.double() / K)
    assert bool((err.abs() < 5 * sd).all()), (err, sd)
    # posterior mean within 4.5 standard errors sqrt(post var / ESS), over B x d comparisons
    w = result.log_weights.exp()
    mean = (w[..., None] * result.particles).sum(1)
    se = math.sqrt(POST_VAR) / result.ess.sqrt()[:, None]
    z_score = (mean - POST_VAR / NOISE_SD**2 * x) / se
    assert float(z_score.abs().max()) < 4.5, z_score
    assert bool(result.converged.all())


def test_refine_with_a_poor_encoder_is_exact_and_pays_in_stages():
    model, x = conjugate()
    encoder = build_encoder("gaussian", 3, 3, hidden=(8,))  # untrained: far from p(z | x)
    result = refine(model, encoder, x, 1000, seed=0)
    check_against_exact(result, x, 1000)
    assert bool((result.num_stages > 1).all())


def test_refine_with_a_good_encoder_is_exact_in_one_stage_and_cheaper_than_smc():
    model, x = conjugate()
    encoder = amortized_exact_fit(3)
    result = Posterior(encoder, model).refine(x, 1000, seed=0)
    check_against_exact(result, x, 1000)
    assert bool((result.num_stages == 1).all())
    assert bool((result.initial_ess > 0.5).all())
    assert bool((result.num_likelihood_evals == 1000).all())  # one importance-sampling step
    assert bool(result.mixed.all())
    scratch = run_smc(model, x, 1000, seed=0)
    assert bool((result.num_likelihood_evals * 3 < scratch.num_likelihood_evals).all())


def test_refine_is_reproducible_and_checks_its_input():
    model, x = conjugate()
    encoder = build_encoder("gaussian", 3, 3, hidden=(8,))
    a, b = (refine(model, encoder, x, 100, seed=4) for _ in range(2))
    assert torch.equal(a.particles, b.particles)
    assert torch.equal(a.log_evidence, b.log_evidence)
    assert a.sample(7, generator=torch.Generator().manual_seed(0)).shape == (8, 7, 3)
    with pytest.raises(ValueError, match="num_particles"):
        refine(model, encoder, x, 1)
    with pytest.raises(ValueError, match="encoder_weight"):
        refine(model, encoder, x, 10, encoder_weight=1.0)
    with pytest.raises(ValueError, match=r"x: expected .*3\]"):
        refine(model, encoder, x[:, :2], 10)
    with pytest.raises(ValueError, match="seed or generator"):
        refine(model, encoder, x, 10, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="has no model"):
        Posterior(encoder).refine(x)


def test_refine_keeps_particles_inside_a_bounded_prior():
    # box prior, likelihood centred near the edge: q (on the support) and the prior both
    # propose inside, and a zero-density proposal is never accepted
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    model = Model(prior, lambda z, x: Normal(z, 0.1).log_prob(x[:, None, :]).sum(-1))
    x = torch.tensor([[0.98, 0.5], [0.02, 0.03]])
    encoder = build_encoder("flow", 2, 2, hidden=(8,), support=prior.support)
    result = refine(model, encoder, x, 500, seed=0)
    assert bool(((result.particles > 0) & (result.particles < 1)).all())
    assert bool(result.converged.all())
    assert bool(torch.isfinite(result.log_evidence).all())


def test_public_names():
    assert smcwake.load is load
    assert smcwake.Posterior is Posterior


def test_refine_flags_an_observation_of_zero_likelihood_and_finishes_the_others(caplog):
    # the second observation is impossible under the model: every particle has zero likelihood
    def log_likelihood(z, x):
        out = Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1)
        return torch.where(x[:, None, 0] > 50, -math.inf, out)

    model = Model(Independent(Normal(torch.zeros(2), PRIOR_SD), 1), log_likelihood)
    x = torch.tensor([[0.3, 0.1], [100.0, 0.0]])
    encoder = build_encoder("gaussian", 2, 2, hidden=(8,))
    with caplog.at_level("WARNING"):
        result = refine(model, encoder, x, 500, seed=0)
    assert result.converged.tolist() == [True, False]
    assert result.zero_likelihood.tolist() == [False, True]
    assert result.log_evidence[1] == -math.inf
    assert not bool(torch.isnan(result.log_weights).any())
    assert "zero likelihood" in caplog.text
    # the other observation is unaffected: exact log p(x) within 5 of its standard errors
    err = float(result.log_evidence[0] - exact_log_evidence(x[:1])[0])
    assert abs(err) < 5 * math.sqrt(int(result.num_stages[0]) / 500)


def test_refine_flags_a_poor_encoder_in_high_dimension_instead_of_passing_it(caplog):
    # d = 40 with an untrained encoder: almost no independence proposal is accepted, the
    # particles stay duplicates and the answer is off by tens of nats, so it must be flagged
    model, x = conjugate(d=40, n=2)
    encoder = build_encoder("gaussian-diag", 40, 40, hidden=(8,))
    with caplog.at_level("WARNING"):
        result = refine(model, encoder, x, 300, seed=0)
    assert not bool(result.mixed.any())
    assert "mixed=False" in caplog.text
