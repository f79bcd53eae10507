"""SMC in unconstrained coordinates for priors whose support is a half-line, an interval or a box.

The move kernels propose points in R^d and reject those outside the prior's support. When much
of the posterior sits against a boundary (a rate near 0, a probability near 1) and d is large,
nearly every proposal leaves the support and the particles barely move. As Stan, PyMC and
NumPyro do, :func:`smcwake.run_smc` can instead run in u = T^{-1}(z), with
T = ``torch.distributions.biject_to(prior.support)`` (exp for a half-line, a scaled sigmoid for an
interval, coordinate by coordinate), where every proposal is a valid point. The tempered target
in u is

    log p(T(u)) + log |det J_T(u)| + tau * log p(x | T(u)),

the pushforward of the tempered target in z, so the evidence Z (and the SMC estimate of it) is
the same, and the particles are mapped back to z = T(u) at the end.

:class:`UnconstrainedPrior` is the prior of u (its ``log_prob`` and ``sample``);
:class:`UnconstrainedModel` is the model on R^d the sampler runs on (the user's likelihood at
T(u)); :func:`choose_space` decides between the two coordinate systems (``space="auto"``,
``"unconstrained"`` or ``"constrained"``); :func:`unconstrained_encoder` gives an encoder's
density in u, for the kernels that propose from an encoder; :func:`in_prior_coordinates` runs a
kernel in z within a run in u (the default kernel's mixture jumps on intervals and boxes, which
fit modes cut by a wall better in z than the logit's stretched shapes in u).

Numerics. T(u) is computed in floating point: exp under- or overflows, and torch's sigmoid is
clipped to [tiny, 1 - eps]. A point u is used only where T is numerically invertible there,
``|T^{-1}(T(u)) - u| <= ROUND_TRIP_TOLERANCE`` with T(u) finite (e.g. |u| below about 16 for an
interval in float32, 36 in float64); elsewhere its density is 0 (log density ``-inf``), which
leaves out only the prior mass the dtype cannot resolve anyway (below 1e-7 of an interval
prior in float32). The log-Jacobian is torch's, computed from u (for exp it is u itself, for
the sigmoid ``-softplus(-u) - softplus(u)``), so it stays exact where T(u) rounds; the prior's
log-density is evaluated at points strictly inside the support, so it stays finite whatever
torch's validation flag.

Shapes: u [*, d] <-> z [*, d].
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.distributions import Distribution, Transform, constraints

from smcwake import _rng
from smcwake._ops import all_last
from smcwake.model import Model
from smcwake.smc.base import ADAPTATION_GAIN, Kernel, MoveInfo, SMCState, Target, make_kernel
from smcwake.smc.mh import weighted_cholesky
from smcwake.support_transform import bijection_onto, check_support

if TYPE_CHECKING:
    from smcwake.smc.encoder_proposal import ProposalEncoder

__all__ = [
    "SPACES",
    "DEFAULT_SPACE",
    "AUTO_KINDS",
    "INTERVAL_KERNELS",
    "INTERVAL_MIN_DIM",
    "ROUND_TRIP_TOLERANCE",
    "UnconstrainedPrior",
    "UnconstrainedModel",
    "check_space",
    "choose_space",
    "in_prior_coordinates",
    "support_kind",
    "unconstrained_encoder",
]

logger = logging.getLogger(__name__)

SPACES = ("auto", "unconstrained", "constrained")
"""The values of ``space`` (:class:`~smcwake.smc.options.SMCOptions`, :func:`smcwake.run_smc`)."""

DEFAULT_SPACE = "auto"
"""``run_smc`` and ``fit`` move the particles in unconstrained coordinates when the prior's
support is one of :data:`AUTO_KINDS`, a half-line or an interval per coordinate, and the kernel
and the dimension suit it (see :func:`choose_space` and docs/KERNELS.md)."""

AUTO_KINDS = frozenset({"half-line", "interval"})
"""Kinds of support (:func:`support_kind`) that ``space="auto"`` runs in unconstrained
coordinates: half-lines for every kernel given by name; intervals and boxes from
:data:`INTERVAL_MIN_DIM` dimensions on, for the kernels of :data:`INTERVAL_KERNELS` (the
default). Measured with benchmarks/constrained_priors.py (K = 1000, d = 1 to 100): in z,
half-line runs at d = 40 and 100 were all unmixed and log Z was off by up to 14 nats at d = 40
(Exponential, Gamma, HalfNormal priors), intervals and boxes as much (Beta-binomial: 15 nats at
d = 20, 147 at d = 100; uniform boxes against a wall: 4 nats at d = 20, 228 at d = 100); in u
no |log Zhat - log Z| exceeded 0.39. Other supports (concatenations, users' own constraints)
stay in z; see docs/KERNELS.md."""

INTERVAL_KERNELS = frozenset({"auto"})
"""Kernel names that ``space="auto"`` runs in u on an interval or box support: the default,
whose mixture jumps act in z (:func:`in_prior_coordinates`). Others that fit a mixture to the
particles ("mixture", "mixture+rwmh", ...) would fit it in u, where the logit stretches modes
cut by a wall, and the rest were not measured there: they keep boxes in z unless
``space="unconstrained"``."""

INTERVAL_MIN_DIM = 6
"""Smallest dimension from which ``space="auto"`` runs an interval or box prior in u.

Measured with benchmarks/constrained_priors.py (K = 1000, two seeds, 4 observations each):
in z the Beta(0.5, 0.5)-binomial is right at d = 5 (|log Zhat - log Z| at most 0.32, no run
flagged), 2 of 8 runs are flagged unmixed at d = 6, all at d = 7 and beyond, and log Z is off
by 1.4 nats at d = 8, 13 at d = 15; boxes with a posterior against a wall follow from d = 15
(1.2 nats, 7 of 8 flagged). In u every run from d = 1 to 100 was right (at most 0.38).
Below d = 6 the moves in z are right and keep the masses of separated modes closest to
exact: on the multimodal SLCP box problem (d = 5, K = 5000) mixture jumps fitted in u left
the largest standardized mass error at 6.4 (2.8 in z; ``--slcp-check``); fitted in z with
local steps in u, as the default does in u, the benchmark's observations were as right as
in z, but on those of the slow test in tests/smc/test_multimodal.py one observation reached
7.8 over six seeds, against 5.5 in z."""


ROUND_TRIP_TOLERANCE = 0.5
"""A point u counts as inside the unconstrained space where ``|T^{-1}(T(u)) - u|`` is at most
this (and T(u) is finite); elsewhere floating point cannot tell T(u) from the boundary."""

_MAX_REDRAWS = 100  # rounds of prior draws replacing those that land on the boundary
_SENTINEL = 1e10  # u given to encoder draws outside the support: outside, and squares stay finite


def check_space(space: object) -> str:
    """Return ``space`` if it is one of :data:`SPACES`, else raise ``ValueError`` naming them.

    >>> check_space("auto")
    'auto'
    """
    if not isinstance(space, str) or space not in SPACES:
        raise ValueError(f"space: expected one of {list(SPACES)}, received {space!r}")
    return space


def support_kind(support: constraints.Constraint) -> str:
    """The kind of a support, per coordinate: "real", "half-line", "interval" or "other".

    ``independent`` wrappers are looked through; "other" is any support torch's ``biject_to``
    may or may not handle (a concatenation of constraints, a user's own constraint).

    >>> support_kind(constraints.independent(constraints.positive, 1))
    'half-line'
    >>> support_kind(constraints.unit_interval)
    'interval'
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if isinstance(support, type(constraints.real)):
        return "real"
    lower, upper = hasattr(support, "lower_bound"), hasattr(support, "upper_bound")
    if lower and upper:
        return "interval"
    if lower or upper:
        return "half-line"
    return "other"


def choose_space(space: str, model: Model, kernel: object = "auto") -> str:
    """Resolve ``space`` to "unconstrained" or "constrained" for a run of ``model``.

    "auto" is "unconstrained" when ``biject_to`` maps R^d onto the prior's support and

    * the support is a half-line per coordinate and ``kernel`` is given by name, or
    * it is an interval or a box (bounds may differ between coordinates) of at least
      :data:`INTERVAL_MIN_DIM` dimensions and ``kernel`` is one of :data:`INTERVAL_KERNELS`,
      the default "auto" (whose mixture jumps then act in z);

    otherwise "constrained" (logged at INFO level). A built kernel stays in the prior's own
    coordinates under "auto": it may carry densities in z (one that proposes from an encoder
    does); pass ``space="unconstrained"`` to run it in u. "unconstrained" raises
    ``ValueError`` when ``biject_to`` cannot map R^d onto the support.

    >>> from torch.distributions import Independent, Uniform
    >>> def box(d):
    ...     prior = Independent(Uniform(-torch.ones(d), torch.ones(d)), 1)
    ...     return Model(prior, lambda z, x: z[..., 0])
    >>> choose_space("auto", box(40)), choose_space("auto", box(40), "mixture+rwmh")
    ('unconstrained', 'constrained')
    >>> choose_space("auto", box(INTERVAL_MIN_DIM - 1))
    'constrained'
    """
    check_space(space)
    if space == "constrained":
        return space
    support = model.prior.support
    kind = support_kind(support)
    if kind == "real":
        return "constrained"  # R^d: the two coordinate systems are the same
    try:
        check_support(support, model.dim)
    except ValueError as err:
        if space == "unconstrained":
            raise ValueError(
                f"space='unconstrained': no bijection from R^{model.dim} onto the prior's "
                f"support ({err}); use space='constrained'"
            ) from err
        logger.info("moves in the prior's own coordinates: %s", err)
        return "constrained"
    if space == "unconstrained":
        return space
    named = isinstance(kernel, str)
    low_dim = kind == "interval" and model.dim < INTERVAL_MIN_DIM
    suits = kind != "interval" or kernel in INTERVAL_KERNELS
    if kind in AUTO_KINDS and named and not low_dim and suits:
        return "unconstrained"
    if kind not in AUTO_KINDS:
        why = f"space='auto' keeps supports of kind {kind!r} constrained"
    elif low_dim:
        why = (
            f"space='auto' keeps an interval or box of d = {model.dim} < {INTERVAL_MIN_DIM} "
            "in z, where the moves are right and keep the masses of separated modes closest "
            "(pass space='unconstrained' for u)"
        )
    elif named:
        why = (
            f"space='auto' moves an interval or box in u only with the kernels "
            f"{sorted(INTERVAL_KERNELS)}, not {kernel!r} (pass space='unconstrained' for u)"
        )
    else:
        why = (
            "the kernel is a built one (pass space='unconstrained' if it may act on u = T^{-1}(z))"
        )
    logger.info("moves in the prior's own coordinates: %s", why)
    return "constrained"


class _Bijection:
    """T = biject_to(support) for whole events, with the numerical-interior test, per dtype."""

    def __init__(self, support: constraints.Constraint) -> None:
        self.support = support
        self._transforms: dict[tuple[torch.dtype, torch.device], Transform] = {}

    def transform(self, like: Tensor) -> Transform:
        key = (like.dtype, like.device)
        if key not in self._transforms:
            self._transforms[key] = bijection_onto(self.support, like)
        return self._transforms[key]

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """z = T(u) and whether u is inside (T invertible there in floating point).

        Shapes: u [*, d] -> (z [*, d], inside [*] bool).
        """
        t = self.transform(u)
        z = t(u)
        with torch.no_grad():
            back = t.inv(z.detach())
            ok = torch.isfinite(z.detach()) & ((back - u.detach()).abs() <= ROUND_TRIP_TOLERANCE)
        return z, all_last(ok)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """u = T^{-1}(z) (``_SENTINEL`` where z is not strictly inside) and whether it is.

        Shapes: z [*, d] -> (u [*, d], inside [*] bool).
        """
        u = self.transform(z).inv(z)
        finite = all_last(torch.isfinite(u))
        u = torch.where(finite[..., None], u, _SENTINEL)
        _, inside = self.forward(u)
        return u, inside & finite

    def log_abs_det_jacobian(self, u: Tensor, z: Tensor) -> Tensor:
        """log |det dT/du|, computed from u. Shapes: u, z [*, d] -> [*]."""
        return self.transform(u).log_abs_det_jacobian(u, z)


class UnconstrainedPrior(Distribution):
    """The prior of u = T^{-1}(z), z ~ ``prior``, T = ``biject_to(prior.support)``: on R^d.

    ``log_prob(u) = prior.log_prob(T(u)) + log |det J_T(u)|``, ``-inf`` where T(u) cannot be
    told from the boundary in u's dtype (see the module docstring). ``sample`` maps prior draws
    through T^{-1}, drawing again those that land on the boundary (a uniform draw can be its
    lower bound exactly).

    Shapes: u [*, d] -> log_prob [*]; sample(shape) -> [*shape, d].

    >>> from torch.distributions import Exponential, Independent
    >>> p = UnconstrainedPrior(Independent(Exponential(torch.ones(2)), 1))
    >>> u = torch.tensor([0.0, 1.0])
    >>> bool(torch.isclose(p.log_prob(u), (u - u.exp()).sum()))
    True
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, prior: Distribution) -> None:
        self._masked = Model(prior, _no_likelihood)  # masks the support, any validation flag
        self.base = prior
        self._bijection = _Bijection(prior.support)
        super().__init__(event_shape=prior.event_shape, validate_args=False)

    def to_constrained(self, u: Tensor, *, safe: bool = True) -> tuple[Tensor, Tensor]:
        """z = T(u) and whether u is inside; with ``safe``, z is a point inside the support
        (the prior's mean or a fixed draw) where u is outside, else whatever T(u) rounds to.

        Shapes: u [*, d] -> (z [*, d], inside [*] bool).
        """
        z, inside = self._bijection.forward(u)
        if not safe:
            return z, inside
        point = self._masked._interior_point(z)
        return torch.where(inside[..., None], z, point), inside

    def to_unconstrained(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """u = T^{-1}(z) and whether it is inside (else u is far outside, at 1e10).

        Shapes: z [*, d] -> (u [*, d], inside [*] bool).
        """
        return self._bijection.inverse(z)

    def log_abs_det_jacobian(self, u: Tensor, z: Tensor) -> Tensor:
        """log |det dT/du| at u (z = T(u)). Shapes: u, z [*, d] -> [*]."""
        return self._bijection.log_abs_det_jacobian(u, z)

    def log_prob(self, value: Tensor) -> Tensor:
        z, inside = self.to_constrained(value)
        log_prob = self._masked.log_prior(z) + self.log_abs_det_jacobian(value, z)
        return torch.where(inside, log_prob, -math.inf)

    def draw(
        self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """u draws in ``dtype`` on ``device`` (from torch's global RNG, as ``prior.sample``).

        Shapes: -> [*shape, d].
        """
        u = inside = None
        for _ in range(_MAX_REDRAWS):
            z = self.base.sample(shape).to(dtype=dtype, device=device)
            new_u, new_inside = self.to_unconstrained(z)
            if u is None:
                u, inside = new_u, new_inside
            else:  # keep the good draws, replace the others with new ones
                u = torch.where(inside[..., None], u, new_u)
                inside = inside | new_inside
            if bool(inside.all()):
                return u
        raise ValueError(
            f"prior: after {_MAX_REDRAWS} rounds, some draws of {self.base} still lie on the "
            f"boundary of its support in {dtype}, where the unconstrained coordinates are "
            "infinite; run in float64 or with space='constrained'"
        )

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            probe = self.base.sample()
            return self.draw(tuple(sample_shape), probe.dtype, probe.device)


def _no_likelihood(z: Tensor, x: Tensor) -> Tensor:
    raise RuntimeError("the prior-only model of UnconstrainedPrior has no likelihood")


class UnconstrainedModel(Model):
    """``model`` seen in u = T^{-1}(z): prior :class:`UnconstrainedPrior`, likelihood at T(u).

    The likelihood is the user's, evaluated (and validated, with its error messages) at
    z = T(u); it is ``-inf`` where u is outside (see the module docstring), whatever the user's
    function returns there (it may be on the support's boundary, where e.g. a scale of 0 gives
    NaN). Gradients with respect to u flow through T by autograd.

    Shapes: ``log_prior(u [*, d]) -> [*]``, ``log_likelihood(u [B, K, d], x [B, p]) -> [B, K]``.
    """

    def __init__(self, model: Model) -> None:
        self.constrained = model
        super().__init__(
            UnconstrainedPrior(model.prior), _no_likelihood, name=model.name, x_dim=model.x_dim
        )

    def to_constrained(self, u: Tensor) -> Tensor:
        """z = T(u) (an interior point where u is outside). Shapes: u [*, d] -> z [*, d]."""
        return self.prior.to_constrained(u)[0]

    def log_likelihood(
        self,
        z: Tensor,
        x: Tensor,
        rows: Tensor | None = None,
        *,
        log_prior: Tensor | None = None,
    ) -> Tensor:
        """log p(x_b | T(u_bk)), ``-inf`` where u is outside. ``z`` holds u here.

        Shapes: u [B, K, d], x [B, p] -> [B, K]; ``rows`` [B]; ``log_prior`` is not needed.
        """
        zz, inside = self.prior.to_constrained(z, safe=False)
        # points outside count as outside the user's support: -inf whatever the function
        # returns there, and if it raises, it is called again with them moved inside
        outside = torch.where(inside, 0.0, -math.inf).to(zz.dtype)
        return self.constrained.log_likelihood(zz, x, rows, log_prior=outside)

    def sample_prior(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw u from the pushforward prior, in ``dtype`` on ``device`` (default: the prior's).

        Shapes: -> [*shape, d].
        """
        with _rng.forked_rng(generator, device), torch.no_grad():
            probe = self.prior.base.sample()
            dtype = dtype or probe.dtype
            device = torch.device(device) if device is not None else probe.device
            return self.prior.draw(shape, dtype, device)


class _UnconstrainedEncoder(torch.nn.Module):
    """An encoder on z seen in u: draws T^{-1}(z_q), density q(T(u) | x) |det J_T(u)|.

    A module holding the encoder, so the kernels see its parameters' dtype and switch it to
    ``eval`` mode while they propose from it.
    """

    def __init__(self, encoder: ProposalEncoder, prior: UnconstrainedPrior) -> None:
        super().__init__()
        self.encoder = encoder
        self.prior = prior

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Shapes: x [B, p] -> u [B, n, d]; draws outside the support are far outside in u."""
        return self.prior.to_unconstrained(self.encoder.sample(x, n, generator=generator))[0]

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log q_u(u | x) (``z`` holds u). Shapes: u [B, S, d], x [B, p] -> [B, S]."""
        zz, inside = self.prior.to_constrained(z)
        log_q = self.encoder.log_prob(zz, x) + self.prior.log_abs_det_jacobian(z, zz).to(z.dtype)
        return torch.where(inside, log_q, -math.inf)


def unconstrained_encoder(encoder: ProposalEncoder, model: Model) -> ProposalEncoder:
    """``encoder`` (a density q(z | x) on the prior's support) as a density on u = T^{-1}(z).

    For the kernels that propose from an encoder (``encoder_then_rwmh(encoder)``, ...) in a
    run with ``space="unconstrained"``: draws are u = T^{-1}(z_q), z_q ~ q(. | x), and the
    density is log q(T(u) | x) + log |det J_T(u)|. Draws outside the support (an encoder
    without a support transform can make them) are placed far outside in u, where they are
    rejected, as they are in z.

    Shapes: as the encoder's, with u in place of z.
    """
    return _UnconstrainedEncoder(encoder, UnconstrainedPrior(model.prior))


class _PriorCoordinatesModel(Model):
    """The model an :class:`UnconstrainedModel` runs on, seen back in the prior's coordinates z.

    Its density is the pushforward of the density in u: the user's prior and likelihood at z,
    and 0 where u = T^{-1}(z) is not inside (see the module docstring), so a move that is exact
    for it in z is exact for the run's target in u.

    Shapes: ``log_prior(z [*, d]) -> [*]``, ``log_likelihood(z [B, K, d], x [B, p]) -> [B, K]``.
    """

    def __init__(self, model: UnconstrainedModel) -> None:
        self.constrained = model.constrained
        self.unconstrained_prior = model.prior
        c = model.constrained
        super().__init__(c.prior, _no_likelihood, name=c.name, x_dim=c.x_dim)

    def log_prior(self, z: Tensor) -> Tensor:
        inside = self.unconstrained_prior.to_unconstrained(z)[1]
        return torch.where(inside, self.constrained.log_prior(z), -math.inf)

    def log_likelihood(
        self,
        z: Tensor,
        x: Tensor,
        rows: Tensor | None = None,
        *,
        log_prior: Tensor | None = None,
    ) -> Tensor:
        if log_prior is None:
            log_prior = self.log_prior(z)
        return self.constrained.log_likelihood(z, x, rows, log_prior=log_prior)


def in_prior_coordinates(
    kernel: Kernel, kinds: frozenset[str] = frozenset({"interval"})
) -> Kernel:
    """``kernel`` acting in the prior's coordinates z while the sampler runs in u = T^{-1}(z).

    When the run is in u (its target's model is an :class:`UnconstrainedModel`) and the prior's
    support is of a kind in ``kinds``, each call maps the particles to z = T(u), runs
    ``kernel`` on the same target seen in z (the density of u pushed forward by T), and maps
    the particles it moved back to u; the others keep their u exactly. A move invariant for
    the target in z is, seen through the bijection T, invariant for the target in u, so the
    result is exact. Elsewhere (runs in z, other supports) ``kernel`` runs as it is, bit for
    bit.

    Why: the default kernel's mixture jumps fit Gaussian components to the particle cloud. A
    mode cut by an interval's wall has a short, bounded shape in z, but the logit stretches it
    into a long, skewed tail in u, which the components fit poorly: on the four modes of the
    SLCP model (a box prior, K = 5,000, four seeds) the jumps fitted in u moved 86 to 92% of
    the particles per stage in some observations (91 to 93% with up to 100 jumps) and left
    mode masses up to 6.4 binomial standard errors off, while the same jumps fitted in z, with
    the local steps in u, moved 95% and kept them within 2.8, as in z (docs/KERNELS.md,
    "Priors with constrained support").

    Shapes: as for any kernel (``state.z`` holds u).
    """

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        model = target.model
        if not (
            isinstance(model, UnconstrainedModel)
            and support_kind(model.prior.base.support) in kinds
        ):
            return kernel(state, target, generator, chol)
        prior = model.prior
        z, _ = prior.to_constrained(state.z)
        log_jacobian = prior.log_abs_det_jacobian(state.z, z).to(state.log_prior.dtype)
        in_z = Target(_PriorCoordinatesModel(model), target.x, target.rows)
        moved_state, info = kernel(
            state._replace(z=z, log_prior=state.log_prior - log_jacobian),
            in_z,
            generator,
            weighted_cholesky(z, state.log_weights),
        )
        moved = (moved_state.z != z).any(-1)  # [B, K]
        u, _ = prior.to_unconstrained(moved_state.z)
        u = torch.where(moved[..., None], u, state.z)
        log_jacobian_new = prior.log_abs_det_jacobian(u, moved_state.z).to(log_jacobian.dtype)
        log_prior = torch.where(moved, moved_state.log_prior + log_jacobian_new, state.log_prior)
        return moved_state._replace(z=u, log_prior=log_prior), info

    return make_kernel(
        move,
        target_acceptance=getattr(kernel, "target_acceptance", None),
        initial_scale=getattr(kernel, "initial_scale", None),
        num_steps=kernel.num_steps,
        name=getattr(kernel, "name", "kernel"),
        uses_scale=getattr(kernel, "uses_scale", True),
        adaptation_gain=getattr(kernel, "adaptation_gain", ADAPTATION_GAIN),
    )
