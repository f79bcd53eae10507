"""Independence moves that propose from the amortized encoder, mixed with the cloud mixture.

The encoder q(z | x) being trained is a proposal for the SMC moves: :func:`encoder_independence`
draws from a defensive mixture of q and the mixture fitted to the cloud, and accepts with the
independence Metropolis-Hastings ratio of :mod:`smcwake.smc.independence`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.independence import (
    MAX_OVERSAMPLING,
    MAX_STEPS,
    MIN_MOVED,
    LogProposal,
    SampleSide,
    _check_num_steps,
    _independence_steps,
    _prepared_proposal,
    _step_rule,
)
from smcwake.smc.mh import Kernel, MoveInfo, Target
from smcwake.smc.proposal_mixture import MIN_GAIN, CrossFit, FitSettings

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["ProposalEncoder", "encoder_independence"]


class ProposalEncoder(Protocol):
    """What :func:`encoder_independence` needs: e.g. :class:`smcwake.encoders.Encoder`."""

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draws from q(z | x). Shapes: x [B, p] -> [B, n, d]."""
        ...

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z | x). Shapes: z [B, S, d], x [B, p] -> [B, S]."""
        ...


def _float_dtype(module: object, default: torch.dtype) -> torch.dtype:
    """The floating dtype of a module's parameters or buffers (``default`` if none)."""
    if isinstance(module, torch.nn.Module):
        for t in chain(module.parameters(), module.buffers()):
            if t.is_floating_point():
                return t.dtype
    return default


def _check_encoder(encoder: ProposalEncoder, encoder_weight: float) -> None:
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


def _encoder_and_mixture(
    encoder: ProposalEncoder,
    encoder_weight: float,
    fit: CrossFit,
    state: SMCState,
    target: Target,
    generator: torch.Generator | None,
) -> tuple[SampleSide, LogProposal]:
    """The proposal g = a q(. | x) + (1 - a) m, m the side's cloud mixture, a = encoder_weight.

    Draws are tagged where they come from q (their acceptance is reported separately). The
    encoder runs in its own floating dtype; draws and densities come back in the state's.

    Shapes: state.z [B, K, d], target.x [B, p] -> as :data:`SampleSide`, :data:`LogProposal`.
    """
    log_a, log_1ma = math.log(encoder_weight), math.log1p(-encoder_weight)
    dtype = state.z.dtype
    enc_dtype = _float_dtype(encoder, dtype)
    x = target.x.to(enc_dtype)
    sample_mixture, log_mixture = _prepared_proposal(fit, generator)  # m, prepared once

    def sample_side(side: int, rows: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
        x_rows = x if rows is None else x[rows]
        shape = (x_rows.shape[0], n)
        use_q = torch.rand(shape, generator=generator, dtype=dtype, device=state.z.device)
        use_q = use_q < encoder_weight
        z_q = encoder.sample(x_rows, n, generator=generator).to(dtype)
        z_m, _ = sample_mixture(side, rows, n)
        return torch.where(use_q[..., None], z_q, z_m), use_q

    def log_proposal(z: Tensor, rows: Tensor | None) -> Tensor:
        x_rows = x if rows is None else x[rows]
        log_q = encoder.log_prob(z.to(enc_dtype), x_rows).to(dtype)
        log_q = torch.nan_to_num(log_q, nan=-math.inf, posinf=-math.inf)
        log_m = log_mixture(z, rows)
        return torch.logaddexp(log_a + log_q, log_1ma + log_m)

    return sample_side, log_proposal


@contextmanager
def _frozen(encoder: ProposalEncoder) -> Iterator[None]:
    """Run the block with the encoder in ``eval`` mode and without autograd, then restore it."""
    was_training = getattr(encoder, "training", False)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if isinstance(encoder, torch.nn.Module):
            encoder.train(was_training)


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
    min_moved: float = MIN_MOVED,
    max_steps: int | None = MAX_STEPS,
    max_oversampling: float = MAX_OVERSAMPLING,
    min_gain: float | None = MIN_GAIN,
) -> Kernel:
    """Independence Metropolis-Hastings proposing from the encoder, mixed with the cloud mixture.

    The proposal is g(z) = a q(z | x) + (1 - a) m(z), a = ``encoder_weight``, q the amortized
    encoder and m the mixture fitted to the weighted cloud (as in :func:`mixture_independence`,
    defensive component included). Every particle draws z' ~ g (from q with probability a, else
    from m) and accepts with probability min(1, pi_tau(z') g(z) / (pi_tau(z) g(z'))), with the
    density of the whole mixture g in the ratio, never that of the part z' came from.

    Exactness: q is not trained during the call (it runs in ``eval`` mode under
    ``torch.no_grad``) and m is fitted once before any particle moves, so g is a fixed density
    and the detailed-balance argument of :func:`mixture_independence` applies unchanged. The
    number of steps (``num_steps`` at least, more while fewer than ``min_moved`` of the
    particles have accepted, at most ``max_steps``) and the redraws of proposals outside the
    prior's support (``max_oversampling``) follow :func:`mixture_independence`.
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
    _check_num_steps(num_steps)
    settings = FitSettings(
        num_components, em_iterations, fit_points, defensive_weight, defensive_scale
    ).checked()
    _check_encoder(encoder, encoder_weight)
    rule = _step_rule(num_steps, min_moved, max_steps, max_oversampling, min_gain)

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = settings.fit(state, generator)
        proposal = _encoder_and_mixture(encoder, encoder_weight, fit, state, target, generator)
        with _frozen(encoder):
            return _independence_steps(state, target, generator, chol, rule, fit, *proposal)

    return make_kernel(move, num_steps=num_steps, name="encoder", uses_scale=False)
