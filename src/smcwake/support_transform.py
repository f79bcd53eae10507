"""Support transforms: how an encoder maps R^d onto the prior's support.

An encoder built with ``support=prior.support`` describes an unconstrained variable v in R^d
and maps it onto the support with T = ``torch.distributions.biject_to(support)``: z = T(v).
:func:`check_support` decides whether a support can be handled that way (a box, a half-line, the
unit interval, products of them; not a simplex, which drops a coordinate, nor a discrete set)
and returns None for all of R^d, where T is the identity. :func:`bijection_onto` builds T for
whole events [*, d] in a given dtype and on a given device (``biject_to`` alone gives an
element-wise transform whose bounds stay where the prior's are).

Shapes: v [*, d] -> z [*, d].
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch.distributions import IndependentTransform, Transform, biject_to, constraints

__all__ = ["bijection_onto", "check_support"]


def _base_constraint(support: constraints.Constraint) -> constraints.Constraint:
    """``support`` without its ``independent`` wrappers."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def check_support(
    support: constraints.Constraint | None, z_dim: int
) -> constraints.Constraint | None:
    """The support an encoder maps onto: ``support``, or None for R^d (no transform).

    Raises ``ValueError`` when ``torch.distributions.biject_to`` has no bijection onto it, or
    when that bijection does not take v [*, d] to z [*, d] (a simplex drops a coordinate), and
    ``TypeError`` when it is not a constraint.

    >>> from torch.distributions import Gamma, Independent, Normal
    >>> check_support(Independent(Normal(torch.zeros(2), 1.0), 1).support, 2) is None
    True
    >>> check_support(Independent(Gamma(torch.ones(2), 1.0), 1).support, 2)
    IndependentConstraint(GreaterThanEq(lower_bound=0.0), 1)
    """
    if support is None:
        return None
    if not isinstance(support, constraints.Constraint):
        raise TypeError(
            f"support: expected a torch.distributions constraint (prior.support) or None, "
            f"received {type(support).__name__}"
        )
    if isinstance(_base_constraint(support), type(constraints.real)):
        return None  # R^d: the identity
    if support.is_discrete:
        raise ValueError(f"support: expected a continuous support, received {support}")
    try:
        probe = torch.zeros(1, z_dim, dtype=torch.float64)
        z = bijection_onto(support, probe)(probe)
    except NotImplementedError as err:
        raise ValueError(
            f"support: torch.distributions.biject_to has no bijection onto {support} ({err}); "
            "pass support=None for an encoder on all of R^d"
        ) from err
    except (RuntimeError, IndexError, ValueError) as err:
        raise ValueError(
            f"support: the bijection onto {support} does not map R^{z_dim} to z [*, {z_dim}] "
            f"({err})"
        ) from err
    if z.shape != probe.shape:
        raise ValueError(
            f"support: the bijection onto {support} maps v [*, {z_dim}] to "
            f"{list(z.shape[1:])} instead of [{z_dim}]; reparameterize the prior on R^{z_dim}"
        )
    return support


def bijection_onto(support: constraints.Constraint, like: Tensor) -> Transform:
    """T = ``biject_to(support)`` acting on whole events, with the support's bounds in ``like``'s
    dtype and on its device. ``support`` is one :func:`check_support` accepted.

    Shapes: T maps v [*, d] to z [*, d].

    >>> t = bijection_onto(constraints.positive, torch.zeros(()))  # z = exp(v) per coordinate
    >>> t(torch.tensor([0.0, 1.0])), t.domain.event_dim
    (tensor([1.0000, 2.7183]), 1)
    """
    return _event_transform(biject_to(_constraint_to(support, like.dtype, like.device)))


def _event_transform(transform: Transform) -> Transform:
    """``transform`` acting on whole events [*, d]: element-wise ones are made independent."""
    if transform.domain.event_dim == 0:
        return IndependentTransform(transform, 1)
    return transform


def _constraint_to(
    support: constraints.Constraint, dtype: torch.dtype, device: torch.device
) -> constraints.Constraint:
    """A copy of ``support`` whose tensors (bounds) are in ``dtype`` on ``device``."""
    moved = copy.copy(support)
    for name, value in vars(support).items():
        if isinstance(value, Tensor):
            to_dtype = dtype if value.is_floating_point() else value.dtype
            setattr(moved, name, value.to(device=device, dtype=to_dtype))
        elif isinstance(value, constraints.Constraint):
            setattr(moved, name, _constraint_to(value, dtype, device))
        elif isinstance(value, list | tuple) and any(
            isinstance(c, constraints.Constraint) for c in value
        ):
            setattr(moved, name, type(value)(_constraint_to(c, dtype, device) for c in value))
    return moved
