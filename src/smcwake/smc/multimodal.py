"""Move kernels that keep every mode: mixture-based proposals fitted to the particle cloud.

Likelihood-tempered SMC starts from the prior, so its particles reach every mode; what can lose a
mode is the move step. A random walk preconditioned by the covariance of the whole cloud proposes
steps as wide as the gaps between modes, almost all of them rejected, so few particles move and
each mode's share of the cloud drifts with resampling noise. The kernels here adapt to the
cloud's modes instead, through Gaussian mixtures fitted to the weighted cloud at the start of
each call (:func:`~smcwake.smc.gmm.fit_mixture`) and held fixed during the call:

* :func:`mixture_independence` proposes from the mixture itself, independently of the current
  point, so a particle can jump between modes in one step (Chopin, 2002; South, Pettitt &
  Drovandi, 2019);
* :func:`encoder_independence` proposes from the amortized encoder q(z | x), mixed defensively
  with the cloud mixture (Hesterberg, 1995);
* :func:`local_random_walk` makes random-walk steps shaped by the covariance of the mode the
  particle is in, with the reverse proposal density in the acceptance ratio.

Each call is an exact Metropolis-Hastings kernel for pi_tau given its proposal. The proposals are
fitted *crosswise* (:func:`cross_fit`): the particles of one half of the cloud move with the
mixture fitted to the other half, so no particle's proposal depends on its own position, in the
manner of the complementary-ensemble moves of Goodman & Weare (2010). A fit to the whole cloud
would be tightest exactly where the particles sit; on a mode holding a few dozen particles this
measurably drains the mode's mass (a posterior mode of mass 0.10 fell to 0.065 after eight calls
of three steps at K = 500), and the crosswise fit removes the effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.gmm import (
    GaussianMixture,
    add_component,
    apply_component,
    fit_mixture,
    log_responsibilities,
    log_sum_exp,
    mixture_log_prob,
    sample_mixture,
    step_log_prob,
)
from smcwake.smc.mh import (
    Kernel,
    MoveInfo,
    Target,
    accept,
    log_target_ratio,
    standard_normal,
    update_where,
    weighted_cholesky,
    weighted_mean,
    whitened_sq_norm,
)
from smcwake.smc.steppers import RANDOM_WALK_INITIAL_SCALE

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = [
    "ProposalEncoder",
    "cloud_mixture",
    "CrossFit",
    "cross_fit",
    "mixture_independence",
    "encoder_independence",
    "local_random_walk",
]


class ProposalEncoder(Protocol):
    """What :func:`encoder_independence` needs: e.g. :class:`smcwake.encoders.Encoder`."""

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draws from q(z | x). Shapes: x [B, p] -> [B, n, d]."""
        ...

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z | x). Shapes: z [B, S, d], x [B, p] -> [B, S]."""
        ...


def _check_common(num_steps: int, num_components: int, em_iterations: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, received {num_steps}")
    if num_components < 1:
        raise ValueError(f"num_components: expected >= 1, received {num_components}")
    if em_iterations < 0:
        raise ValueError(f"em_iterations: expected >= 0, received {em_iterations}")


def _check_fraction(name: str, value: float, *, closed_low: bool) -> None:
    low_ok = value >= 0.0 if closed_low else value > 0.0
    if not (low_ok and value < 1.0):
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise ValueError(f"{name}: expected a fraction in {interval}, received {value!r}")


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
        first = sample_mixture(self.first, self.half, generator=generator)[0]
        second = sample_mixture(self.second, num_particles - self.half, generator=generator)[0]
        return torch.cat([first, second], 1)


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
    first = cloud_mixture(z[:, half:], log_weights[:, half:], **options)
    second = cloud_mixture(z[:, :half], log_weights[:, :half], **options)
    return CrossFit(first, second, half)


def _independence_steps(
    state: SMCState,
    target: Target,
    generator: torch.Generator | None,
    chol: Tensor,
    num_steps: int,
    draw: Callable[[], tuple[Tensor, Tensor | None]],
    log_proposal: Callable[[Tensor], Tensor],
) -> tuple[SMCState, MoveInfo]:
    """Independence Metropolis-Hastings steps with a fixed proposal density g.

    ``draw()`` returns K proposals per observation and, optionally, a mask of those drawn from a
    part of g whose acceptance rate is reported separately; ``log_proposal(z)`` returns log g(z).

    Shapes: draw() -> ([B, K, d], [B, K] bool or None), log_proposal: [B, K, d] -> [B, K].
    """
    log_g = log_proposal(state.z)  # [B, K], cached for the current particles
    accepted = torch.zeros_like(state.log_prior)
    jump = torch.zeros_like(state.log_prior)
    tagged = tagged_accepted = None
    for _ in range(num_steps):
        z_new, tag = draw()
        log_g_new = log_proposal(z_new)
        lp, ll = target.evaluate(z_new)
        log_ratio = log_target_ratio(state, lp, ll) + log_g - log_g_new
        acc = accept(log_ratio, generator)
        jump += torch.where(acc, whitened_sq_norm(z_new - state.z, chol), 0.0)
        state = update_where(state, acc, z_new, lp, ll)
        log_g = torch.where(acc, log_g_new, log_g)
        accepted += acc
        if tag is not None:
            tagged = tag.sum(-1) + (0 if tagged is None else tagged)
            tagged_accepted = (acc & tag).sum(-1) + (
                0 if tagged_accepted is None else tagged_accepted
            )
    extra = None
    if tagged is not None:
        rate = tagged_accepted.to(accepted.dtype) / tagged.clamp_min(1).to(accepted.dtype)
        extra = {"acceptance/from_encoder": rate}
    info = MoveInfo((accepted / num_steps).mean(-1), num_steps, (jump / num_steps).mean(-1), extra)
    return state, info


def mixture_independence(
    num_steps: int = 3,
    *,
    num_components: int = 16,
    em_iterations: int = 10,
    fit_points: int | None = 4096,
    defensive_weight: float = 0.05,
    defensive_scale: float = 1.5,
) -> Kernel:
    """Independence Metropolis-Hastings with a Gaussian mixture fitted to the weighted cloud.

    At the start of each call a mixture g with up to ``num_components`` components is fitted to
    each half of each observation's weighted particles (weighted EM, see
    :func:`~smcwake.smc.gmm.fit_mixture`) and widened by a defensive component (see
    :func:`cloud_mixture`); each half of the particles uses the other half's g
    (:func:`cross_fit`). Then, ``num_steps`` times, every particle proposes z' ~ g
    independently of z and accepts with probability

        min(1, pi_tau(z') g(z) / (pi_tau(z) g(z'))).

    Exactness: for a fixed g the proposal density is q(z' | z) = g(z'), so this is the
    Metropolis-Hastings ratio pi(z') q(z | z') / (pi(z) q(z' | z)); with a(z, z') the acceptance
    probability, pi(z) g(z') a(z, z') = min(pi(z) g(z'), pi(z') g(z)) is symmetric in (z, z'),
    which is detailed balance for pi_tau (Tierney, 1994). A particle's g is fitted once, before
    any particle moves, to particles other than itself, and held fixed for the whole call;
    g > 0 everywhere (Gaussian components), so the chain is irreducible on the support of pi_tau.

    Jumps between modes need no path through the low-density gaps: a proposal lands in each mode
    with about that mode's share of the cloud, and the ratio corrects the shares toward pi_tau.
    Acceptance is high where g matches pi_tau and falls with the dimension when it does not, so
    pair it with local moves (:func:`~smcwake.smc.composite.compose`). It does not read
    ``state.scale``.

    ``fit_points`` caps the particles each half-cloud's fit uses (drawn by weight), and with it
    the components (at least 20 d points each): fewer points fit faster but can leave fewer
    components than modes. On the 6-d model with 8 modes of ``benchmarks/multimodal.py``, 512
    points per fit lost up to half of a mode's mass where the default kept every mode within
    0.01.

    Shapes: state.z [B, K, d]; one likelihood evaluation per particle and step.

    References:
        Tierney (1994), Markov chains for exploring posterior distributions, Ann. Statist.
        Chopin (2002), A sequential particle filter method for static models, Biometrika.
        South, Pettitt & Drovandi (2019), Sequential Monte Carlo samplers with independent
        Markov chain Monte Carlo proposals, Bayesian Analysis.

    >>> from smcwake.smc.sampler import run_smc
    >>> from smcwake.model import Model
    >>> from torch.distributions import Independent, Normal
    >>> prior = Independent(Normal(torch.zeros(1).double(), torch.ones(1).double()), 1)
    >>> model = Model(prior, lambda z, x: Normal(z[..., 0] ** 2, 0.2).log_prob(x))
    >>> g = torch.Generator().manual_seed(0)
    >>> res = run_smc(model, torch.tensor([[4.0]]).double(), 2000,
    ...               kernel=mixture_independence(), generator=g)
    >>> positive = (res.log_weights.exp() * (res.particles[..., 0] > 0)).sum()
    >>> abs(float(positive) - 0.5) < 0.05  # two mirror modes, half the mass each
    True
    """
    _check_common(num_steps, num_components, em_iterations)
    _check_fraction("defensive_weight", defensive_weight, closed_low=True)
    if defensive_scale <= 0:
        raise ValueError(f"defensive_scale: expected > 0, received {defensive_scale!r}")

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = cross_fit(
            state.z,
            state.log_weights,
            num_components=num_components,
            em_iterations=em_iterations,
            fit_points=fit_points,
            defensive_weight=defensive_weight,
            defensive_scale=defensive_scale,
            generator=generator,
        )
        K = state.z.shape[1]
        return _independence_steps(
            state,
            target,
            generator,
            chol,
            num_steps,
            lambda: (fit.sample(K, generator), None),
            lambda z: fit.apply(mixture_log_prob, z),
        )

    return make_kernel(  # target_acceptance, initial_scale: not used (no step scale)
        move,
        target_acceptance=0.5,
        initial_scale=1.0,
        num_steps=num_steps,
        name="mixture",
        uses_scale=False,
    )


def _float_dtype(module: object, default: torch.dtype) -> torch.dtype:
    """The floating dtype of a module's parameters or buffers (``default`` if none)."""
    if isinstance(module, torch.nn.Module):
        for t in chain(module.parameters(), module.buffers()):
            if t.is_floating_point():
                return t.dtype
    return default


def encoder_independence(
    encoder: ProposalEncoder,
    num_steps: int = 3,
    *,
    encoder_weight: float = 0.5,
    num_components: int = 16,
    em_iterations: int = 10,
    fit_points: int | None = 4096,
    defensive_weight: float = 0.05,
    defensive_scale: float = 1.5,
) -> Kernel:
    """Independence Metropolis-Hastings proposing from the encoder, mixed with the cloud mixture.

    The proposal is g(z) = a q(z | x) + (1 - a) m(z), a = ``encoder_weight``, q the amortized
    encoder and m the mixture fitted to the weighted cloud (as in :func:`mixture_independence`,
    defensive component included). Every particle draws z' ~ g (from q with probability a, else
    from m) and accepts with probability min(1, pi_tau(z') g(z) / (pi_tau(z) g(z'))), with the
    density of the whole mixture g in the ratio, never that of the part z' came from.

    Exactness: q is not trained during the call (it runs in ``eval`` mode under
    ``torch.no_grad``) and m is fitted once before any particle moves, so g is a fixed density
    and the detailed-balance argument of :func:`mixture_independence` applies unchanged.
    Defensive mixing (Hesterberg, 1995) bounds the ratio where q is poor: g >= (1 - a) m, so an
    untrained encoder costs at most a share a of the proposals and never traps a particle where
    q has no mass. As q approaches p(z | x) the tempered target at tau = 1 is proposed directly.

    Args:
        encoder: has ``sample(x [B, p], n, generator=) -> [B, n, d]`` and
            ``log_prob(z [B, S, d], x [B, p]) -> [B, S]`` (e.g. :class:`smcwake.encoders.Encoder`).
        encoder_weight: a, the share of proposals drawn from the encoder.

    Shapes: state.z [B, K, d], target.x [B, p]; one likelihood evaluation per particle and step.

    References:
        Hesterberg (1995), Weighted average importance sampling and defensive mixture
        distributions, Technometrics.
        McNamara, Loper & Regier (2024), Sequential Monte Carlo for inclusive KL minimization in
        amortized variational inference, AISTATS.
    """
    _check_common(num_steps, num_components, em_iterations)
    _check_fraction("defensive_weight", defensive_weight, closed_low=True)
    if not 0.0 < encoder_weight < 1.0:
        raise ValueError(
            f"encoder_weight: expected a fraction in (0, 1) (the cloud mixture keeps the kernel "
            f"safe from a poor encoder), received {encoder_weight!r}"
        )
    for method in ("sample", "log_prob"):
        if not callable(getattr(encoder, method, None)):
            raise TypeError(
                f"encoder: expected an object with sample(x, n, generator=) and log_prob(z, x), "
                f"received {type(encoder).__name__} without {method}()"
            )
    log_a, log_1ma = math.log(encoder_weight), math.log1p(-encoder_weight)

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = cross_fit(
            state.z,
            state.log_weights,
            num_components=num_components,
            em_iterations=em_iterations,
            fit_points=fit_points,
            defensive_weight=defensive_weight,
            defensive_scale=defensive_scale,
            generator=generator,
        )
        B, K, _ = state.z.shape
        dtype = state.z.dtype
        enc_dtype = _float_dtype(encoder, dtype)
        x = target.x.to(enc_dtype)

        def draw() -> tuple[Tensor, Tensor]:
            use_q = torch.rand(B, K, generator=generator, dtype=dtype, device=state.z.device)
            use_q = use_q < encoder_weight
            z_q = encoder.sample(x, K, generator=generator).to(dtype)
            z_m = fit.sample(K, generator)
            return torch.where(use_q[..., None], z_q, z_m), use_q

        def log_proposal(z: Tensor) -> Tensor:
            log_q = encoder.log_prob(z.to(enc_dtype), x).to(dtype)
            log_q = torch.nan_to_num(log_q, nan=-math.inf, posinf=-math.inf)
            return torch.logaddexp(log_a + log_q, log_1ma + fit.apply(mixture_log_prob, z))

        was_training = getattr(encoder, "training", False)
        if isinstance(encoder, torch.nn.Module):
            encoder.eval()
        try:
            with torch.no_grad():
                return _independence_steps(
                    state, target, generator, chol, num_steps, draw, log_proposal
                )
        finally:
            if isinstance(encoder, torch.nn.Module):
                encoder.train(was_training)

    return make_kernel(  # target_acceptance, initial_scale: not used (no step scale)
        move,
        target_acceptance=0.5,
        initial_scale=1.0,
        num_steps=num_steps,
        name="encoder",
        uses_scale=False,
    )


def local_random_walk(
    num_steps: int = 5,
    *,
    num_components: int = 16,
    em_iterations: int = 10,
    fit_points: int | None = 4096,
    target_acceptance: float = 0.234,
) -> Kernel:
    """Random-walk Metropolis with the covariance of the mode each particle is in.

    A mixture sum_j pi_j N(mu_j, Sigma_j) is fitted to the weighted cloud at the start of the call
    (crosswise: each half of the particles uses the other half's fit, see :func:`cross_fit`) and
    held fixed; r_j(z) = pi_j N(z; mu_j, Sigma_j) / sum_i pi_i N(z; mu_i, Sigma_i) are its
    responsibilities. From z, draw a component j ~ r(z) and step z' = z + (s / sqrt(d)) L_j xi,
    xi ~ N(0, I), s = ``state.scale``, Sigma_j = L_j L_j^T. The proposal density is the mixture of
    random walks

        q(z' | z) = sum_j r_j(z) N(z' - z; 0, h Sigma_j),     h = s^2 / d,

    and the move is accepted with probability min(1, pi_tau(z') q(z | z') / (pi_tau(z) q(z' | z))).

    Exactness: this is the Metropolis-Hastings ratio for the proposal q, so the kernel satisfies
    detailed balance for pi_tau at fixed mixture and scale. Each N(.; 0, h Sigma_j) is symmetric,
    q(z | z') = sum_j r_j(z') N(z' - z; 0, h Sigma_j): the reverse density reuses the same
    Gaussian factors, weighted by the responsibilities at the *proposed* point. Choosing the
    covariance from the current point's component and accepting with pi_tau(z') / pi_tau(z)
    alone would not be exact, since r(z) != r(z'). The proposal is positive everywhere, so the
    chain is irreducible.

    Within a mode the steps follow that mode's shape and size rather than the span of the whole
    cloud, so acceptance stays near ``target_acceptance`` on well-separated modes. It does not
    jump between modes: pair it with :func:`mixture_independence`.

    Shapes: state.z [B, K, d]; one likelihood evaluation per particle and step.

    References:
        Hastings (1970), Monte Carlo sampling methods using Markov chains and their
        applications, Biometrika. Roberts, Gelman & Gilks (1997), Weak convergence and optimal
        scaling of random walk Metropolis algorithms, Ann. Appl. Probab.
    """
    _check_common(num_steps, num_components, em_iterations)

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = cross_fit(
            state.z,
            state.log_weights,
            num_components=num_components,
            em_iterations=em_iterations,
            fit_points=fit_points,
            generator=generator,
        )
        d = state.z.shape[-1]
        root_h = (state.scale.to(state.z.dtype) / math.sqrt(d))[:, None, None, None]
        # the step covariances h Sigma_j, h = s^2 / d: a mixture of steps N(0, h Sigma_j)
        steps = CrossFit(
            fit.first._replace(scale_tril=root_h * fit.first.scale_tril),
            fit.second._replace(scale_tril=root_h * fit.second.scale_tril),
            fit.half,
        )
        log_r = fit.apply(log_responsibilities, state.z)  # [B, K, M]
        accepted = torch.zeros_like(state.log_prior)
        jump = torch.zeros_like(state.log_prior)
        for _ in range(num_steps):
            u = torch.rand(
                log_r.shape, generator=generator, dtype=log_r.dtype, device=log_r.device
            )
            comp = torch.argmax(log_r - torch.log(-torch.log(u)), -1)  # Gumbel-max: j ~ r(z)
            xi = standard_normal(state.z, generator)
            step = steps.apply(lambda m, c, v: apply_component(m.scale_tril, c, v), comp, xi)
            z_new = state.z + step
            log_r_new = fit.apply(log_responsibilities, z_new)
            # N(step; 0, h Sigma_j) for every j: the same for the step and its reverse (-step)
            log_phi = steps.apply(lambda m, v: step_log_prob(v, m.scale_tril), step)
            log_q_ratio = log_sum_exp(log_r_new + log_phi) - log_sum_exp(log_r + log_phi)
            lp, ll = target.evaluate(z_new)
            acc = accept(log_target_ratio(state, lp, ll) + log_q_ratio, generator)
            jump += torch.where(acc, whitened_sq_norm(step, chol), 0.0)
            state = update_where(state, acc, z_new, lp, ll)
            log_r = torch.where(acc[..., None], log_r_new, log_r)
            accepted += acc
        info = MoveInfo((accepted / num_steps).mean(-1), num_steps, (jump / num_steps).mean(-1))
        return state, info

    return make_kernel(
        move,
        target_acceptance=target_acceptance,
        initial_scale=RANDOM_WALK_INITIAL_SCALE,
        num_steps=num_steps,
        name="local_rwmh",
    )
