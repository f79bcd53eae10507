"""Tests for smcwake.support_transform: which supports an encoder can map R^d onto, and the
bijection in the dtype and on the device asked for."""

import pytest
import torch
from torch.distributions import (
    Beta,
    Dirichlet,
    Gamma,
    Independent,
    MultivariateNormal,
    Normal,
    Poisson,
    Uniform,
    biject_to,
    constraints,
)

from smcwake.support_transform import bijection_onto, check_support


def test_unbounded_supports_need_no_transform():
    assert check_support(None, 2) is None
    assert check_support(Independent(Normal(torch.zeros(2), 1.0), 1).support, 2) is None
    assert check_support(MultivariateNormal(torch.zeros(2), torch.eye(2)).support, 2) is None


@pytest.mark.parametrize(
    "prior",
    [
        Independent(Gamma(torch.ones(3), 1.0), 1),
        Independent(Beta(torch.ones(3), 2.0), 1),
        Independent(Uniform(-torch.ones(3), torch.tensor([1.0, 2.0, 3.0])), 1),
    ],
    ids=["half-line", "unit-interval", "box"],
)
def test_bounded_supports_are_kept_and_mapped_inside(prior):
    support = prior.support  # a new object at each access
    assert check_support(support, 3) is support
    v = torch.tensor([[-30.0, 0.0, 30.0]], dtype=torch.float64)
    transform = bijection_onto(support, v)
    z = transform(v)
    assert z.shape == v.shape
    assert z.dtype == torch.float64
    assert bool(support.check(z).all())
    # the same map as torch's, acting on whole events (one log-determinant per event)
    torch.testing.assert_close(z.float(), biject_to(prior.support)(v.float()))
    assert transform.log_abs_det_jacobian(v, z).shape == (1,)


def test_bounds_follow_the_dtype_asked_for():
    # float64 bounds would promote a float32 encoder's z to float64; moved, they do not
    box = constraints.independent(
        constraints.interval(
            torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        ),
        1,
    )
    assert biject_to(box)(torch.zeros(1, 1)).dtype == torch.float64  # premise
    z = bijection_onto(box, torch.zeros(()))(torch.zeros(1, 1))
    assert z.dtype == torch.float32
    assert float(z) == 0.5


def test_unusable_supports_raise_with_the_reason():
    with pytest.raises(ValueError, match="maps v"):  # a simplex drops a coordinate
        check_support(Dirichlet(torch.ones(3)).support, 3)
    with pytest.raises(ValueError, match="continuous support"):
        check_support(Independent(Poisson(torch.ones(2)), 1).support, 2)
    with pytest.raises(TypeError, match="expected a torch.distributions constraint"):
        check_support("positive", 2)
