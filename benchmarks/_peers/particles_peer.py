"""particles (N. Chopin's library): ``AdaptiveTempering``, one run per observation.

Its defaults: waste-free SMC (``wastefree=True``, ``len_chain=10``) with the adaptive random-walk
Metropolis kernel (``ArrayRandomWalk``: proposal covariance 2.38^2 / d times the particles'
covariance). K particles in total means ``N = K / len_chain`` resampled particles, each the start
of a chain of ``len_chain`` states. The ESS target is ``ESSrmin``. NumPy float64; randomness from
NumPy's global generator, seeded per observation.
"""

from __future__ import annotations

import numpy as np

from _peers import RunOutput, import_failure, loop_over_observations
from _peers.numpy_models import log_likelihood
from _peers.problems import Problem

NAME = "particles"
LEN_CHAIN = 10
STANDARD_STEPS: int | None = None
"""None: particles' default, waste-free SMC with N = K / LEN_CHAIN chains of LEN_CHAIN states.
An integer S: standard SMC instead (``wastefree=False``), N = K particles each moved by S
random-walk steps per stage (``len_chain = S + 1``), BlackJAX's scheme: to trace particles'
time against its error (``peers_smc.py --particles-steps``), not for the table."""
# Stands for log 0 in the two-moons likelihood. particles searches the next temperature with
# brentq on [1e-12, 1 - current]; at 1e-12 a log-likelihood of -inf already gives a point zero
# weight, so when fewer than the ESS target of the prior draws have a nonzero likelihood (most
# of them do not on two-moons) the search has no sign change and the run stops. A floor with
# 1e-12 x floor near 0 keeps the search bracketed, and exp(floor) is 0 in float64, so the
# target, log Z and the posterior are unchanged.
ZERO_LIKELIHOOD_FLOOR = -1e6


def _restore_numpy_aliases() -> None:
    """Give NumPy >= 1.24 back the aliases ``np.float``, ``np.int``, ``np.bool`` particles uses.

    particles 0.4 requires NumPy < 2, which JAX and PyMC no longer run on, so the ``peers``
    extra installs particles 0.3; its waste-free moves call ``theta.view(np.float)``. The names
    are restored as the builtins they stood for, for this benchmark process only.
    """
    for alias, builtin in (("float", float), ("int", int), ("bool", bool)):
        if alias not in np.__dict__:
            setattr(np, alias, builtin)


def unavailable() -> str | None:
    _restore_numpy_aliases()
    return import_failure("particles")


def settings(kernel: str | None = None) -> str:
    scheme = (
        f"waste-free, N = K/{LEN_CHAIN} x len_chain {LEN_CHAIN}"
        if STANDARD_STEPS is None
        else f"standard (not waste-free), N = K, {STANDARD_STEPS} steps per stage"
    )
    return (
        f"`AdaptiveTempering` ({scheme}, "
        "adaptive random walk), a loop over observations, NumPy float64; two-moons' zero "
        f"likelihood written as log-likelihood {ZERO_LIKELIHOOD_FLOOR:g} (with -inf its "
        "temperature search finds no bracket and the run stops)"
    )


class Runner:
    def __init__(self, problem: Problem, num_particles: int, ess_target: float, kernel=None):
        _restore_numpy_aliases()
        import particles
        from particles import distributions as dists
        from particles import smc_samplers as ssp

        self.particles, self.ssp = particles, ssp
        self.problem = problem
        self.steps = STANDARD_STEPS
        self.N = num_particles if self.steps else max(num_particles // LEN_CHAIN, 2)
        self.ess_target = ess_target
        d = problem.d
        if problem.prior == "normal":
            law = dists.MvNormal(loc=np.zeros(d), cov=np.eye(d))
        else:
            law = dists.IndepProd(*[dists.Uniform(-1.0, 1.0) for _ in range(d)])
        self.prior = dists.StructDist({"z": law})
        exact = log_likelihood(problem)

        def loglik(z, x):
            return np.maximum(exact(z, x), ZERO_LIKELIHOOD_FLOOR)

        self.count = 0
        runner = self

        class Static(ssp.StaticModel):
            def logpyt(self, theta, t):
                runner.count += theta.shape[0]
                return loglik(theta["z"], self.data[t])

        self.model_class = Static

    def _one(self, x: np.ndarray, seed: int):
        """(log Zhat, weighted mean, likelihood evaluations) for one observation x [p]."""
        self.count = 0
        np.random.seed(seed)
        model = self.model_class(data=x[None, :], prior=self.prior)
        fk = self.ssp.AdaptiveTempering(
            model=model,
            wastefree=not self.steps,  # particles' default: waste-free
            len_chain=self.steps + 1 if self.steps else LEN_CHAIN,
            ESSrmin=self.ess_target,
        )
        alg = self.particles.SMC(fk=fk, N=self.N, ESSrmin=self.ess_target, verbose=False)
        alg.run()
        mean = np.average(alg.X.theta["z"], weights=alg.W, axis=0)
        return float(alg.logLt), mean, self.count

    def warm_up(self, x: np.ndarray) -> None:
        self._one(x[0], 12345)

    def run(self, x: np.ndarray, seed: int, budget: float = float("inf")) -> RunOutput:
        """One run per observation, in turn, until ``budget`` seconds have passed."""
        return loop_over_observations(self._one, x, seed, budget)
