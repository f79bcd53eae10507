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

Where the cloud shows modes, the independence moves take as many steps as it needs to move most
particles (at least ``num_steps``; more while under 95% of the particles have accepted a
proposal): each stage's reweighting shifts mass between modes, and only particles that take a
fresh draw shift it back. On curved, heavy-tailed modes, which a mixture fits less closely, two
fixed steps left the mode masses of the SLCP model 0.11 off on average (``docs/KERNELS.md``).
Whether the cloud shows modes is read from the fits themselves (:func:`held_out_gain`: does the
mixture explain the other half of the cloud better than one Gaussian?); on a single lump the
moves keep ``num_steps`` steps, which the default kernel (:func:`~smcwake.smc.auto.auto_kernel`)
relies on in many dimensions. Each kernel reports per observation how many particles its
independence steps moved, at what acceptance, in how many steps and the held-out gain
(``SMCResult.kernel_info``); :func:`check_mode_mixing` reads these and flags the observations
whose modes may not have equilibrated.

This module is the entry point and holds :func:`local_random_walk` and
:func:`check_mode_mixing`; the pieces live beside it and are importable from here too:
:mod:`smcwake.smc.proposal_mixture` (the cloud mixture, the crosswise fit, the held-out gain),
:mod:`smcwake.smc.independence` (the independence steps and their step rule) and
:mod:`smcwake.smc.encoder_proposal` (the encoder as a proposal).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.encoder_proposal import ProposalEncoder, encoder_independence
from smcwake.smc.gmm import apply_component, log_responsibilities, log_sum_exp, step_log_prob
from smcwake.smc.independence import (
    MAX_OVERSAMPLING,
    MAX_STEPS,
    MIN_MOVED,
    LogProposal,
    SampleSide,
    StepRule,
    _check_num_steps,
    mixture_independence,
)
from smcwake.smc.mh import (
    Kernel,
    MoveInfo,
    Target,
    accept,
    log_target_ratio,
    standard_normal,
    update_where,
    whitened_sq_norm,
)
from smcwake.smc.proposal_mixture import (
    MIN_GAIN,
    CrossFit,
    FitSettings,
    cloud_mixture,
    cross_fit,
    held_out_gain,
)
from smcwake.smc.steppers import RANDOM_WALK_INITIAL_SCALE

if TYPE_CHECKING:
    from smcwake.smc.base import SMCResult, SMCState

logger = logging.getLogger(__name__)

__all__ = [
    "ProposalEncoder",
    "cloud_mixture",
    "CrossFit",
    "cross_fit",
    "mixture_independence",
    "encoder_independence",
    "local_random_walk",
    "held_out_gain",
    "check_mode_mixing",
    # the step rule's defaults and types, defined in smcwake.smc.independence
    "MIN_MOVED",
    "MAX_STEPS",
    "MAX_OVERSAMPLING",
    "StepRule",
    "SampleSide",
    "LogProposal",
]


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
    _check_num_steps(num_steps)
    settings = FitSettings(num_components, em_iterations, fit_points).checked()

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = settings.fit(state, generator)
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


