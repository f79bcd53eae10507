"""Gaussian mixtures fitted to the weighted particle cloud, for the moves' proposals.

A move that proposes from a mixture fitted to the cloud (:mod:`smcwake.smc.independence`,
:mod:`smcwake.smc.encoder_proposal`, :func:`~smcwake.smc.multimodal.local_random_walk`) fits it
here: :func:`cloud_mixture` fits one mixture (weighted EM, :func:`~smcwake.smc.gmm.fit_mixture`)
and widens it by a defensive component; :func:`cross_fit` fits one to each half of the cloud, for
use by the other half, so no particle's proposal depends on its own position; and
:func:`held_out_gain` reads from such a pair whether the cloud shows modes (does the mixture
explain the other half better than one Gaussian?).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from smcwake.smc.gmm import (
    GaussianMixture,
    add_component,
    fit_mixture,
    mixture_log_prob,
    sample_mixture,
)
from smcwake.smc.mh import weighted_cholesky, weighted_mean

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["MIN_GAIN", "cloud_mixture", "CrossFit", "cross_fit", "FitSettings", "held_out_gain"]


MIN_GAIN = 0.15
"""Default held-out gain (nats per particle) of the fitted mixture over one Gaussian, under
which the cloud counts as having no modes to balance and the independence steps stay at
``num_steps`` (see :func:`held_out_gain`). Measured per stage: at most -0.03 on
linear-Gaussian posteriors (d = 2 to 50, K = 300 to 2,000), at least 0.35 on the SLCP
posteriors and 0.89 on the far-apart mixture once their modes have formed."""


def cloud_mixture(
    z: Tensor,
    log_weights: Tensor,
    *,
    num_components: int,
    em_iterations: int,
    defensive_weight: float,
    defensive_scale: float,
    generator: torch.Generator | None,
    fit_points: int | None = 4096,
    init: GaussianMixture | None = None,
) -> GaussianMixture:
    """A Gaussian mixture fitted to a weighted cloud, plus a broad defensive component.

    The defensive component N(m, c^2 Sigma), m and Sigma the cloud's weighted mean and
    covariance, c = ``defensive_scale``, gets weight ``defensive_weight`` (none when 0): it keeps
    the proposal's tails at least as heavy as the cloud's, so a region the fit missed is still
    proposed. Rows whose weights are all zero are fitted with equal weights.

    ``fit_points``: clouds of more particles are fitted on this many, drawn by weight (see
    :func:`~smcwake.smc.gmm.fit_mixture`'s ``max_points``).

    Shapes: z [B, n, d], log_weights [B, n] -> mixture with [B, M (+1)] components.
    """
    empty = (log_weights == -math.inf).all(-1, keepdim=True)
    log_weights = torch.where(empty, torch.zeros_like(log_weights), log_weights)
    chol = weighted_cholesky(z, log_weights)
    mixture = fit_mixture(
        z,
        log_weights,
        num_components,
        num_iterations=em_iterations,
        max_points=fit_points,
        chol=chol,
        generator=generator,
        init=init,  # EM's start (see fit_mixture); the defensive component is not part of it
    )
    if defensive_weight > 0:
        mean = weighted_mean(z, log_weights)
        mixture = add_component(mixture, defensive_weight, mean, defensive_scale * chol)
    return mixture


class CrossFit(NamedTuple):
    """Proposal mixtures fitted crosswise: each half of the particles uses the other half's fit.

    ``first`` is fitted to particles ``[half:]`` and serves particles ``[:half]``; ``second`` is
    fitted to ``[:half]`` and serves ``[half:]``. Both have the same number of components.
    """

    first: GaussianMixture
    second: GaussianMixture
    half: int
    defensive_weight: float = 0.0  # as fitted (see :func:`cloud_mixture`)
    defensive_scale: float = 1.0

    def apply(self, fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
        """``fn(mixture, *tensors)`` on each half with its mixture, joined along the particles.

        Shapes: tensors [B, K, ...] -> [B, K, ...].
        """
        h = self.half
        return torch.cat(
            [
                fn(self.first, *(t[:, :h] for t in tensors)),
                fn(self.second, *(t[:, h:] for t in tensors)),
            ],
            1,
        )

    def sample(self, num_particles: int, generator: torch.Generator | None) -> Tensor:
        """One draw per particle, each from its half's mixture. Shapes: -> [B, K, d]."""
        first = self.sample_side(0, self.half, generator)
        return torch.cat([first, self.sample_side(1, num_particles - self.half, generator)], 1)

    def sample_side(self, side: int, n: int, generator: torch.Generator | None) -> Tensor:
        """n draws from the mixture serving particles ``[:half]`` (side 0) or ``[half:]``
        (side 1). Shapes: -> [B, n, d]."""
        return sample_mixture(self.second if side else self.first, n, generator=generator)[0]


def cross_fit(
    z: Tensor,
    log_weights: Tensor,
    *,
    num_components: int,
    em_iterations: int,
    defensive_weight: float = 0.0,
    defensive_scale: float = 1.0,
    generator: torch.Generator | None = None,
    fit_points: int | None = 4096,
    init: tuple[GaussianMixture, GaussianMixture] | None = None,
) -> CrossFit:
    """Fit :func:`cloud_mixture` to each half of the cloud, for use by the other half.

    A proposal fitted to all particles depends on the very particle it moves. With a few
    particles per component (a small mode) that dependence is strong: the fit is tightest at the
    particles it was fitted to, and an independence sampler built on it drifts mass out of small
    modes. Fitting each half's proposal to the *other* half removes a particle's own position from
    its proposal: given the other half, every particle moves under a fixed pi_tau-invariant
    kernel, as in the complementary-ensemble moves of Goodman & Weare (2010). The halves are
    contiguous blocks of indices, so copies made by systematic resampling (adjacent indices)
    mostly stay on one side.

    Shapes: z [B, K, d] (K >= 2), log_weights [B, K] -> CrossFit.

    References:
        Goodman & Weare (2010), Ensemble samplers with affine invariance, Comm. App. Math. and
        Comp. Sci.
    """
    K, d = z.shape[1], z.shape[2]
    if K < 2:
        raise ValueError(f"num_particles: expected >= 2 to fit crosswise, received {K}")
    half = K // 2
    # the same number of components on both sides (the fit caps it at half / (20 d))
    used = half if fit_points is None else min(half, fit_points)
    components = max(1, min(num_components, used // (20 * d)))
    options = dict(
        fit_points=fit_points,
        num_components=components,
        em_iterations=em_iterations,
        defensive_weight=defensive_weight,
        defensive_scale=defensive_scale,
        generator=generator,
    )
    first_init, second_init = (None, None) if init is None else init  # EM starts, no defensive
    first = cloud_mixture(z[:, half:], log_weights[:, half:], init=first_init, **options)
    second = cloud_mixture(z[:, :half], log_weights[:, :half], init=second_init, **options)
    return CrossFit(first, second, half, defensive_weight, defensive_scale)


class FitSettings(NamedTuple):
    """How a move fits its proposal mixtures to the cloud at the start of each call.

    The fields are :func:`cross_fit`'s keywords; a move builds its settings once, checks them
    (:meth:`checked`) and fits with them at every call (:meth:`fit`).
    """

    num_components: int = 16
    em_iterations: int = 10
    fit_points: int | None = 4096
    defensive_weight: float = 0.0
    defensive_scale: float = 1.0

    def checked(self) -> FitSettings:
        """These settings, after a ``ValueError`` naming the first one out of its range."""
        if self.num_components < 1:
            raise ValueError(f"num_components: expected >= 1, received {self.num_components}")
        if self.em_iterations < 0:
            raise ValueError(f"em_iterations: expected >= 0, received {self.em_iterations}")
        if not 0.0 <= self.defensive_weight < 1.0:
            raise ValueError(
                f"defensive_weight: expected a fraction in [0, 1), received "
                f"{self.defensive_weight!r}"
            )
        if self.defensive_scale <= 0:
            raise ValueError(f"defensive_scale: expected > 0, received {self.defensive_scale!r}")
        return self

    def fit(
        self,
        state: SMCState,
        generator: torch.Generator | None,
        init: tuple[GaussianMixture, GaussianMixture] | None = None,
    ) -> CrossFit:
        """:func:`cross_fit` to the state's weighted cloud, EM started from ``init`` if given.

        Shapes: state.z [B, K, d].
        """
        return cross_fit(
            state.z, state.log_weights, **self._asdict(), generator=generator, init=init
        )


def held_out_gain(z: Tensor, log_weights: Tensor, fit: CrossFit) -> Tensor:
    """How much better each half's mixture explains the particles it serves than one Gaussian.

    For every particle, log m(z) - log n(z), with m the mixture that serves the particle's half
    (fitted to the *other* half, :func:`cross_fit`) and n what the fit gives with a single
    component: the Gaussian with the weighted mean and covariance of that same other half,
    widened by the same defensive component. Both densities are fitted without the particle,
    so the weighted mean of these values over a half is an out-of-sample comparison of the
    mixture's extra components: 0 when the fit has one component, about 0 or below when the
    cloud is one Gaussian-like lump (measured: -0.28 to -0.03 nats on linear-Gaussian
    posteriors in 2 to 50 dimensions), several nats when it holds separated modes (up to 11 on
    eight modes in 6-d), and in between for connected curved modes (0.35 to 3.4 on the SLCP
    posteriors of ``docs/KERNELS.md``).

    Shapes: z [B, K, d], log_weights [B, K] -> [B, K].
    """
    h = fit.half
    empty = (log_weights == -math.inf).all(-1, keepdim=True)
    log_weights = torch.where(empty, torch.zeros_like(log_weights), log_weights)
    log_n = []
    for served, fitted in ((slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))):
        zf, lw = z[:, fitted], log_weights[:, fitted]
        one = GaussianMixture(
            torch.zeros_like(lw[:, :1]),
            weighted_mean(zf, lw)[:, None],
            weighted_cholesky(zf, lw)[:, None],
        )
        if fit.defensive_weight > 0:
            widened = fit.defensive_scale * one.scale_tril[:, 0]
            one = add_component(one, fit.defensive_weight, one.loc[:, 0], widened)
        log_n.append(mixture_log_prob(one, z[:, served]))
    gain = fit.apply(mixture_log_prob, z) - torch.cat(log_n, 1)
    return torch.nan_to_num(gain, nan=0.0, posinf=0.0, neginf=0.0)
