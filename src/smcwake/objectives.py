"""Training objectives: SMC-Wake's estimators and the baselines, one function each.

Every objective has the same signature::

    loss, evals = objective(encoder, batch, ctx)

``batch`` holds the minibatch's dataset indices and observations; ``ctx`` the model, the particle
bank or chain state the method keeps, the number of proposals and the random generator. The loss
is a scalar whose gradient with respect to the encoder's parameters is the method's gradient
estimate; ``evals`` is the number of likelihood evaluations (points z) the objective made.
Every objective first checks its batch (finite observations ``x [b, p]``, one integer index per
row, enough proposals) and raises ``ValueError`` or ``TypeError`` otherwise. The loss is never
NaN from the objective itself: it is finite, or ``+inf`` where the bound is ``-inf`` (every draw
has zero density), which :func:`~smcwake.fit` counts as a skipped step.

- ``smc-wake-a``, ``smc-wake-b``, ``smc-wake-c``, ``smc-wake-naive``, ``smc-wake-pimh``:
  -sum_s w_s log q(z_s | x) over the bank's weighted particles (see :mod:`smcwake.bank`). The
  encoder never proposes: particles come from likelihood-tempered SMC started at the prior.
- ``wake`` (reweighted wake-sleep, wake-phi): K proposals z_k ~ q(z | x) (no gradient through the
  draw), self-normalized weights w_k ∝ p(z_k) p(x | z_k) / q(z_k | x) per observation.
- ``defensive-wake``: half the proposals from the prior, weights against the mixture
  (p(z) + q(z | x)) / 2.
- ``sleep`` (neural posterior estimation): -log q(z | x) on simulations (z, x) ~ p(z) p(x | z).
- ``elbo``: reverse KL, reparameterized: -E_q[log p(z) + log p(x | z) - log q(z | x)].
- ``iwae``: the importance-weighted bound -E[log (1/K) sum_k p(z_k, x) / q(z_k | x)].
- ``msc``: Markovian score climbing (Naesseth, Lindsten & Blei, 2020) with the conditional
  importance sampling kernel: one chain state per observation; each step draws K - 1 proposals
  from q, keeps the current state as the K-th, samples a new state by the importance weights, and
  steps on -log q(new state | x).

:func:`get_objective` returns a method's objective by name; :data:`METHOD_NAMES` lists the names.
A :class:`Method` pairs an objective with what :func:`~smcwake.fit` must keep for it (a particle
bank refreshed by SMC, one chain state per observation, simulations to count); fit reads only
that declaration, so a new method is one objective function and one line in the registry (or a
call to :func:`register_method`).

References:
    McNamara, Loper & Regier (2024), Sequential Monte Carlo for Inclusive KL Minimization in
    Amortized Variational Inference, AISTATS. Bornschein & Bengio (2015), Reweighted Wake-Sleep.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from smcwake._ops import log_mean_exp
from smcwake.bank import ParticleBank
from smcwake.model import Model
from smcwake.smc.resampling import multinomial

__all__ = [
    "Batch",
    "Context",
    "Objective",
    "METHOD_NAMES",
    "SMC_WAKE_METHODS",
    "Method",
    "get_method",
    "get_objective",
    "register_method",
    "smc_wake",
    "wake",
    "defensive_wake",
    "sleep",
    "elbo",
    "iwae",
    "msc",
]


class Batch(NamedTuple):
    """A minibatch: dataset indices and observations."""

    idx: Tensor  # [b]
    x: Tensor  # [b, p]


class Context(NamedTuple):
    """What an objective may use besides the encoder and the batch."""

    model: Model
    num_particles: int  # proposals per observation for the importance-sampling methods
    generator: torch.Generator | None = None
    bank: ParticleBank | None = None  # SMC-Wake methods
    chains: Tensor | None = None  # [n, d] MSC chain states, updated in place
    runs_per_step: int | None = None  # estimator (a): runs drawn per step (None = all)
    particles_per_step: int | None = None  # SMC-Wake: particles drawn per observation


Objective = Callable[[torch.nn.Module, Batch, Context], tuple[Tensor, int]]


_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_batch(batch: Batch, ctx: Context, *, min_particles: int = 1) -> None:
    """Validate a minibatch and the proposal count before any work (user-facing boundary).

    Shapes: batch.idx [b] integer, batch.x [b, p] finite floating point.
    """
    ctx.model.check_x(batch.x)
    idx = batch.idx
    if not isinstance(idx, Tensor) or idx.dim() != 1 or idx.dtype not in _INDEX_DTYPES:
        got = f"{idx.dtype} {list(idx.shape)}" if isinstance(idx, Tensor) else type(idx).__name__
        raise TypeError(
            f"batch.idx: expected a 1-D integer tensor of dataset indices, received {got}"
        )
    if idx.shape[0] != batch.x.shape[0]:
        raise ValueError(
            f"batch: expected one index per observation, received idx [{idx.shape[0]}] for "
            f"x {list(batch.x.shape)}"
        )
    count = ctx.num_particles
    if not isinstance(count, int) or isinstance(count, bool) or count < min_particles:
        raise ValueError(
            f"num_particles: expected an integer >= {min_particles}, received {count!r}"
        )


def _weighted_score_loss(encoder, z: Tensor, weights: Tensor, x: Tensor) -> Tensor:
    """-mean_b sum_s w_bs log q(z_bs | x_b), skipping zero-weight particles' values."""
    log_q = encoder.log_prob(z, x)
    contrib = torch.where(weights > 0, weights * log_q, 0.0)
    return -contrib.sum(-1).mean()


