"""smcwake's ``run_smc``: every observation of a cell in one batched call, with its defaults.

Only the number of particles K and the ESS target are set (to the values every tool gets);
the move kernel is ``run_smc``'s default unless ``kernel=`` is given (``--kernel`` of
``peers_smc.py``, for exploration). The model is the problem's float32 torch model.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _peers import RunOutput
from _peers.problems import Problem
from smcwake import run_smc

NAME = "smcwake"


def unavailable() -> str | None:
    return None


def settings(kernel: str | None) -> str:
    """How the tool is configured, for the table's notes."""
    k = "its default kernel" if kernel is None else f"kernel={kernel!r}"
    return f"`run_smc(model, x, K, ess_target=...)`, {k}, all observations in one call, float32"


class Runner:
    def __init__(self, problem: Problem, num_particles: int, ess_target: float, kernel=None):
        self.problem = problem
        self.kwargs = {"num_particles": num_particles, "ess_target": ess_target}
        if kernel is not None:
            self.kwargs["kernel"] = kernel

    def _call(self, x: np.ndarray, seed: int):
        xt = torch.as_tensor(x, dtype=torch.float32)
        return run_smc(self.problem.model, xt, seed=seed, **self.kwargs)

    def warm_up(self, x: np.ndarray) -> None:
        self._call(x[:1], 12345)

    def run(self, x: np.ndarray, seed: int, budget: float = float("inf")) -> RunOutput:
        """Run every observation of x at once (``budget`` is for looping tools; unused)."""
        start = time.perf_counter()
        result = self._call(x, seed)
        seconds = time.perf_counter() - start
        w = result.log_weights.double().exp()  # normalized
        mean = (w[..., None] * result.particles.double()).sum(1)
        log_z = result.log_evidence.double().numpy().copy()
        log_z[~result.converged.numpy()] = np.nan  # a run that did not reach tau = 1 failed
        return RunOutput(
            log_z,
            mean.numpy(),
            result.num_likelihood_evals.numpy().astype(float),
            seconds,
            x.shape[0],
        )
