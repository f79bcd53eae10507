"""Adaptive temperatures: the bisection hits the target conditional ESS."""

import math

import pytest
import torch

from smcwake.smc.tempering import conditional_ess, next_temperature, tempered


def test_tempered_reads_zero_times_minus_inf_as_zero():
    ll = torch.tensor([[-math.inf, -1.0]])
    assert tempered(ll, torch.tensor([0.0])).tolist() == [[0.0, 0.0]]
    assert tempered(ll, torch.tensor([0.5])).tolist() == [[-math.inf, -0.5]]


def test_next_temperature_hits_ess_target():
    g = torch.Generator().manual_seed(0)
    ll = -50 * torch.rand(8, 500, generator=g, dtype=torch.float64) ** 2
    lw = torch.full((8, 500), -math.log(500), dtype=torch.float64)
    tau = torch.linspace(0, 0.5, 8, dtype=torch.float64)
    new = next_temperature(ll, lw, tau, ess_target=0.5)
    assert torch.all(new > tau)
    assert torch.all(new < 1)
    cess = conditional_ess(ll, lw, new - tau)
    torch.testing.assert_close(cess, torch.full_like(cess, 0.5), atol=1e-6, rtol=0)


def test_jumps_to_one_when_allowed():
    ll = torch.zeros(2, 10, dtype=torch.float64)
    ll[1, 0] = -1e-3
    lw = torch.full((2, 10), -math.log(10), dtype=torch.float64)
    new = next_temperature(ll, lw, torch.tensor([0.0, 0.9], dtype=torch.float64))
    assert new.tolist() == [1.0, 1.0]


def test_minimum_increment_when_most_particles_have_zero_likelihood():
    # 9 of 10 particles have zero likelihood: CESS < 0.5 for any step, so the step is minimal
    ll = torch.full((1, 10), -math.inf, dtype=torch.float64)
    ll[0, 0] = 0.0
    lw = torch.full((1, 10), -math.log(10), dtype=torch.float64)
    new = next_temperature(ll, lw, torch.zeros(1, dtype=torch.float64), min_increment=1e-6)
    torch.testing.assert_close(new, torch.tensor([1e-6], dtype=torch.float64))


def test_target_ess_is_a_deprecated_spelling_of_ess_target():
    g = torch.Generator().manual_seed(1)
    ll = -20 * torch.rand(3, 200, generator=g, dtype=torch.float64) ** 2
    lw = torch.full((3, 200), -math.log(200), dtype=torch.float64)
    tau = torch.zeros(3, dtype=torch.float64)
    with pytest.warns(FutureWarning, match="ess_target"):
        old = next_temperature(ll, lw, tau, target_ess=0.3)
    assert torch.equal(old, next_temperature(ll, lw, tau, ess_target=0.3))
    assert not torch.equal(old, next_temperature(ll, lw, tau))  # the alias is not ignored