def smc_wake(estimator: str) -> Objective:
    """SMC-Wake with estimator ``estimator`` in "a", "b", "c", "naive", "pimh"."""

    def objective(encoder, batch: Batch, ctx: Context) -> tuple[Tensor, int]:
        _check_batch(batch, ctx)
        if ctx.bank is None:
            raise ValueError(f"smc-wake-{estimator} needs a ParticleBank in the context")
        view = ctx.bank.view(
            batch.idx,
            estimator=estimator,
            runs_per_step=ctx.runs_per_step,
            num_samples=ctx.particles_per_step,
            generator=ctx.generator,
        )
        return _weighted_score_loss(encoder, view.z, view.weights, batch.x), 0

    objective.__name__ = f"smc_wake_{estimator}"
    objective.__doc__ = f"SMC-Wake, estimator ({estimator}): weighted score of banked particles."
    return objective


def _self_normalized(log_w: Tensor) -> Tensor:
    """Per-row normalized weights; rows with no finite weight get zeros."""
    w = torch.softmax(log_w, dim=-1)
    return torch.nan_to_num(w, nan=0.0)


def wake(encoder, batch: Batch, ctx: Context) -> tuple[Tensor, int]:
    """RWS wake-phi: self-normalized importance weights with q as its own proposal."""
    _check_batch(batch, ctx)
    K = ctx.num_particles
    with torch.no_grad():
        z = encoder.sample(batch.x, K, generator=ctx.generator)
        log_w = ctx.model.log_joint(z, batch.x, batch.idx) - encoder.log_prob(z, batch.x)
        w = _self_normalized(log_w)
    return _weighted_score_loss(encoder, z, w, batch.x), z.shape[0] * K


def defensive_wake(encoder, batch: Batch, ctx: Context) -> tuple[Tensor, int]:
    """Wake with half the proposals from the prior, weighted against the mixture density."""
    _check_batch(batch, ctx, min_particles=2)
    K = ctx.num_particles
    half = K // 2
    with torch.no_grad():
        z_q = encoder.sample(batch.x, K - half, generator=ctx.generator)
        z_p = ctx.model.sample_prior(
            (batch.x.shape[0], half), generator=ctx.generator, dtype=z_q.dtype, device=z_q.device
        )
        z = torch.cat([z_q, z_p], dim=1)
        log_mix = torch.logaddexp(ctx.model.log_prior(z), encoder.log_prob(z, batch.x)) - math.log(
            2
        )
        log_w = ctx.model.log_joint(z, batch.x, batch.idx) - log_mix
        w = _self_normalized(log_w)
    return _weighted_score_loss(encoder, z, w, batch.x), z.shape[0] * K


