"""SMC on priors with constrained support: moves in the prior's coordinates z or in u = T^{-1}(z).

``run_smc(..., space="constrained")`` moves the particles in z and rejects proposals outside the
prior's support; ``space="unconstrained"`` moves them in u = T^{-1}(z), T =
``torch.distributions.biject_to(prior.support)`` (exp for a half-line, a scaled sigmoid for an
interval). Every other setting is run_smc's default (kernel "auto", K = 1,000). Each model has an
exact answer:

* ``exp-poisson``: z_j ~ Exp(1), five Poisson(z_j) counts per coordinate; posterior
  Gamma(1 + S_j, 6), closed-form evidence.
* ``gamma-poisson``: z_j ~ Gamma(0.5, 1) (density infinite at 0), three Poisson(z_j) counts per
  coordinate; posterior Gamma(0.5 + S_j, 4), many coordinates piled against 0.
* ``gamma-exponential``: z_j ~ Gamma(2, 1), four Exponential(rate z_j) observations per
  coordinate; posterior Gamma(6, 1 + S_j).
* ``halfnormal-scale``: z_j ~ HalfNormal(1), a scale; four N(0, z_j^2) observations per
  coordinate. Posterior and evidence by 1-d quadrature per coordinate (4,000 nodes in log z).
* ``beta-binomial``: z_j ~ Beta(0.5, 0.5), one Binomial(10, z_j) count per coordinate; posterior
  Beta(0.5 + k_j, 10.5 - k_j), against 0 or 1 where k_j is 0 or 10.
* ``box-normal``: z ~ U[-1, 1]^d, x ~ N(z, 0.3^2 I); truncated-normal posteriors, some
  against a wall.
* ``mixed-boxes``: the same with boxes of widths 0.01 to 100 across the coordinates, placed
  off-centre, and noise sds of 0.05 to 1.5 widths.
* ``box-edge``: z ~ U[0, 1]^d, one Binomial(20, z_j) count per coordinate, observed as 0 or 1
  (not drawn from the prior predictive): Beta posteriors against the lower wall,
  p(x) = 21^-d.
* the project's box-prior problems: ``two-moons`` (the task; evidence and moments from a
  2,000 x 2,000 grid), ``spike-slab`` (the task; exact evidence, moments from 20,000 exact
  draws), ``slcp-4d-asym`` and ``slcp-5d`` (mode masses against quadrature / 1/4, as in
  ``benchmarks/multimodal.py``).

Observations are drawn from the prior predictive except for box-edge (4 per run, 10 for SLCP);
each (model, d, space) runs with seeds 0 and 1 (seed 0 only at d = 100). Reported:
|log Zhat - log Z| (mean and largest over observations and seeds), the error of the posterior
mean in posterior standard deviations (root mean square over coordinates, mean over
observations; for SLCP the largest error of a mode's mass instead), runs flagged not mixed /
not converged, likelihood evaluations per observation and wall time per run. Torch runs on
one thread; times vary with the machine's load, so compare them within one table.

    python benchmarks/constrained_priors.py    # about 35 minutes; updates docs/KERNELS.md
    python benchmarks/constrained_priors.py --models box-edge    # replaces those rows only
    python benchmarks/constrained_priors.py --slcp-check    # SLCP-5d at K = 5000, 7 minutes
    python benchmarks/constrained_priors.py --dims 1 5 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from multimodal import curved_cases, quadrant_masses
from torch.distributions import (
    Beta,
    Binomial,
    Exponential,
    Gamma,
    HalfNormal,
    Independent,
    Normal,
    Poisson,
    Uniform,
)

from smcwake import Model, run_smc
from smcwake.smc.base import Kernel
from smcwake.smc.independence import MAX_STEPS, mixture_independence
from smcwake.smc.mixing import until_decorrelated
from smcwake.smc.steppers import mala_stepper
from smcwake.tasks import get

DT = torch.float64
DOC = Path(__file__).resolve().parents[1] / "docs" / "KERNELS.md"
SPACES = ("constrained", "unconstrained")
DIMS = [1, 5, 20, 40, 100]
BOX_PROBLEMS = ("two-moons", "spike-slab", "slcp-5d", "slcp-4d-asym")


class Truth(NamedTuple):
    log_z: torch.Tensor | None  # [B]
    mean: torch.Tensor | None  # [B, d]
    sd: torch.Tensor | None  # [B, d]
    masses: torch.Tensor | None = None  # [B, 4] SLCP mode masses


class Case(NamedTuple):
    name: str
    d: int
    model: Model
    x: torch.Tensor  # [B, p]
    truth: Truth


def _gamma_truth(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a / b, a.sqrt() / b


def exp_poisson(d: int, g: torch.Generator, n: int = 5, B: int = 4) -> Case:
    z = Exponential(torch.ones(B, d, dtype=DT)).sample()
    counts = torch.poisson(z[:, None, :].expand(B, n, d), generator=g)

    def loglik(zz: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = x.reshape(x.shape[0], 1, n, d)
        return Poisson(zz[:, :, None, :]).log_prob(c).sum((-1, -2))

    S = counts.sum(1)
    log_z = (torch.lgamma(1 + S) - (1 + S) * math.log(1 + n)).sum(-1) - torch.lgamma(
        counts + 1
    ).sum((-1, -2))
    mean, sd = _gamma_truth(1 + S, torch.full_like(S, 1.0 + n))
    prior = Independent(Exponential(torch.ones(d, dtype=DT)), 1)
    return Case(
        "exp-poisson", d, Model(prior, loglik), counts.reshape(B, n * d), Truth(log_z, mean, sd)
    )


def gamma_poisson(d: int, g: torch.Generator, n: int = 3, a: float = 0.5, B: int = 4) -> Case:
    z = torch._standard_gamma(torch.full((B, d), a, dtype=DT), generator=g)
    counts = torch.poisson(z[:, None, :].expand(B, n, d), generator=g)

    def loglik(zz: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = x.reshape(x.shape[0], 1, n, d)
        return Poisson(zz[:, :, None, :]).log_prob(c).sum((-1, -2))

    S = counts.sum(1)
    log_z = (torch.lgamma(a + S) - math.lgamma(a) - (a + S) * math.log(1 + n)).sum(
        -1
    ) - torch.lgamma(counts + 1).sum((-1, -2))
    mean, sd = _gamma_truth(a + S, torch.full_like(S, 1.0 + n))
    prior = Independent(Gamma(torch.full((d,), a, dtype=DT), torch.ones(d, dtype=DT)), 1)
    return Case(
        "gamma-poisson", d, Model(prior, loglik), counts.reshape(B, n * d), Truth(log_z, mean, sd)
    )


def gamma_exponential(d: int, g: torch.Generator, n: int = 4, B: int = 4) -> Case:
    a, b = 2.0, 1.0
    z = torch._standard_gamma(torch.full((B, d), a, dtype=DT), generator=g) / b
    e = -torch.log1p(-torch.rand(B, n, d, generator=g, dtype=DT))
    obs = e / z[:, None, :]

    def loglik(zz: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(x.shape[0], 1, n, d)
        return Exponential(zz[:, :, None, :]).log_prob(y).sum((-1, -2))

    S = obs.sum(1)
    log_z = (
        a * math.log(b) - math.lgamma(a) + math.lgamma(a + n) - (a + n) * torch.log(b + S)
    ).sum(-1)
    mean, sd = _gamma_truth(torch.full_like(S, a + n), b + S)
    prior = Independent(Gamma(torch.full((d,), a, dtype=DT), torch.full((d,), b, dtype=DT)), 1)
    return Case(
        "gamma-exponential", d, Model(prior, loglik), obs.reshape(B, n * d), Truth(log_z, mean, sd)
    )


def halfnormal_scale(d: int, g: torch.Generator, n: int = 4, B: int = 4) -> Case:
    z = torch.randn(B, d, generator=g, dtype=DT).abs()
    obs = z[:, None, :] * torch.randn(B, n, d, generator=g, dtype=DT)

    def loglik(zz: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(x.shape[0], 1, n, d)
        return Normal(0.0, zz[:, :, None, :]).log_prob(y).sum((-1, -2))

    # quadrature per coordinate in v = log z (the integrand is smooth there)
    v = torch.linspace(-12.0, 4.0, 4000, dtype=DT)
    zg = v.exp()  # [G]
    ss = obs.square().sum(1)  # [B, d]
    log_f = (
        HalfNormal(torch.ones((), dtype=DT)).log_prob(zg)
        + v  # dz = z dv
        - n * torch.log(zg)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * ss[..., None] / zg.square()
    )  # [B, d, G]
    dv = float(v[1] - v[0])
    log_zj = torch.logsumexp(log_f, -1) + math.log(dv)
    w = torch.softmax(log_f, -1)
    mean = (w * zg).sum(-1)
    sd = ((w * zg.square()).sum(-1) - mean.square()).clamp_min(0).sqrt()
    prior = Independent(HalfNormal(torch.ones(d, dtype=DT)), 1)
    return Case(
        "halfnormal-scale",
        d,
        Model(prior, loglik),
        obs.reshape(B, n * d),
        Truth(log_zj.sum(-1), mean, sd),
    )


def beta_binomial(d: int, g: torch.Generator, N: int = 10, B: int = 4) -> Case:
    a = b = 0.5
    z = Beta(torch.full((B, d), a, dtype=DT), torch.full((B, d), b, dtype=DT)).sample()
    k = torch.binomial(torch.full((B, d), float(N), dtype=DT), z, generator=g)

    def loglik(zz: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Binomial(N, probs=zz).log_prob(x[:, None, :]).sum(-1)

    pa, pb = a + k, b + N - k
    post = Beta(pa, pb)  # [B, d]
    prior = Independent(Beta(torch.full((d,), a, dtype=DT), torch.full((d,), b, dtype=DT)), 1)
    # Bayes' rule at any point, here the posterior mean: p(x) = p(x | z) p(z) / p(z | x)
    m = post.mean
    log_z = loglik(m[:, None, :], k)[:, 0] + prior.log_prob(m) - post.log_prob(m).sum(-1)
    mean, sd = m, post.stddev
    return Case("beta-binomial", d, Model(prior, loglik), k, Truth(log_z, mean, sd))


def _box_gaussian(
    name: str, low: torch.Tensor, high: torch.Tensor, s: torch.Tensor, g: torch.Generator, B: int
) -> Case:
    """z ~ U[low, high] (per coordinate), x ~ N(z, diag(s^2)): truncated-normal posteriors."""
    d = low.shape[0]
    z = low + (high - low) * torch.rand(B, d, generator=g, dtype=DT)
    x = z + s * torch.randn(B, d, generator=g, dtype=DT)

    def loglik(zz: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return Normal(zz, s).log_prob(xx[:, None, :]).sum(-1)

    std = Normal(torch.zeros((), dtype=DT), torch.ones((), dtype=DT))
    alpha, beta = (low - x) / s, (high - x) / s
    log_mass = torch.log(std.cdf(beta) - std.cdf(alpha))  # accurate for x within ~7 s of the box
    log_z = (log_mass - torch.log(high - low)).sum(-1)
    pa, pb = std.log_prob(alpha).exp(), std.log_prob(beta).exp()
    mass = log_mass.exp()
    mean = x + s * (pa - pb) / mass
    var = s**2 * (1 + (alpha * pa - beta * pb) / mass - ((pa - pb) / mass).square())
    prior = Independent(Uniform(low, high), 1)
    return Case(name, d, Model(prior, loglik), x, Truth(log_z, mean, var.sqrt()))


def box_normal(d: int, g: torch.Generator, s: float = 0.3, B: int = 4) -> Case:
    ones = torch.ones(d, dtype=DT)
    return _box_gaussian("box-normal", -ones, ones, s * ones, g, B)


def mixed_boxes(d: int, g: torch.Generator, B: int = 4) -> Case:
    """Boxes of widths 0.01 to 100 (log-spaced over the coordinates), placed off-centre around
    0 in turn, with noise sds of 0.05, 0.15, 0.5 and 1.5 widths in turn: per coordinate, the
    transform's scale differs, and so does how much of the box the posterior fills."""
    width = 10.0 ** torch.linspace(-2.0, 2.0, d, dtype=DT) if d > 1 else torch.ones(1, dtype=DT)
    offset = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=DT).repeat(d // 5 + 1)[:d]
    noise = torch.tensor([0.05, 0.15, 0.5, 1.5], dtype=DT).repeat(d // 4 + 1)[:d]
    low = -offset * width
    return _box_gaussian("mixed-boxes", low, low + width, noise * width, g, B)


def box_edge(d: int, g: torch.Generator, N: int = 20, B: int = 4) -> Case:
    """z ~ U[0, 1]^d, one Binomial(20, z_j) count per coordinate, observed 0 or 1: every
    posterior, Beta(1 + k_j, 21 - k_j), lies against the lower wall; p(x) = 21^-d exactly."""
    k = torch.randint(0, 2, (B, d), generator=g).to(DT)

    def loglik(zz: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Binomial(N, probs=zz).log_prob(x[:, None, :]).sum(-1)

    post = Beta(1 + k, 1 + N - k)
    prior = Independent(Uniform(torch.zeros(d, dtype=DT), torch.ones(d, dtype=DT)), 1)
    log_z = torch.full((B,), -d * math.log(N + 1.0), dtype=DT)
    return Case("box-edge", d, Model(prior, loglik), k, Truth(log_z, post.mean, post.stddev))


def two_moons_case(g: torch.Generator, B: int = 4, grid: int = 2000) -> Case:
    from smcwake.tasks.two_moons import _grid_centres, _grid_log_likelihood

    task = get("two-moons", dtype=DT)
    _, x = task.observations(B, seed=int(torch.randint(0, 2**31, (1,), generator=g)))
    centres = _grid_centres(grid)
    ll = _grid_log_likelihood(centres, x)  # [B, N]; prior density 1/4 on cells of area 4 / N
    log_z = torch.logsumexp(ll, -1) - math.log(centres.shape[0])
    w = torch.softmax(ll, -1)
    mean = w @ centres
    sd = (w @ centres.square() - mean.square()).sqrt()
    return Case("two-moons", 2, task.model, x, Truth(log_z, mean, sd))


def spike_slab_case(g: torch.Generator, B: int = 4) -> Case:
    task = get("spike-slab", dtype=DT)
    seed = int(torch.randint(0, 2**31, (1,), generator=g))
    _, x = task.observations(B, seed=seed)
    draws = torch.stack(
        [task.reference_posterior(x[i : i + 1], 20_000, seed + i)[0] for i in range(B)]
    )
    from smcwake.tasks.spike_slab import exact_log_evidence

    log_z = exact_log_evidence(x, 5.0, 1.0, 0.05)
    return Case("spike-slab", 2, task.model, x, Truth(log_z, draws.mean(1), draws.std(1)))


def slcp_cases() -> list[Case]:
    out = []
    for c in curved_cases(num_obs=10, seed=0):
        if c.name in ("slcp-5d", "slcp-4d-asym"):
            out.append(Case(c.name, c.model.dim, c.model, c.x, Truth(None, None, None, c.truth)))
    return out


CONJUGATE: dict[str, Callable[[int, torch.Generator], Case]] = {
    "exp-poisson": exp_poisson,
    "gamma-poisson": gamma_poisson,
    "gamma-exponential": gamma_exponential,
    "halfnormal-scale": halfnormal_scale,
    "beta-binomial": beta_binomial,
    "box-normal": box_normal,
    "mixed-boxes": mixed_boxes,
    "box-edge": box_edge,
}


def run(case: Case, space: str, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    result = run_smc(case.model, case.x, 1000, seed=seed, space=space)
    seconds = time.perf_counter() - start
    t = case.truth
    out = {
        "seconds": seconds,
        "evals": float(result.num_likelihood_evals.double().mean()),
        "unmixed": int((~result.mixed).sum()),
        "unconverged": int((~result.converged).sum()),
        "runs": case.x.shape[0],
        "dlogz": [],
        "mean_err": [],
        "mass_err": [],
    }
    if t.log_z is not None:
        out["dlogz"] = (result.log_evidence - t.log_z).abs().tolist()
    if t.mean is not None:
        w = result.log_weights.exp()[..., None]
        m = (w * result.particles).sum(1)
        out["mean_err"] = ((m - t.mean) / t.sd).square().mean(-1).sqrt().tolist()
    if t.masses is not None:
        masses = quadrant_masses(result.particles, result.log_weights)
        out["mass_err"] = (masses - t.masses).abs().amax(-1).tolist()
    return out


def merge(records: list[dict]) -> dict:
    m: dict = {"dlogz": [], "mean_err": [], "mass_err": []}
    for r in records:
        for k in m:
            m[k] += r[k]
    for k in ("unmixed", "unconverged", "runs"):
        m[k] = sum(r[k] for r in records)
    m["evals"] = statistics.mean(r["evals"] for r in records)
    m["seconds"] = statistics.mean(r["seconds"] for r in records)
    return m


def _f(values: list[float], spec: str) -> str:
    if not values:
        return "–"
    return f"{statistics.mean(values):{spec}} / {max(values):{spec}}"


def row(name: str, d: int, space: str, m: dict) -> str:
    err = _f(m["mass_err"], ".3f") if m["mass_err"] else _f(m["mean_err"], ".2f")
    return (
        f"| {name} | {d} | {space} | {_f(m['dlogz'], '.2f')} | {err} | "
        f"{m['unmixed']}/{m['runs']} | {m['unconverged']}/{m['runs']} | "
        f"{m['evals'] / 1e3:.0f} k | {m['seconds']:.1f} |"
    )


HEADER = (
    "| model | d | space | abs dlogZ mean / max | mean err (sd) or mode-mass err, mean / max "
    "| not mixed | not converged | evals / obs | s / run |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---:|"
)


def _jumps_fitted_in_u(max_steps: int = MAX_STEPS) -> Kernel:
    """The default kernel as it was before its jumps moved to z on boxes: MALA steps until
    decorrelated after mixture jumps fitted to the particles in u (SLCP is differentiable),
    at most ``max_steps`` jumps per stage."""
    jumps = mixture_independence(4, max_steps=max_steps)
    return until_decorrelated(mala_stepper(), jumps=jumps, max_steps=50)


def slcp_check(seeds: list[int], num_particles: int = 5000) -> str:
    """The SLCP-5d mode masses at K = 5000 (as the slow test of tests/smc/test_multimodal.py).

    Per setting and seed: the largest |mass - 1/4| / s.e. over the 10 observations and 4
    modes, s.e. = sqrt(m (1 - m) / ESS), and the mean of its square (about 1 when the masses
    are right and the particles worth ESS independent draws). Settings: the default kernel in
    z, in u (the default: jumps fitted in z, local steps in u), and in u with the jumps fitted
    in u, at most 30 (the default cap) or 100 per stage.
    """
    case = next(c for c in slcp_cases() if c.name == "slcp-5d")
    lines = [
        "| space | jumps fitted in | seed | largest standardized mass error | mean square "
        "| lowest moved | evals / obs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    settings = [
        ("constrained", "z", "auto"),
        ("unconstrained (default)", "z", "auto"),
        ("unconstrained", "u", _jumps_fitted_in_u()),
        ("unconstrained", "u, up to 100 jumps", _jumps_fitted_in_u(100)),
    ]
    for label, fitted_in, kernel in settings:
        space = label.split()[0]
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            result = run_smc(
                case.model, case.x, num_particles, generator=g, space=space, kernel=kernel
            )
            masses = quadrant_masses(result.particles, result.log_weights)
            truth = case.truth.masses
            z = (masses - truth) / torch.sqrt(truth * (1 - truth) / result.ess[:, None])
            evals = float(result.num_likelihood_evals.double().mean())
            moved = float(result.kernel_info["independence/moved"].min())
            lines.append(
                f"| {label} | {fitted_in} | {seed} | {float(z.abs().max()):.2f} | "
                f"{float(z.square().mean()):.2f} | {moved:.2f} | {evals / 1e3:.0f} k |"
            )
            print(lines[-1], flush=True)  # noqa: T201
    return "\n".join(lines)


def _write(name: str, body: str) -> None:
    text = DOC.read_text()
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    if begin not in text:
        raise SystemExit(f"{DOC}: markers {begin} ... {end} not found")
    block = f"{begin}\n{body.strip()}\n{end}"
    DOC.write_text(text[: text.index(begin)] + block + text[text.index(end) + len(end) :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=DIMS)
    p.add_argument(
        "--models",
        nargs="+",
        default=[*CONJUGATE, "box-problems"],
        help=f"any of {[*CONJUGATE, *BOX_PROBLEMS]}, or box-problems for the last four",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument(
        "--slcp-check",
        action="store_true",
        help="only the SLCP-5d mode masses at K = 5000, seeds 33 to 36 (about 7 minutes)",
    )
    args = p.parse_args()
    unknown = set(args.models) - {*CONJUGATE, "box-problems", *BOX_PROBLEMS}
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; known: {[*CONJUGATE, *BOX_PROBLEMS]}")
    torch.set_num_threads(1)
    if args.slcp_check:
        body = slcp_check([33, 34, 35, 36])
        if not args.no_write:
            _write("constrained-slcp", body)
        return
    started = time.perf_counter()
    lines = [HEADER]
    for name in args.models:
        if name not in CONJUGATE:
            continue
        for d in args.dims:
            g = torch.Generator().manual_seed(1000 + d)
            with torch.random.fork_rng():
                torch.manual_seed(1000 + d)
                case = CONJUGATE[name](d, g)
            seeds = args.seeds if d < 100 else args.seeds[:1]
            for space in SPACES:
                m = merge([run(case, space, s) for s in seeds])
                lines.append(row(name, d, space, m))
                print(lines[-1], flush=True)  # noqa: T201
    wanted = set(BOX_PROBLEMS) if "box-problems" in args.models else set(args.models)
    if wanted & set(BOX_PROBLEMS):
        g = torch.Generator().manual_seed(7)
        cases = [two_moons_case(g), spike_slab_case(g)]  # in this order: they share g
        if wanted & {"slcp-5d", "slcp-4d-asym"}:
            cases += slcp_cases()
        for case in (c for c in cases if c.name in wanted):
            for space in SPACES:
                m = merge([run(case, space, s) for s in args.seeds])
                lines.append(row(case.name, case.d, space, m))
                print(lines[-1], flush=True)  # noqa: T201
    minutes = (time.perf_counter() - started) / 60
    footer = f"({minutes:.0f} minutes on one thread, torch {torch.__version__})"
    if args.no_write:
        return
    if set(args.models) == {*CONJUGATE, "box-problems"} and args.dims == DIMS:
        _write("constrained-priors", "\n".join(lines) + f"\n\n{footer}")
    else:
        dims = "" if args.dims == DIMS else f" --dims {' '.join(map(str, args.dims))}"
        _write(
            "constrained-priors", _merge_rows(lines[1:], f"{' '.join(args.models)}{dims}", footer)
        )


def _key(line: str) -> tuple[str, ...]:
    return tuple(cell.strip() for cell in line.split("|")[1:4])  # model, d, space


def _merge_rows(new: list[str], run: str, footer: str) -> str:
    """The table in docs/KERNELS.md with the rows of ``new`` replaced or inserted (among the
    rows of the same model in order of d, else before the project's box problems)."""
    text = DOC.read_text()
    begin, end = "<!-- begin constrained-priors -->", "<!-- end constrained-priors -->"
    old = text[text.index(begin) + len(begin) : text.index(end)].strip().splitlines()
    rows = [line for line in old if line.startswith("| ") and not line.startswith("| model")]
    notes = [line for line in old if line.startswith("(")]
    fresh = {_key(line): line for line in new}
    rows = [fresh.pop(_key(line), line) for line in rows]
    for key, line in fresh.items():
        same = [i for i, r in enumerate(rows) if _key(r)[0] == key[0]]
        after = [i for i in same if int(_key(rows[i])[1]) > int(key[1])]
        problems = [i for i, r in enumerate(rows) if _key(r)[0] in BOX_PROBLEMS]
        if after:  # keep a model's rows in order of d
            at = after[0]
        else:
            at = same[-1] + 1 if same else (problems[0] if problems else len(rows))
        rows.insert(at, line)
    again = f"rows of `--models {run}` re-run {footer}"
    return "\n".join([HEADER, *rows, "", f"{notes[0]}; {again}" if notes else again])


if __name__ == "__main__":
    main()
