"""The ``oracle`` row of a benchmark: the encoder trained on exact posterior draws.

SMC-Wake fits q by forward KL on particles from SMC; its error is the SMC's error plus the
encoder's (its family, its optimizer, the finite number of steps). The oracle removes the first:
it trains the same encoder, with the same Adam learning rate, gradient clipping, number of steps
and minibatch size, on the loss

    -1/(b m) sum_i sum_j log q(z*_ij | x_i),    z*_ij ~ p(z | x_i) exactly,

whose gradient is an unbiased estimate of the forward KL's gradient, with m fresh draws per
observation and step (``particles_per_step``, the number of particles SMC-Wake scores per
observation and step; ``num_particles`` when that is None). The gap between SMC-Wake and the
oracle at the same number of steps is what the SMC costs.

The oracle needs exact posterior samples, so it runs only on tasks whose posterior is known in
closed form (``task.posterior_moments`` and ``task.reference_posterior`` both set, as on
``toy-collapse`` and ``linear-gaussian``); :func:`oracle_unavailable_reason` says why otherwise.
It makes no likelihood evaluations, so a likelihood-evaluation budget never stops it, and it does
not checkpoint: an interrupted oracle run starts again (it is the cheapest row of a benchmark).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from smcwake.encoders import Encoder
from smcwake.tasks import Task
from smcwake.train import FitResult, TrainConfig

__all__ = ["ORACLE", "fit_oracle", "oracle_trainer", "oracle_unavailable_reason"]

logger = logging.getLogger(__name__)

ORACLE = "oracle"
"""The benchmark method name of the encoder trained on exact posterior draws."""

_NOT_MADE = ("likelihood_evals", "simulations", "smc_runs", "unmixed_runs")
"""The counts of fit's history the oracle keeps at 0: it makes none of these."""


def oracle_unavailable_reason(task: Task) -> str | None:
    """Why the oracle cannot run on ``task`` (no exact posterior), or None when it can.

    >>> from smcwake.tasks import get
    >>> oracle_unavailable_reason(get("toy-collapse")) is None
    True
    >>> oracle_unavailable_reason(get("two-moons"))[:39]
    'the task has no exact posterior sampler'
    """
    if task.reference_posterior is None or task.posterior_moments is None:
        what = "a dense-grid reference" if task.reference_posterior is not None else "none"
        return (
            "the task has no exact posterior sampler (the oracle trains on exact posterior "
            f"draws; this task's reference posterior: {what})"
        )
    return None


def fit_oracle(
    task: Task,
    x: torch.Tensor,
    *,
    encoder: Encoder,
    config: TrainConfig,
    callbacks: Sequence[Callable[[int, Encoder, dict[str, Any]], Any]] | None = None,
    **_ignored: Any,
) -> FitResult:
    """Train ``encoder`` by forward KL on exact posterior draws; returns fit's result type.

    Uses from ``config`` the fields it shares with :func:`smcwake.fit`: ``steps``,
    ``batch_size``, ``lr``, ``grad_clip``, ``seed``, ``max_bad_steps`` and ``log_every``, and
    ``particles_per_step`` (else ``num_particles``) as the draws per observation and step. Its
    ``method`` is not read. The history has fit's step, loss, count and time columns
    (likelihood evaluations, simulations and SMC runs are 0), and each row goes to
    ``callbacks`` as in fit. Other keywords of fit (``run_dir``, ``resume``, ...) are accepted
    and ignored: nothing is checkpointed.

    Shapes: x [n, p]; draws z* [b, m, d] per step.

    Raises:
        ValueError: the task has no exact posterior (:func:`oracle_unavailable_reason`).
        FloatingPointError: ``max_bad_steps`` non-finite losses or gradients in a row.

    >>> from smcwake.tasks import get
    >>> from smcwake.loop import initial_encoder
    >>> task = get("toy-collapse")
    >>> _, x = task.observations(8, 0)
    >>> config = TrainConfig(encoder="gaussian", steps=3, log_every=1, progress=False)
    >>> encoder = initial_encoder(task.model, x, config, torch.Generator().manual_seed(0))
    >>> result = fit_oracle(task, x, encoder=encoder, config=config)
    >>> result.history["step"], result.history["likelihood_evals"]
    ([1, 2, 3], [0, 0, 0])
    """
    reason = oracle_unavailable_reason(task)
    if reason is not None:
        raise ValueError(f"oracle: cannot train on task {task.name!r}: {reason}")
    n = x.shape[0]
    draws = config.particles_per_step or config.num_particles
    generator = torch.Generator(device=x.device).manual_seed(config.seed)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    history: dict[str, list] = {}
    skipped, bad_in_row = 0, 0
    start = time.perf_counter()
    encoder.train()
    for step in range(1, config.steps + 1):
        idx = torch.randperm(n, generator=generator, device=x.device)[: config.batch_size]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device))
        with torch.no_grad():
            z = task.reference_posterior(x[idx], draws, seed)  # [b, m, d]
        loss = -encoder.log_prob(z, x[idx]).mean()
        if _step(loss, encoder, optimizer, config.grad_clip):
            bad_in_row = 0
        else:
            skipped, bad_in_row = skipped + 1, bad_in_row + 1
            logger.warning("oracle step %d: non-finite loss or gradient, step skipped", step)
            if bad_in_row >= config.max_bad_steps:
                raise FloatingPointError(
                    f"{bad_in_row} consecutive non-finite losses at step {step}; lower lr"
                )
        if step % config.log_every == 0 or step == config.steps:
            row = {"step": step, "loss": float(loss.detach()), **dict.fromkeys(_NOT_MADE, 0)}
            row.update(skipped_steps=skipped, wall_time=time.perf_counter() - start)
            for key, value in row.items():
                history.setdefault(key, []).append(value)
            if any(cb(step, encoder, row) for cb in callbacks or ()):
                break
    encoder.eval()
    return FitResult(encoder, history, None, config)


def _step(loss: torch.Tensor, encoder: Encoder, optimizer, clip: float | None) -> bool:
    """Backward and Adam step unless the loss or the gradient norm is not finite."""
    if not bool(torch.isfinite(loss.detach())):
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(encoder.parameters(), clip or math.inf)
    if not bool(torch.isfinite(norm)):
        return False
    optimizer.step()
    return True


def oracle_trainer(task: Task) -> Callable[..., FitResult]:
    """A function called like :func:`smcwake.fit` (``(model, x, **keywords)``) that trains the
    oracle on ``task`` (the model argument is the task's own and is not read)."""

    def train(model: Any, x: torch.Tensor, **keywords: Any) -> FitResult:
        return fit_oracle(task, x, **keywords)

    return train
