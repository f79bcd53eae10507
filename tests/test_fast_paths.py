"""The sampler's shortcuts give what the plain torch code gives.

``select`` against ``torch.where`` bit for bit; the prior shortcuts (product of normals, box of
uniforms in low and high dimension) against ``prior.log_prob``; the one-reduction validation of
log-likelihoods against the element-wise check; ``tempered`` against its definition.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, Uniform

from smcwake import Model
from smcwake._ops import select
from smcwake.model import check_log_likelihood
from smcwake.smc.tempering import tempered


def _loglik(z, x):
    return Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1)


def _specials(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random values with NaN, +-inf, +-0 and subnormals mixed in."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    pool = torch.tensor(
        [math.nan, math.inf, -math.inf, 0.0, -0.0, torch.finfo(dtype).tiny / 4], dtype=dtype
    )
    pick = torch.randint(0, 12, shape, generator=g)
    return torch.where(pick < 6, pool[pick.clamp_max(5)], values)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_select_copies_every_bit_that_where_copies(dtype):
    a, b = _specials(dtype, (7, 50, 3), 0), _specials(dtype, (7, 50, 3), 1)
    cond = torch.rand(7, 50, 3, generator=torch.Generator().manual_seed(2)) < 0.5
    assert torch.equal(_bits(select(cond, a, b)), _bits(torch.where(cond, a, b)))
    # a mask broadcast over the last axis, and numbers for either side
    row = cond[..., 0]
    assert torch.equal(
        _bits(select(row[..., None], a, b)), _bits(torch.where(row[..., None], a, b))
    )
    for got, want in (
        (select(row, a[..., 0], -math.inf), torch.where(row, a[..., 0], -math.inf)),
        (select(row, 2.5, b[..., 0]), torch.where(row, 2.5, b[..., 0])),
    ):
        assert got.dtype == dtype
        assert torch.equal(_bits(got), _bits(want.to(dtype)))


def test_select_keeps_gradients_and_rejects_two_numbers():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    out = select(torch.tensor([True, False]), a, torch.tensor([5.0, 6.0]))
    out.sum().backward()
    assert a.grad.tolist() == [1.0, 0.0]
    with pytest.raises(TypeError, match="a or b must be a tensor"):
        select(torch.tensor([True]), 1.0, 2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 7])
def test_diagonal_normal_prior_matches_torch_in_value_and_gradient(dtype, d):
    g = torch.Generator().manual_seed(d)
    loc = torch.randn(d, generator=g) * 3
    scale = torch.rand(d, generator=g) * 4 + 0.1
    prior = Independent(Normal(loc, scale), 1)
    model = Model(prior, _loglik)
    assert model._diagonal_normal
    z = (torch.randn(4, 9, d, generator=g, dtype=torch.float64) * 5).to(dtype)
    z.requires_grad_(True)
    got = model.log_prior(z)
    want = Independent(Normal(loc.to(dtype), scale.to(dtype)), 1).log_prob(z)
    assert got.dtype == dtype
    assert got.shape == (4, 9)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(got, want, **tol)
    (grad,) = torch.autograd.grad(got.sum(), z)
    (grad_want,) = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(grad, grad_want, **tol)


class _ShiftedNormal(Normal):
    """A user subclass that changes log_prob: the normal shortcut must not apply to it."""

    def log_prob(self, value):
        return super().log_prob(value) + 1.0


def test_diagonal_normal_shortcut_skips_user_subclasses():
    prior = Independent(_ShiftedNormal(torch.zeros(2), torch.ones(2)), 1)
    model = Model(prior, _loglik)
    assert not model._diagonal_normal
    z = torch.randn(3, 4, 2)
    torch.testing.assert_close(model.log_prior(z), prior.log_prob(z))


def test_box_prior_in_high_dimension_matches_torch_on_edges():
    d = 12  # above the per-coordinate loop: the vectorized test runs
    low, high = -torch.ones(d), 2 * torch.ones(d)
    prior = Independent(Uniform(low, high), 1)
    model = Model(prior, _loglik)
    z = torch.zeros(1, 5, d)
    z[0, 1, 3] = -1.0  # on the low edge: inside
    z[0, 2, 5] = 2.0  # on the high edge: outside (half-open)
    z[0, 3, 0] = -1.5  # outside
    z[0, 4, 11] = 1.999  # inside
    want = torch.full((1, 5), -d * math.log(3.0))
    want[0, 2] = want[0, 3] = -math.inf
    torch.testing.assert_close(model.log_prior(z), want)


def test_validation_by_one_sum_still_finds_every_bad_value():
    z = torch.zeros(2, 4, 1)
    ok = torch.tensor([[-math.inf, 0.0, 1.0, -math.inf], [2.0, -3.0, -math.inf, 0.0]])
    assert check_log_likelihood(ok, z) is ok
    # finite values whose sum overflows are fine; the element-wise check clears them
    huge = torch.full((2, 4), 3e38)
    assert check_log_likelihood(huge, z) is huge
    for bad in (math.nan, math.inf):
        for other in (0.0, -math.inf):  # +inf next to -inf sums to NaN: still caught
            values = ok.clone()
            values[1, 3] = bad
            values[1, 2] = other
            with pytest.raises(ValueError, match="NaN or \\+inf at 1 points"):
                check_log_likelihood(values, z)


def test_tempered_is_tau_times_loglik_with_zero_at_tau_zero():
    loglik = _specials(torch.float32, (3, 40), 3)
    loglik = torch.where(torch.isnan(loglik) | (loglik == math.inf), -math.inf, loglik)
    tau = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    got = tempered(loglik, tau)
    want = torch.where(tau[:, None] == 0, 0.0, tau.float()[:, None] * loglik)
    assert torch.equal(got, want)  # -0.0 == 0.0
    assert not bool(torch.isnan(got).any())
