"""BlackJAX: ``adaptive_tempered_smc`` with ``inner_kernel_tuning``, vmapped over observations.

The move kernel is random-walk Metropolis (``additive_step_random_walk`` with a Gaussian step)
whose step factor is retuned after every stage from the particles, 2.38 / sqrt(d) times the
Cholesky factor of ``particles_covariance_matrix``: the tuning pattern of BlackJAX's SMC
documentation (``inner_kernel_tuning`` with ``blackjax.smc.tuning.from_particles``), with the
scaling of the other tools' random walks. ``num_mcmc_steps`` is BlackJAX's default, 10;
resampling systematic; the temperature search BlackJAX's default (dichotomy). Each observation
runs the loop ``while tempering_param < 1`` (``jax.lax.while_loop``), and the whole run is
``jax.jit(jax.vmap(...))`` over the observations of a cell: one compiled program per number of
observations, compiled before timing (``.lower().compile()``; reported as the compile time).
JAX's default float32. Where the two-moons likelihood is zero, it returns -1e30 instead of -inf,
since BlackJAX computes 0 x log-likelihood at temperature 0 (NaN for -inf).

Likelihood evaluations are counted as the algorithm is written: each stage evaluates the
log-likelihood at the current particles for the temperature search, for the weights and for the
chains' starting states (BlackJAX keeps no cache between stages), then once per MCMC step.
"""

from __future__ import annotations

import math
import time

import numpy as np

from _peers import RunOutput, import_failure
from _peers.problems import Problem

NAME = "BlackJAX"
NUM_MCMC_STEPS = 10
"""Random-walk steps per stage: BlackJAX's default (``peers_smc.py --blackjax-steps`` sets
another, to trace its time against its error)."""
MAX_STAGES = 500
ZERO_LIKELIHOOD_FLOOR = -1e30  # stands for log 0 in the two-moons likelihood (see below)


def unavailable() -> str | None:
    return import_failure("jax", "blackjax")


def settings(kernel: str | None = None) -> str:
    return (
        f"`adaptive_tempered_smc` + `inner_kernel_tuning`, random walk with the particles' "
        f"covariance, {NUM_MCMC_STEPS} steps per stage, `jit(vmap)` over observations, float32; "
        "two-moons' zero likelihood written as log-likelihood -1e30 (with -inf every run "
        "ends in NaN: BlackJAX evaluates 0 x log-likelihood at temperature 0)"
    )


def _jax_functions(problem: Problem):
    """(log_prior(z [d]), log_likelihood(z [d], x [p])) in JAX."""
    import jax.numpy as jnp

    d = problem.d
    if problem.prior == "normal":

        def log_prior(z):
            return -0.5 * jnp.sum(z**2) - 0.5 * d * math.log(2 * math.pi)
    else:

        def log_prior(z):
            return jnp.where(jnp.all(jnp.abs(z) <= 1.0), -d * math.log(2.0), -jnp.inf)

    if problem.kind == "linear-gaussian":
        A = jnp.asarray(problem.params["A"], dtype=jnp.float32)
        noise = problem.params["noise"]
        const = -problem.p * (math.log(noise) + 0.5 * math.log(2 * math.pi))

        def log_likelihood(z, x):
            return -0.5 * jnp.sum((x - A @ z) ** 2) / noise**2 + const
    elif problem.kind == "squares":
        m, sigma = problem.params["m"], problem.params["sigma"]
        const = -problem.p * (math.log(sigma) + 0.5 * math.log(2 * math.pi))

        def log_likelihood(z, x):
            mean = jnp.concatenate([z[:m] ** 2, z[m:]])
            return -0.5 * jnp.sum(((x - mean) / sigma) ** 2) + const
    else:  # two-moons, as in smcwake.tasks.two_moons
        s = math.sqrt(0.5)
        r_mean, r_sd = 0.1, 0.01
        const = -math.log(math.pi) - math.log(r_sd) - 0.5 * math.log(2 * math.pi)

        def log_likelihood(z, x):
            u = x[0] - (0.25 - jnp.abs(z[0] + z[1]) * s)
            v = x[1] - (z[1] - z[0]) * s
            inside = u > 0
            r = jnp.sqrt(jnp.where(inside, u, 1.0) ** 2 + v**2)
            value = const - 0.5 * ((r - r_mean) / r_sd) ** 2 - jnp.log(r)
            # BlackJAX's moves target prior + tau * loglik, which is NaN at tau = 0 where the
            # likelihood is zero (0 x -inf): every run ends in NaN. The usual fix on the user's
            # side is a finite floor, which gives those points zero weight all the same.
            return jnp.where(inside, value, ZERO_LIKELIHOOD_FLOOR)

    return log_prior, log_likelihood