def check_mode_mixing(
    result: SMCResult,
    *,
    min_moved: float = 0.85,
    min_acceptance: float = 0.05,
    min_distinct: float = 0.5,
    min_gain: float = MIN_GAIN,
    warn: bool = True,
) -> Tensor:
    """Flag the observations whose modes may not have equilibrated, and log a warning.

    Mode masses cannot be checked without knowing the modes. What a run does show is whether
    its moves could have redrawn the particles' allocation to modes at every stage: each
    reweighting shifts mass between modes (by more than binomial noise when the cloud holds
    copies or lagging particles), and only moves that carry particles between modes correct
    the shift. An observation is flagged when, averaged over its stages
    (``SMCResult.kernel_info``, filled by :func:`mixture_independence` and
    :func:`encoder_independence`),

    * under ``min_moved`` of its particles accepted an independence proposal per stage
      (``"independence/moved"``): at least the rest kept their mode from before the stage;
    * its independence acceptance is under ``min_acceptance`` (``"independence/acceptance"``):
      the moved share then rests on a few lucky proposals;

    or when under ``min_distinct`` of its final particles are distinct
    (``SMCResult.distinct_fraction``, for every kernel): the masses rest on few ancestors.

    The first two apply where the clouds showed modes: where the fitted mixture explained them
    better than one Gaussian by at least ``min_gain`` nats per particle out of sample, on
    average over the stages (``"independence/gain"``, :func:`held_out_gain`). Below that the
    independence moves have no modes to balance (the default then keeps them at ``num_steps``)
    and the local steps mix the cloud; a unimodal 50-dimensional posterior, whose mixture
    proposals are rarely accepted, is not flagged for it.

    The thresholds come from 720 observations with known mode masses
    (``benchmarks/multimodal.py``'s SLCP model and its asymmetric variants at K = 1,000 and
    5,000, the squared-coordinate models and the far-apart mixture; the default kernel, two or
    six fixed independence steps per stage, with random-walk or MALA local steps). Of the 143
    observations whose largest mass error exceeded 5 binomial standard errors, the rule flags
    139 (the four missed were 5 to 6 standard errors off, three of them on the corner
    variant); of the 508 within 3 standard errors it flags 156: 134 from the fixed-step
    kernels, whose balance there was luck rather than mixing (the same kernels exceed 5
    standard errors on other observations), and 22 adaptive runs at K = 1,000, where the
    30-step cap left under 85% moved. The moved share carries the signal: a threshold on the
    number of stages (the third quantity one might watch) caught 9 of the 143 at "under 5"
    while flagging 107 good ones, since the adaptive moves refresh the cloud at every stage
    however few there are, and distinct shares stay above 0.5 in nearly every run with
    mixture moves.

    Kernels without independence moves (``"rwmh"``, ``"mala"``, ``"hmc"``) report neither
    quantity: only the distinct share is checked for them, and they do not move particles
    between separated modes at all (see docs/KERNELS.md).

    Shapes: result with B observations -> bool [B].

    >>> from smcwake.smc.sampler import run_smc
    >>> from smcwake.model import Model
    >>> from torch.distributions import Independent, Normal, Uniform
    >>> box = Independent(Uniform(-torch.ones(2).double(), torch.ones(2).double()), 1)
    >>> ring = Model(box, lambda z, x: Normal(z.square().sum(-1), 0.05).log_prob(x))
    >>> res = run_smc(ring, torch.tensor([[0.5]]).double(), 1000,
    ...               generator=torch.Generator().manual_seed(0))
    >>> bool(res.kernel_info["independence/moved"][0] > 0.85), check_mode_mixing(res).tolist()
    (True, [False])
    """
    thresholds = (min_moved, min_acceptance, min_distinct)
    for name, value in zip(
        ("min_moved", "min_acceptance", "min_distinct"), thresholds, strict=True
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a fraction in [0, 1], received {value!r}")
    info = result.kernel_info
    distinct = result.distinct_fraction
    suspect = distinct < min_distinct
    moved = info.get("independence/moved")
    acceptance = info.get("independence/acceptance")
    gain = info.get("independence/gain")
    modes = torch.ones_like(suspect) if gain is None else gain.to(distinct.dtype) >= min_gain
    if moved is not None:
        suspect = suspect | (modes & (moved.to(distinct.dtype) < min_moved))
    if acceptance is not None:
        suspect = suspect | (modes & (acceptance.to(distinct.dtype) < min_acceptance))
    if warn and bool(suspect.any()):
        _warn_unmixed(suspect, distinct, moved, acceptance, thresholds)
    return suspect


def _warn_unmixed(
    suspect: Tensor,
    distinct: Tensor,
    moved: Tensor | None,
    acceptance: Tensor | None,
    thresholds: tuple[float, float, float],
) -> None:
    """Log :func:`check_mode_mixing`'s warning, with the first flagged observation's figures.

    Shapes: suspect, distinct, moved, acceptance [B]; thresholds (moved, acceptance, distinct).
    """
    first = int(torch.nonzero(suspect)[0])
    details = f"distinct {float(distinct[first]):.2f}"
    if moved is not None and acceptance is not None:
        details = (
            f"moved by independence steps {float(moved[first]):.2f} per stage, "
            f"acceptance {float(acceptance[first]):.2f}, {details}"
        )
    logger.warning(
        "%d of %d observations: mode masses may not have equilibrated (first: observation "
        "%d, %s; flagged below %.2f moved, %.2f acceptance or %.2f distinct). Use more "
        "particles or allow more independence steps (mixture_independence(max_steps=...)); "
        "see smcwake.smc.multimodal.check_mode_mixing",
        int(suspect.sum()),
        suspect.numel(),
        first,
        details,
        *thresholds,
    )
