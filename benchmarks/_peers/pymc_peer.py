"""PyMC: ``pm.sample_smc`` with its defaults, one observation at a time.

One PyMC model per problem, the observation a ``pm.Data`` container set before each call, so
the compiled functions come from PyTensor's cache after the warm-up. The kernel is PyMC's
default, independent Metropolis-Hastings (``IMH``) from a Gaussian fitted to the particles, with
as many steps per stage as its correlation rule asks for. ``cores=1``; PyMC's default number of
chains with one core is 2, so each observation runs 2 chains of K/2 draws (K particles in all;
log Zhat is the mean of the two chains' Zhat, the mean is over both chains' draws). Bounded
priors are sampled in PyMC's transformed (unconstrained) space. The two-moons likelihood is a
``pm.Potential``. float64.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from _peers import RunOutput, import_failure, loop_over_observations
from _peers.problems import Problem

NAME = "PyMC"
CHAINS = 2


def unavailable() -> str | None:
    return import_failure("pymc")


def settings(kernel: str | None = None) -> str:
    return (
        f"`sample_smc` (IMH kernel, its defaults), cores=1, {CHAINS} chains of K/{CHAINS}, "
        "a loop over observations, float64"
    )


class Runner:
    def __init__(self, problem: Problem, num_particles: int, ess_target: float, kernel=None):
        import pymc as pm
        import pytensor.tensor as pt
        from pymc.smc.kernels import IMH

        for name in ("pymc", "pymc.smc", "pymc.sampling", "pytensor"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.pm, self.problem = pm, problem
        self.draws = max(num_particles // CHAINS, 2)
        self.ess_target = ess_target
        runner = self
        self.evals = 0

        class CountingIMH(IMH):
            """PyMC's IMH, counting the likelihood evaluations it makes."""

            def _initialize_kernel(self):
                super()._initialize_kernel()
                runner.evals += self.draws

            def mutate(self):
                super().mutate()
                runner.evals += (self.n_steps - 1) * self.draws

        self.kernel = CountingIMH
        d = problem.d
        with pm.Model() as model:
            x = pm.Data("x", problem.x[0])
            if problem.prior == "normal":
                z = pm.Normal("z", 0.0, 1.0, shape=d)
            else:
                z = pm.Uniform("z", -1.0, 1.0, shape=d)
            if problem.kind == "linear-gaussian":
                A = problem.params["A"]
                pm.Normal("obs", mu=pt.dot(A, z), sigma=problem.params["noise"], observed=x)
            elif problem.kind == "squares":
                m = problem.params["m"]
                mean = pt.concatenate([z[:m] ** 2, z[m:]])
                pm.Normal("obs", mu=mean, sigma=problem.params["sigma"], observed=x)
            else:  # two-moons, as in smcwake.tasks.two_moons
                s = math.sqrt(0.5)
                const = -math.log(math.pi) - math.log(0.01) - 0.5 * math.log(2 * math.pi)
                u = x[0] - (0.25 - pt.abs(z[0] + z[1]) * s)
                v = x[1] - (z[1] - z[0]) * s
                inside = pt.gt(u, 0.0)
                r = pt.sqrt(pt.switch(inside, u, 1.0) ** 2 + v**2)
                value = const - 0.5 * ((r - 0.1) / 0.01) ** 2 - pt.log(r)
                pm.Potential("likelihood", pt.switch(inside, value, -np.inf))
        self.model = model

    def _one(self, x: np.ndarray, seed: int):
        """(log Zhat, posterior mean, likelihood evaluations) for one observation x [p]."""
        self.evals = 0
        pm = self.pm
        with self.model:
            pm.set_data({"x": x})
            idata = pm.sample_smc(
                draws=self.draws,
                kernel=self.kernel,
                chains=CHAINS,
                cores=1,
                threshold=self.ess_target,
                random_seed=seed,
                progressbar=False,
                compute_convergence_checks=False,
            )
        mean = idata.posterior["z"].values.reshape(-1, self.problem.d).mean(0)
        per_chain = []
        for chain in np.asarray(idata.sample_stats["log_marginal_likelihood"].values, object):
            values = np.asarray(chain, dtype=object).ravel()
            finite = [float(v) for v in np.hstack(values) if np.isfinite(float(v))]
            per_chain.append(finite[-1] if finite else math.nan)
        per_chain = np.array(per_chain)
        log_z = float(np.logaddexp.reduce(per_chain) - math.log(len(per_chain)))
        return log_z, mean, self.evals

    def warm_up(self, x: np.ndarray) -> None:
        self._one(x[0], 12345)

    def run(self, x: np.ndarray, seed: int, budget: float = float("inf")) -> RunOutput:
        """One run per observation, in turn, until ``budget`` seconds have passed."""
        return loop_over_observations(self._one, x, seed, budget)