def sleep(encoder, batch: Batch, ctx: Context) -> tuple[Tensor, int]:
    """NPE: maximum likelihood of q on simulated pairs (z, x) ~ p(z) p(x | z).

    Draws ``num_particles`` simulations per observation of the batch (the batch's x are not
    used beyond their count and dtype). Counts simulations, not likelihood evaluations (0).
    """
    _check_batch(batch, ctx)
    n = batch.x.shape[0]
    with torch.no_grad():
        z = ctx.model.sample_prior(
            (n * ctx.num_particles,),
            generator=ctx.generator,
            dtype=batch.x.dtype,
            device=batch.x.device,
        )
        x_sim = ctx.model.simulate(z, generator=ctx.generator).to(batch.x.dtype)
    return -encoder.log_prob(z[:, None, :], x_sim).mean(), 0


def elbo(encoder, batch: Batch, ctx: Context) -> tuple[Tensor, int]:
    """Negative evidence lower bound with reparameterized samples (needs a differentiable model).

    Where q puts mass outside the prior's support the bound is -inf; those draws are dropped from
    the average (counted in the logs by the trainer as non-finite losses when all are).
    """
    _check_batch(batch, ctx)
    K = ctx.num_particles
    z, log_q = encoder.rsample_and_log_prob(batch.x, K, generator=ctx.generator)
    log_joint = ctx.model.log_joint(z, batch.x, batch.idx)
    bound = log_joint - log_q
    finite = torch.isfinite(bound)
    loss = -torch.where(finite, bound, 0.0).sum() / finite.sum().clamp_min(1)
    # no finite draw at all: the bound is -inf, so the loss is +inf (the trainer skips the step)
    loss = torch.where(finite.any(), loss, math.inf)
    return loss, z.shape[0] * K


def iwae(encoder, batch: Batch, ctx: Context) -> tuple[Tensor, int]:
    """Negative importance-weighted bound, log (1/K) sum_k p(z_k, x) / q(z_k | x), reparameterized.

    Shapes: batch.x [b, p]; K = ctx.num_particles draws per observation.
    """
    _check_batch(batch, ctx)
    K = ctx.num_particles
    z, log_q = encoder.rsample_and_log_prob(batch.x, K, generator=ctx.generator)
    log_w = ctx.model.log_joint(z, batch.x, batch.idx) - log_q
    return -log_mean_exp(log_w).mean(), z.shape[0] * K


def msc(encoder, batch: Batch, ctx: Context) -> tuple[Tensor, int]:
    """Markovian score climbing with the conditional importance sampling kernel."""
    _check_batch(batch, ctx, min_particles=2)
    if ctx.chains is None:
        raise ValueError("msc needs chain states (Context.chains, [n, d])")
    K = ctx.num_particles
    with torch.no_grad():
        current = ctx.chains[batch.idx].to(batch.x.dtype)  # [b, d]
        proposals = encoder.sample(batch.x, K - 1, generator=ctx.generator)
        z = torch.cat([proposals, current[:, None, :]], dim=1)  # [b, K, d]
        log_w = ctx.model.log_joint(z, batch.x, batch.idx) - encoder.log_prob(z, batch.x)
        # rows where every weight is -inf keep the current state (last slot)
        dead = ~torch.isfinite(log_w).any(-1, keepdim=True)
        last = torch.zeros_like(log_w).fill_(-math.inf)
        last[:, -1] = 0.0
        log_w = torch.where(dead, last, log_w)
        pick = multinomial(log_w, 1, generator=ctx.generator)[:, 0]
        new = z[torch.arange(z.shape[0], device=z.device), pick]
        ctx.chains[batch.idx] = new.to(ctx.chains.dtype)
    return -encoder.log_prob(new[:, None, :], batch.x).mean(), z.shape[0] * (K - 1)


SMC_WAKE_METHODS = {
    "smc-wake-a": "a",
    "smc-wake-b": "b",
    "smc-wake-c": "c",
    "smc-wake-naive": "naive",
    "smc-wake-pimh": "pimh",
}


