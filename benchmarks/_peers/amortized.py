"""Training SMC-Wake and sbi's NPE against the clock, and scoring both the same way.

Both are scored by :func:`smcwake.bench.evaluate.evaluate` (C2ST, forward KL, expected-coverage
error): the sbi posterior is wrapped so it answers the same two calls as an smcwake encoder,
``sample(x, n)`` and ``log_prob(z, x)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import constraints

from _peers import import_failure
from smcwake import fit
from smcwake._rng import forked_rng
from smcwake.bench.evaluate import EvalOptions, Reference, evaluate
from smcwake.tasks import Task

__all__ = ["SbiPosterior", "sbi_unavailable", "score", "train_npe", "train_smc_wake"]

#: the metrics the tables report, from :func:`evaluate`
METRICS = ("c2st", "forward_kl", "coverage_error")


def sbi_unavailable() -> str | None:
    """Why sbi cannot run here, or None."""
    return import_failure("sbi.inference")


class SbiPosterior:
    """An sbi ``DirectPosterior`` seen as an smcwake encoder (``sample`` and ``log_prob``).

    Uses sbi's defaults: samples are rejected outside the prior's support and log densities
    are renormalized for the mass that leaks out of it (where there is a boundary to leak out
    of: for a prior whose support is all of R^d the factor is 1 and is not estimated).
    """

    def __init__(self, posterior, prior) -> None:
        self.posterior = posterior
        support = prior.support
        # leakage out of a prior with full support is zero: skip sbi's costly estimate of it
        self.norm_posterior = getattr(support, "base_constraint", support) is not constraints.real

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Shapes: x [B, p] -> [B, n, d]."""
        with forked_rng(generator):
            z = self.posterior.sample_batched((n,), x=x, show_progress_bars=False)
        return z.movedim(0, 1)

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """Shapes: z [B, S, d], x [B, p] -> [B, S]."""
        log_p = self.posterior.log_prob_batched(
            z.movedim(1, 0), x, norm_posterior=self.norm_posterior
        )
        return log_p.movedim(0, 1)


class _NoTracking:
    """An sbi tracker that records nothing (the default writes TensorBoard files to ./sbi-logs)."""

    log_dir = None

    def log_metric(self, name, value, step=None) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_params(self, params) -> None:
        pass

    def add_figure(self, name, figure, step=None) -> None:
        pass

    def flush(self) -> None:
        pass


def train_npe(task: Task, num_simulations: int, seed: int) -> tuple[SbiPosterior, float]:
    """sbi's NPE with its defaults on prior simulations; returns (posterior, CPU seconds).

    The seconds are the process's CPU time (one thread: the wall time on an otherwise idle
    core, whatever else the machine runs), simulating included (the model's simulator,
    batched). Training metrics are not logged to disk.
    """
    from sbi.inference import NPE

    start = time.process_time()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theta = task.model.prior.sample((num_simulations,))
        x = task.model.simulate(theta)
        inference = NPE(prior=task.model.prior, show_progress_bars=False, tracker=_NoTracking())
        inference.append_simulations(theta, x).train()
        posterior = inference.build_posterior()
    return SbiPosterior(posterior, task.model.prior), time.process_time() - start


def score(task: Task, encoder, z_true: Tensor, x: Tensor, reference: Reference, options) -> dict:
    """The reported metrics of one encoder on (z_true, x)."""
    metrics, _ = evaluate(task, encoder, z_true, x, options=options, reference=reference)
    return {k: metrics.get(k, math.nan) for k in METRICS}


def train_smc_wake(
    model,
    x: Tensor,
    marks_minutes: Sequence[float],
    on_mark: Callable[[object, float, int, int], None],
    **fit_options,
) -> dict:
    """``fit(model, x)`` with its defaults, calling ``on_mark(encoder, minutes, evals, step)``
    each time its training time passes a mark; stops after the last mark.

    Training time is the process's CPU time (as for NPE), without the time spent in
    ``on_mark`` (scoring). ``fit_options`` are for
    tests only. Returns the run's summary: steps, minutes trained, evaluations.
    """
    marks = sorted(marks_minutes)
    pending = list(marks)
    spent_scoring = 0.0
    start = time.process_time()
    state = {"step": 0, "evals": 0}

    def callback(step: int, encoder, row: dict) -> bool:
        nonlocal spent_scoring
        trained = (time.process_time() - start - spent_scoring) / 60
        state.update(step=step, evals=int(row["likelihood_evals"]), minutes=trained)
        while pending and trained >= pending[0]:
            pending.pop(0)
            t0 = time.process_time()
            was_training = encoder.training
            encoder.eval()
            on_mark(encoder, trained, state["evals"], step)
            encoder.train(was_training)
            spent_scoring += time.process_time() - t0
        return not pending

    out = fit(model, x, callbacks=[callback], progress=False, **fit_options)
    if pending:  # fit's default number of steps ended before the last mark
        trained = (time.process_time() - start - spent_scoring) / 60
        out.encoder.eval()
        on_mark(out.encoder, trained, int(out.history["likelihood_evals"][-1]), state["step"])
        state["finished_early"] = True
    state["steps_done"] = out.history["step"][-1] if out.history["step"] else 0
    return state


def default_eval_options() -> EvalOptions:
    """Scoring settings: C2ST on 5 observations (1,000 draws each); everything else default."""
    return EvalOptions(c2st_observations=5, curve_observations=5)
