"""The problems' likelihoods in NumPy (float64), for the peers that evaluate NumPy arrays.

Shapes: z [N, d], x [p] -> [N].
"""

from __future__ import annotations

import math

import numpy as np

from _peers.problems import Problem

__all__ = ["log_likelihood"]

_R_MEAN, _R_SD = 0.1, 0.01  # the two-moons radius (smcwake.tasks.two_moons)
_MOONS_CONST = -math.log(math.pi) - math.log(_R_SD) - 0.5 * math.log(2 * math.pi)


def log_likelihood(problem: Problem):
    """``f(z [N, d], x [p]) -> [N]``, the problem's log-likelihood in NumPy."""
    if problem.kind == "linear-gaussian":
        A, noise = problem.params["A"], problem.params["noise"]
        const = -problem.p * (math.log(noise) + 0.5 * math.log(2 * math.pi))

        def linear(z, x):
            return -0.5 * ((x - z @ A.T) ** 2).sum(-1) / noise**2 + const

        return linear
    if problem.kind == "squares":
        m, sigma = problem.params["m"], problem.params["sigma"]
        const = -problem.p * (math.log(sigma) + 0.5 * math.log(2 * math.pi))

        def squares(z, x):
            mean = np.concatenate([z[:, :m] ** 2, z[:, m:]], -1)
            return -0.5 * (((x - mean) / sigma) ** 2).sum(-1) + const

        return squares
    if problem.kind == "two-moons":

        def moons(z, x):
            s = math.sqrt(0.5)
            u = x[0] - (0.25 - np.abs(z[:, 0] + z[:, 1]) * s)
            v = x[1] - (z[:, 1] - z[:, 0]) * s
            inside = u > 0
            r = np.sqrt(np.where(inside, u, 1.0) ** 2 + v**2)
            value = _MOONS_CONST - 0.5 * ((r - _R_MEAN) / _R_SD) ** 2 - np.log(r)
            return np.where(inside, value, -np.inf)

        return moons
    raise ValueError(f"unknown problem kind {problem.kind!r}")
