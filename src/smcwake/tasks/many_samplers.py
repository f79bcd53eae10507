"""Many small samplers against one big one (the paper's ablation).

The linear Gaussian model of :mod:`smcwake.tasks.linear_gaussian` with A scaled by 10 (a more
informative likelihood, so posteriors are narrow and hard for SMC) and 10 observations. The
experiment trains the same encoder with an equal budget of particles per observation spent two
ways, M = 1 SMC run with K = 10,000 particles or M = 100 runs with K = 100 each, and compares
the forward KL to the exact posterior over training. ``defaults["settings"]`` records the two.
"""

from __future__ import annotations

import torch

from smcwake.tasks import Task
from smcwake.tasks.linear_gaussian import build_linear_gaussian

__all__ = ["many_samplers"]


def many_samplers(
    *,
    d: int = 50,
    p: int = 100,
    noise: float = 1.0,
    scale: float = 10.0,
    identity_weight: float = 0.01,
    matrix_seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Task:
    """The linear Gaussian task with A scaled by 10 and the two SMC budgets to compare.

    Options as for :func:`~smcwake.tasks.linear_gaussian.linear_gaussian` (``scale`` defaults
    to 10 here).

    ``defaults``: ``num_observations`` (10), ``encoder`` (``"gaussian"``, full-rank), ``method``
    (``"smc-wake-a"``; with M = 1 every SMC-Wake estimator coincides), ``num_steps``,
    ``metric`` (``"forward_kl"``, tracked over training), ``design_matrix``, and ``settings``:
    a list of two dicts with ``label``, ``num_runs`` (M, SMC runs per observation) and
    ``num_particles`` (K per run): M = 1, K = 10,000 and M = 100, K = 100; ``runners``: the
    benchmark compares these two settings (:mod:`smcwake.bench.many_samplers`), not methods.

    Shapes: z [B, K, d], x [B, p].

    >>> task = many_samplers(d=2, p=3)
    >>> [(s["num_runs"], s["num_particles"]) for s in task.defaults["settings"]]
    [(1, 10000), (100, 100)]
    """
    return build_linear_gaussian(
        "many-samplers",
        "Many small samplers vs one big one, linear Gaussian with A scaled:",
        {
            "num_observations": 10,
            "encoder": "gaussian",
            "method": "smc-wake-a",
            "num_steps": 10_000,
            "metric": "forward_kl",
            "settings": [
                {"label": "M=1, K=10000", "num_runs": 1, "num_particles": 10_000},
                {"label": "M=100, K=100", "num_runs": 100, "num_particles": 100},
            ],
            "runners": {"bench": "smcwake.bench.many_samplers:bench_runner"},
        },
        d=d,
        p=p,
        noise=noise,
        scale=scale,
        identity_weight=identity_weight,
        matrix_seed=matrix_seed,
        dtype=dtype,
        device=device,
    )
