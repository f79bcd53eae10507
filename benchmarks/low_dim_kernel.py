"""Langevin or random-walk local steps in the default kernel, in 1 to 8 dimensions.

The default kernel (``smcwake.smc.auto.auto_kernel``) makes mixture jumps, then local steps until
the particles have decorrelated; the local step is MALA when the likelihood has gradients and a
random walk when it does not. A random-walk step costs no backward pass but moves less, so in
few dimensions it may win per second. This runs both variants of the default
(``auto_kernel().choose(True)`` and ``choose(False)``) on models with exact answers that the
kernel was not tuned on, and reports per model and variant:

* |Δ log Z|: mean over observations of |log Zhat - log p(x)|;
* mean err: root mean square over coordinates of (weighted mean - exact mean) / posterior sd,
  averaged over observations;
* evals: likelihood evaluations per observation (a gradient evaluation counts as one);
* seconds: median wall time of one batched ``run_smc`` call over the seeds, the two variants
  timed in alternation (one torch thread; ratios within a row are what carries over);
* the random walk's time and evaluations over MALA's.

Models (float64, B observations drawn from the prior predictive, K particles):

* linear-gaussian-{2,5,8}d: ``smcwake.tasks.linear_gaussian`` (p = 2 d), closed form;
* gamma-poisson-2d: two Gamma(2, 0.5) rates, ten Poisson counts each (as in docs/TUTORIAL.md),
  conjugate;
* beta-binomial-3d: three Beta(2, 3) probabilities, one Binomial(20, z_j) count each,
  conjugate;
* banana-2d: z ~ N(0, I), x ~ N(z_2 - z_1^2, 0.2^2) (a thin curved ridge), 1024^2 grid;
* logistic-3d: z ~ N(0, I), 30 Bernoulli outcomes with fixed Gaussian covariates, 128^3 grid;
* beta-binomial-1d: as the 3-d one, one coordinate; linear-gaussian-10d;
* two-moons and squares-5d: the peers' problems of ``benchmarks/peers_smc.py`` (float32).

    python benchmarks/low_dim_kernel.py        # about 3 minutes; writes its section of
                                               # docs/KERNELS.md
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import parser, write_section  # noqa: E402
from _peers.problems import build_problem  # noqa: E402
from torch.distributions import Beta, Binomial, Gamma, Independent, Normal, Poisson  # noqa: E402

from smcwake import Model, run_smc  # noqa: E402
from smcwake.smc.auto import auto_kernel  # noqa: E402
from smcwake.tasks.linear_gaussian import linear_gaussian  # noqa: E402

KERNELS_DOC = Path(__file__).resolve().parents[1] / "docs" / "KERNELS.md"
SECTION = "kernels-low-dimension"
DT = torch.float64


class Problem(NamedTuple):
    name: str
    model: Model
    x: torch.Tensor  # [B, p]
    log_z: torch.Tensor  # [B]
    mean: torch.Tensor  # [B, d]
    sd: torch.Tensor  # [B, d]


def _linear_gaussian(d: int, B: int) -> Problem:
    task = linear_gaussian(d=d, p=2 * d, dtype=DT)
    _, x = task.observations(B, seed=1)
    mean, cov = task.posterior_moments(x)
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    return Problem(f"linear-gaussian-{d}d", task.model, x, task.log_evidence(x), mean, sd)


def _gamma_poisson(B: int, g: torch.Generator) -> Problem:
    a, b, n = 2.0, 0.5, 10
    prior = Independent(Gamma(torch.full((2,), a, dtype=DT), torch.full((2,), b, dtype=DT)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rates = z.repeat_interleave(n, dim=-1)  # [B, K, 2 n]
        return Poisson(rates).log_prob(x[:, None, :]).sum(-1)

    z = torch._standard_gamma(torch.full((B, 2), a, dtype=DT), generator=g) / b
    x = torch.poisson(z.repeat_interleave(n, dim=-1), generator=g)
    counts = x.view(B, 2, n).sum(-1)
    post_a, post_b = a + counts, b + n
    log_z = (
        a * math.log(b)
        - math.lgamma(a)
        + torch.lgamma(post_a)
        - post_a * math.log(post_b)
        - torch.lgamma(x.view(B, 2, n) + 1).sum(-1)
    ).sum(-1)
    model = Model(prior, log_likelihood, name="gamma-poisson")
    return Problem("gamma-poisson-2d", model, x, log_z, post_a / post_b, post_a.sqrt() / post_b)


def _beta_binomial(d: int, B: int, g: torch.Generator) -> Problem:
    a, b, n = 2.0, 3.0, 20
    prior = Independent(Beta(torch.full((d,), a, dtype=DT), torch.full((d,), b, dtype=DT)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Binomial(n, probs=z).log_prob(x[:, None, :]).sum(-1)

    u = torch._standard_gamma(torch.full((B, d, 2), 1.0, dtype=DT) * torch.tensor([a, b]), g)
    z = u[..., 0] / u.sum(-1)
    x = torch.binomial(torch.full((B, d), float(n), dtype=DT), z, generator=g)

    def log_beta(p: torch.Tensor | float, q: torch.Tensor | float) -> torch.Tensor:
        p, q = torch.as_tensor(p, dtype=DT), torch.as_tensor(q, dtype=DT)
        return torch.lgamma(p) + torch.lgamma(q) - torch.lgamma(p + q)

    log_choose = math.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)
    log_z = (log_choose + log_beta(a + x, b + n - x) - log_beta(a, b)).sum(-1)
    pa, pb = a + x, b + n - x
    sd = (pa * pb / ((pa + pb) ** 2 * (pa + pb + 1))).sqrt()
    model = Model(prior, log_likelihood, name="beta-binomial")
    return Problem(f"beta-binomial-{d}d", model, x, log_z, pa / (pa + pb), sd)


def _grid_truth(
    log_joint: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    low: float,
    high: float,
    points: int,
    d: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log Z, posterior means and sds by the midpoint rule on a grid over [low, high]^d."""
    h = (high - low) / points
    axis = low + h * (torch.arange(points, dtype=DT) + 0.5)
    grid = torch.cartesian_prod(*([axis] * d)).reshape(-1, d)  # [G, d]
    log_z, mean, sd = [], [], []
    for b in range(x.shape[0]):  # the reference, not the benchmark: one observation at a time
        lj = log_joint(grid[None], x[b : b + 1])[0] + d * math.log(h)  # [G]
        top = lj.max()
        w = (lj - top).exp()
        total = w.sum()
        m = (w[:, None] * grid).sum(0) / total
        v = (w[:, None] * (grid - m) ** 2).sum(0) / total
        log_z.append(top + total.log())
        mean.append(m)
        sd.append(v.sqrt())
    return torch.stack(log_z), torch.stack(mean), torch.stack(sd)