@dataclass(frozen=True)
class Method:
    """A training method: its objective and what :func:`~smcwake.fit` keeps and counts for it.

    Attributes:
        objective: ``loss, evals = objective(encoder, batch, ctx)``.
        estimator: for an SMC-Wake method, the :class:`~smcwake.bank.ParticleBank` estimator
            ("a", "b", "c", "naive", "pimh"): fit runs SMC for every observation first, then
            refreshes, and passes the bank as ``ctx.bank``. None: no bank, no SMC.
        chains: fit keeps one state per observation, started at prior draws and checkpointed,
            and passes it as ``ctx.chains`` ([n, d]; the objective updates it in place).
        simulates: the objective draws ``ctx.num_particles`` simulations per observation of
            the batch, which fit counts in the history's ``simulations`` column.
    """

    objective: Objective
    estimator: str | None = None
    chains: bool = False
    simulates: bool = False


_METHODS: dict[str, Method] = {
    **{name: Method(smc_wake(est), estimator=est) for name, est in SMC_WAKE_METHODS.items()},
    "wake": Method(wake),
    "defensive-wake": Method(defensive_wake),
    "sleep": Method(sleep, simulates=True),
    "elbo": Method(elbo),
    "iwae": Method(iwae),
    "msc": Method(msc, chains=True),
}

METHOD_NAMES = tuple(_METHODS)
"""The built-in names :func:`get_objective` (and ``fit(method=...)``) accept."""


def get_method(method: str) -> Method:
    """The registered :class:`Method` of a name; unknown names raise ValueError listing the
    valid ones.

    >>> get_method("msc").chains, get_method("smc-wake-b").estimator
    (True, 'b')
    """
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"method: unknown {method!r}; expected one of {sorted(_METHODS)}")
    return _METHODS[method]


def get_objective(method: str) -> Objective:
    """The objective for a method name; unknown names raise ValueError listing the valid ones.

    >>> get_objective("wake").__name__
    'wake'
    """
    return get_method(method).objective


def register_method(
    name: str,
    objective: Objective,
    *,
    estimator: str | None = None,
    chains: bool = False,
    simulates: bool = False,
) -> Method:
    """Make ``fit(method=name)`` train with ``objective`` (see :class:`Method` for the rest).

    A built-in or already registered name is refused (``ValueError``).

    >>> def mean_log_q(encoder, batch, ctx):
    ...     z = encoder.sample(batch.x, ctx.num_particles, generator=ctx.generator)
    ...     return -encoder.log_prob(z, batch.x).mean(), 0
    >>> register_method("wake", mean_log_q)
    Traceback (most recent call last):
    ...
    ValueError: method: 'wake' is already registered; choose another name
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, received {name!r}")
    if name in _METHODS:
        raise ValueError(f"method: {name!r} is already registered; choose another name")
    if not callable(objective):
        raise TypeError(
            "objective: expected a callable objective(encoder, batch, ctx) -> (loss, evals), "
            f"received {type(objective).__name__}"
        )
    estimators = sorted(set(SMC_WAKE_METHODS.values()))
    if estimator is not None and estimator not in estimators:
        raise ValueError(
            f"estimator: expected None or one of {estimators}, received {estimator!r}"
        )
    method = Method(objective, estimator=estimator, chains=chains, simulates=simulates)
    _METHODS[name] = method
    return method


def _deprecated_registry() -> dict[str, Objective]:
    """The registry behind the deprecated name ``OBJECTIVES``, with its FutureWarning.

    Called from a module's ``__getattr__``: the warning points at the line that used the name.
    """
    warnings.warn(
        "OBJECTIVES is deprecated since smcwake 0.1.0 and will be removed in 0.2.0: use "
        "get_objective(method) for an objective and METHOD_NAMES for the names",
        FutureWarning,
        stacklevel=3,
    )
    return {name: method.objective for name, method in _METHODS.items()}


def __getattr__(name: str) -> Any:
    if name == "OBJECTIVES":
        return _deprecated_registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
