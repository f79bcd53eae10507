"""Helpers of the peer benchmarks (``peers_smc.py``, ``peers_amortized.py``).

One module per tool that runs SMC on the problems of :mod:`_peers.problems`:
:mod:`_peers.smcwake_peer` (``run_smc``), :mod:`_peers.blackjax_peer`, :mod:`_peers.particles_peer`
and :mod:`_peers.pymc_peer`. Each exposes the same three names:

* ``NAME``: the label in the tables;
* ``unavailable() -> str | None``: why the tool cannot run here (not installed, failed to
  import), or None;
* ``Runner(problem, num_particles, ess_target, **options)``: ``.warm_up(x)`` runs once on
  observations shaped like the timed ones (JIT compilation and caches; its seconds are reported
  as the compile time) and ``.run(x, seed) -> RunOutput``.

The peers other than smcwake come with the optional extra ``smcwake[peers]``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["PEER_MODULES", "RunOutput", "import_failure", "load_peer", "loop_over_observations"]

#: the modules of the tools, in the order of the tables (smcwake first: ratios are to it)
PEER_MODULES = ("smcwake_peer", "blackjax_peer", "particles_peer", "pymc_peer")


class RunOutput(NamedTuple):
    """What one timed run returns, per observation that was run.

    Shapes: log_evidence [b], mean [b, d], evals [b] for the b observations that ran
    (b < B when a slow peer ran a subset; the caller extrapolates its time).
    """

    log_evidence: np.ndarray
    mean: np.ndarray
    evals: np.ndarray
    seconds: float
    observations: int  # b, how many of the requested observations ran


def load_peer(module: str):
    """Import ``_peers.<module>`` (always importable: peer packages load lazily inside)."""
    return importlib.import_module(f"_peers.{module}")


def import_failure(*modules: str) -> str | None:
    """Why importing ``modules`` fails in this environment, or None when all import."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # any failure to import means the tool cannot run here
            return f"not installed or fails to import ({type(err).__name__}: {err})"
    return None


def loop_over_observations(
    one: Callable[[np.ndarray, int], tuple[float, np.ndarray, int]],
    x: np.ndarray,
    seed: int,
    budget: float,
) -> RunOutput:
    """Run ``one(x_b, seed_b) -> (log_evidence, mean, evals)`` for each observation in turn.

    Stops after the observation during which ``budget`` seconds were passed; the output says
    how many observations ran. Shapes: x [B, p].
    """
    log_z, means, evals = [], [], []
    start = time.perf_counter()
    for b in range(x.shape[0]):
        lz, mean, count = one(x[b], seed * 100_003 + b)
        log_z.append(lz)
        means.append(mean)
        evals.append(count)
        if time.perf_counter() - start > budget:
            break
    seconds = time.perf_counter() - start
    return RunOutput(np.array(log_z), np.stack(means), np.array(evals, float), seconds, len(log_z))