def _banana(B: int, g: torch.Generator) -> Problem:
    prior = Independent(Normal(torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Normal(z[..., 1] - z[..., 0] ** 2, 0.2).log_prob(x[:, :1])

    z = torch.randn(B, 2, generator=g, dtype=DT)
    x = (z[:, 1] - z[:, 0] ** 2 + 0.2 * torch.randn(B, generator=g, dtype=DT))[:, None]
    model = Model(prior, log_likelihood, name="banana")

    def log_joint(zz: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return prior.log_prob(zz) + log_likelihood(zz, xx)

    return Problem("banana-2d", model, x, *_grid_truth(log_joint, x, -6.0, 6.0, 1024, 2))


def _logistic(B: int, g: torch.Generator) -> Problem:
    d, n = 3, 30
    covariates = torch.randn(n, d, generator=torch.Generator().manual_seed(7), dtype=DT)
    prior = Independent(Normal(torch.zeros(d, dtype=DT), torch.ones(d, dtype=DT)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = z @ covariates.T  # [B, K, n]
        return -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x[:, None, :].expand_as(logits), reduction="none"
        ).sum(-1)

    z = torch.randn(B, d, generator=g, dtype=DT)
    x = torch.bernoulli(torch.sigmoid(z @ covariates.T), generator=g)
    model = Model(prior, log_likelihood, name="logistic")

    def log_joint(zz: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return prior.log_prob(zz) + log_likelihood(zz, xx)

    return Problem("logistic-3d", model, x, *_grid_truth(log_joint, x, -4.5, 4.5, 128, d))


def _peer_problem(name: str, B: int) -> Problem:
    """A problem of the peers' SMC table (``benchmarks/_peers/problems.py``): its float32 model
    and observations, its float64 truth."""
    problem = build_problem(name, B, seed=0)
    x = torch.as_tensor(problem.x, dtype=torch.float32)
    truth = (
        torch.as_tensor(t, dtype=DT) for t in (problem.log_evidence, problem.mean, problem.sd)
    )
    return Problem(name, problem.model, x, *truth)


def problems(B: int) -> list[Problem]:
    g = torch.Generator().manual_seed(0)
    return [
        _beta_binomial(1, B, g),
        _gamma_poisson(B, g),
        _banana(B, g),
        _linear_gaussian(2, B),
        _beta_binomial(3, B, g),
        _logistic(B, g),
        _linear_gaussian(5, B),
        _linear_gaussian(8, B),
        _linear_gaussian(10, B),
        _peer_problem("two-moons", B),
        _peer_problem("squares-5d", B),
    ]


def run(problem: Problem, kernel: object, K: int, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    result = run_smc(problem.model, problem.x, K, kernel=kernel, seed=seed)
    seconds = time.perf_counter() - start
    w = result.log_weights.exp()[..., None]
    m = (w * result.particles).sum(1).double()
    return {
        "abs_log_z": float((result.log_evidence.double() - problem.log_z).abs().mean()),
        "mean_err": float(((m - problem.mean) / problem.sd).square().mean(-1).sqrt().mean()),
        "evals": float(result.num_likelihood_evals.double().mean()),
        "seconds": seconds,
        "mixed": float(result.mixed.double().mean()),
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Errors and evaluations averaged over the seeds; seconds, their median."""
    return {
        k: (statistics.median if k == "seconds" else statistics.mean)([r[k] for r in runs])
        for k in runs[0]
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(threads=1, out=KERNELS_DOC)
    p.add_argument("--observations", type=int, default=16, help="B per model")
    p.add_argument("--num-particles", type=int, default=1000)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    kernels = {"MALA": auto_kernel().choose(True), "random walk": auto_kernel().choose(False)}
    lines = [
        "| model | d | local step | \\|Δ log Z\\| | mean err (sd) | evals / obs | seconds "
        "| mixed | RW / MALA time | RW / MALA evals |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for problem in problems(args.observations):
        for kernel in kernels.values():  # warm-up
            run_smc(problem.model, problem.x[:1], 100, kernel=kernel, seed=0)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in kernels}
        for seed in range(args.repeats):
            for name, kernel in kernels.items():
                runs[name].append(run(problem, kernel, args.num_particles, 1000 + seed))
        summary = {name: summarize(rs) for name, rs in runs.items()}
        mala, rw = summary["MALA"], summary["random walk"]
        d = problem.mean.shape[-1]
        for name, s in summary.items():
            ratios = (
                f"{rw['seconds'] / mala['seconds']:.2f} | {rw['evals'] / mala['evals']:.2f}"
                if name == "random walk"
                else " | "
            )
            lines.append(
                f"| {problem.name} | {d} | {name} | {s['abs_log_z']:.3f} | {s['mean_err']:.3f} "
                f"| {s['evals'] / 1e3:.1f} k | {s['seconds']:.2f} | {s['mixed']:.2f} "
                f"| {ratios} |"
            )
        print(lines[-2], lines[-1], sep="\n", flush=True)  # noqa: T201
    minutes = (time.perf_counter() - began) / 60
    body = (
        f"K = {args.num_particles}, B = {args.observations} observations per model in one "
        f"`run_smc` call, {args.repeats} seeds (errors averaged, seconds the median); "
        f"{minutes:.1f} minutes in all. mixed: share of observations flagged "
        "`SMCResult.mixed`.\n\n" + "\n".join(lines)
    )
    write_section(SECTION, body, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