class Runner:
    def __init__(self, problem: Problem, num_particles: int, ess_target: float, kernel=None):
        import blackjax
        import jax
        import jax.numpy as jnp
        from blackjax.mcmc import random_walk
        from blackjax.smc import resampling
        from blackjax.smc.tuning.from_particles import particles_covariance_matrix

        self.jax, self.problem, self.K = jax, problem, num_particles
        self.steps = NUM_MCMC_STEPS
        d = problem.d
        log_prior, log_likelihood = _jax_functions(problem)
        step = random_walk.build_additive_step()

        def mcmc_step(key, state, logdensity, sigma):
            return step(key, state, logdensity, random_walk.normal(sigma))

        def step_factor(z):
            cov = jnp.atleast_2d(particles_covariance_matrix(z))
            ridge = 1e-9 * jnp.trace(cov) / d + 1e-30
            return (2.38 / math.sqrt(d)) * jnp.linalg.cholesky(cov + ridge * jnp.eye(d))

        def sample_prior(key):
            if problem.prior == "normal":
                return jax.random.normal(key, (num_particles, d))
            return jax.random.uniform(key, (num_particles, d), minval=-1.0, maxval=1.0)

        def run_one(key, x):
            algorithm = blackjax.inner_kernel_tuning(
                smc_algorithm=blackjax.adaptive_tempered_smc,
                logprior_fn=log_prior,
                loglikelihood_fn=lambda z: log_likelihood(z, x),
                mcmc_step_fn=mcmc_step,
                mcmc_init_fn=random_walk.init,
                resampling_fn=resampling.systematic,
                mcmc_parameter_update_fn=lambda k, s, i: {"sigma": step_factor(s.particles)[None]},
                initial_parameter_value={"sigma": jnp.eye(d)[None]},
                num_mcmc_steps=self.steps,
                target_ess=ess_target,
            )
            key_prior, key_loop = jax.random.split(key)
            z0 = sample_prior(key_prior)
            state = algorithm.init(z0)
            state = state._replace(parameter_override={"sigma": step_factor(z0)[None]})

            def not_done(carry):
                state, _, _, stages = carry
                return (state.sampler_state.tempering_param < 1.0) & (stages < MAX_STAGES)

            def one_stage(carry):
                state, key, log_z, stages = carry
                key, sub = jax.random.split(key)
                state, info = algorithm.step(sub, state)
                return state, key, log_z + info.log_likelihood_increment, stages + 1

            carry = (state, key_loop, jnp.zeros(()), jnp.zeros((), jnp.int32))
            state, _, log_z, stages = jax.lax.while_loop(not_done, one_stage, carry)
            smc = state.sampler_state
            mean = smc.weights @ smc.particles
            done = smc.tempering_param >= 1.0
            return jnp.where(done, log_z, jnp.nan), mean, stages

        self.program = jax.jit(jax.vmap(run_one))
        self.compiled = {}

    def _keys_x(self, x: np.ndarray, seed: int):
        keys = self.jax.random.split(self.jax.random.PRNGKey(seed), x.shape[0])
        return keys, self.jax.numpy.asarray(x, dtype=self.jax.numpy.float32)

    def warm_up(self, x: np.ndarray) -> float:
        """Compile for x's number of observations; returns the compile seconds."""
        keys, xj = self._keys_x(x, 0)
        start = time.perf_counter()
        self.compiled[x.shape[0]] = self.program.lower(keys, xj).compile()
        return time.perf_counter() - start

    def run(self, x: np.ndarray, seed: int, budget: float = float("inf")) -> RunOutput:
        """Run every observation of x at once (``budget`` is for looping tools; unused)."""
        keys, xj = self._keys_x(x, seed)
        fn = self.compiled.get(x.shape[0]) or self.program
        start = time.perf_counter()
        log_z, mean, stages = self.jax.block_until_ready(fn(keys, xj))
        seconds = time.perf_counter() - start
        evals = self.K * (1 + (self.steps + 3) * np.asarray(stages, float))
        return RunOutput(
            np.asarray(log_z, float), np.asarray(mean, float), evals, seconds, x.shape[0]
        )
