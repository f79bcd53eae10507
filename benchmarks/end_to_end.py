"""End to end: wall time of ``smcwake.fit`` (SMC-Wake) to a quality target, batched SMC against
SMC run one observation at a time.

    python benchmarks/end_to_end.py                      # both tasks, both variants trained
                                                         # (about 20 minutes)
    python benchmarks/end_to_end.py --loop extrapolate   # time the loop variant's SMC calls only

The two variants are the same training (``fit`` with the same settings and seed) except for
``smc_batch_size``: 256 (every SMC call takes all its observations at once) against 1 (the
initial SMC and every refresh run their observations one at a time). Quality is checked every
``eval_every`` steps (the checks are not counted in the wall times); a run stops at the first check
that meets the target.

- two-moons (100 observations, NSF encoder, K = 1000, minibatch 32, one run drawn per step, a
  refresh of 32 observations every 10 steps): target C2ST < 0.6, averaged over the first 10
  observations, 1000 encoder draws against 1000 draws of the task's grid reference.
- linear-gaussian with d = 10, p = 20 (50 observations, full-rank Gaussian encoder, K = 100,
  minibatch 32, 4 runs drawn per step, a refresh of 32 every 10 steps): target mean forward
  KL(posterior || q) < 0.5 nats over the 50 observations, against the exact posterior. (At the
  task's default d = 50, K = 100 the SMC clouds are too degenerate for the encoder to approach
  the exact posterior in a benchmark's time.)

With ``--loop extrapolate`` the loop variant is not trained: its time is the batched run's time
with the SMC part replaced by (observations sent to SMC) x (time of one single-observation call),
the latter measured on the run's own observations.
"""

from __future__ import annotations

import time

import torch
from _common import best_of, parser, setup, table, write_section

import smcwake
import smcwake.train
from smcwake import run_smc
from smcwake.diagnostics import c2st, forward_kl_gaussian
from smcwake.tasks import get

SETTINGS = {
    "two-moons": {
        "task": {},
        "n": 100,
        "fit": {
            "encoder": "nsf",
            "num_particles": 1000,
            "batch_size": 32,
            "runs_per_step": 1,
            "refresh_every": 10,
            "lr": 1e-3,
        },
        "metric": "C2ST",
        "target": 0.6,
        "eval_every": 250,
        "max_steps": 5000,
    },
    "linear-gaussian": {
        "task": {"d": 10, "p": 20},
        "n": 50,
        "fit": {
            "encoder": "gaussian",
            "num_particles": 100,
            "batch_size": 32,
            "runs_per_step": 4,
            "refresh_every": 10,
            "lr": 1e-3,
        },
        "metric": "forward KL",
        "target": 0.5,
        "eval_every": 50,
        "max_steps": 3000,
    },
}


class SMCTimer:
    """Wraps the run_smc used by fit to add up its wall time and the observations sent."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.observations = 0
        self.calls = 0
        self._original = smcwake.train.run_smc

    def __enter__(self) -> SMCTimer:
        def timed(model, x, *args, **kwargs):
            start = time.perf_counter()
            result = self._original(model, x, *args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.observations += x.shape[0]
            self.calls += 1
            return result

        smcwake.train.run_smc = timed
        return self

    def __exit__(self, *exc) -> None:
        smcwake.train.run_smc = self._original


def quality(name: str, task, x):
    """A function encoder -> metric (lower is better)."""
    if name == "two-moons":
        xe = x[:10]
        reference = task.reference_posterior(xe, 1000, 1)

        def c2st_mean(encoder) -> float:
            with torch.no_grad():
                q = encoder.sample(xe, 1000, generator=torch.Generator().manual_seed(2))
            return sum(c2st(reference[i], q[i]) for i in range(xe.shape[0])) / xe.shape[0]

        return c2st_mean
    post_mean, post_cov = task.posterior_moments(x)

    def forward_kl(encoder) -> float:
        with torch.no_grad():
            q_mean, q_cov = encoder.gaussian_params(x)
        kl = forward_kl_gaussian(post_mean.double(), post_cov.double(), q_mean.double(), q_cov)
        return float(kl.mean())

    return forward_kl


def train(name: str, smc_batch_size: int) -> dict:
    """One fit until the target; wall time excludes the quality checks."""
    s = SETTINGS[name]
    task = get(name, **s["task"])
    _, x = task.observations(s["n"], 0)
    metric = quality(name, task, x)
    curve: list[tuple[int, float, float]] = []
    checks = [0.0]

    def check(step, encoder, row):
        if step % s["eval_every"]:
            return None
        start = time.perf_counter()
        value = metric(encoder)
        curve.append((step, row["wall_time"] - checks[0], value))
        checks[0] += time.perf_counter() - start
        print(f"  step {step}: {s['metric']} {value:.3f}, {curve[-1][1]:.0f} s", flush=True)
        return value < s["target"]

    with SMCTimer() as smc:
        start = time.perf_counter()
        smcwake.fit(
            task.model,
            x,
            **s["fit"],
            steps=s["max_steps"],
            smc_batch_size=smc_batch_size,
            log_every=s["eval_every"],
            progress=False,
            seed=0,
            callbacks=[check],
        )
        total = time.perf_counter() - start - checks[0]
    reached = [c for c in curve if c[2] < s["target"]]
    step, seconds, value = reached[0] if reached else curve[-1]
    return {
        "task": task,
        "x": x,
        "reached": bool(reached),
        "step": step,
        "seconds": seconds,
        "value": value,
        "total": total,
        "smc_seconds": smc.seconds,
        "smc_observations": smc.observations,
        "smc_calls": smc.calls,
    }


def single_call_seconds(name: str, task, x, refresh: int, repeats: int) -> tuple[float, float]:
    """(seconds per observation run alone, seconds per observation in one batched call)."""
    K = SETTINGS[name]["fit"]["num_particles"]
    xs = x[:refresh]

    def alone():
        g = torch.Generator().manual_seed(3)
        for b in range(xs.shape[0]):
            with torch.no_grad():
                run_smc(task.model, xs[b : b + 1], K, generator=g)

    def batched():
        with torch.no_grad():
            run_smc(task.model, xs, K, generator=torch.Generator().manual_seed(3))

    best = best_of({"alone": alone, "batched": batched}, repeats)
    return best["alone"] / xs.shape[0], best["batched"] / xs.shape[0]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--tasks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--loop", choices=["full", "extrapolate"], default="full")
    args = p.parse_args()
    setup(args.threads)
    rows, notes = [], []
    for name in args.tasks:
        s = SETTINGS[name]
        print(f"{name}: batched SMC", flush=True)
        b = train(name, 256)
        mode = args.loop
        steps_part = b["seconds"] * (1 - b["smc_seconds"] / b["total"])
        if mode == "full":
            print(f"{name}: one observation per SMC call", flush=True)
            lp = train(name, 1)
            loop_time, loop_step, loop_ok = lp["seconds"], lp["step"], lp["reached"]
            loop_smc = lp["smc_seconds"] * lp["seconds"] / lp["total"]
            how = "measured"
        else:
            alone, batched = single_call_seconds(
                name, b["task"], b["x"], s["fit"]["batch_size"], args.repeats
            )
            share = b["seconds"] / b["total"]  # the part of the run before the target
            loop_smc = b["smc_observations"] * share * alone
            loop_time, loop_step, loop_ok = steps_part + loop_smc, b["step"], b["reached"]
            how = "extrapolated"
            notes.append(
                f"{name}: the loop variant is extrapolated: {b['smc_observations'] * share:.0f} "
                f"observations sent to SMC before the target x {alone * 1e3:.0f} ms per "
                f"single-observation call (against {batched * 1e3:.1f} ms per observation in a "
                f"batch of {s['fit']['batch_size']}), plus the batched run's "
                f"{steps_part:.0f} s outside SMC."
            )
        batched_smc = b["smc_seconds"] * b["seconds"] / b["total"]
        rows.append(
            [
                name,
                f"{s['metric']} < {s['target']}",
                f"{b['step']} ({b['value']:.3f})" + ("" if b["reached"] else ", not reached"),
                b["seconds"],
                batched_smc,
                f"{loop_step}" + ("" if loop_ok else ", not reached"),
                loop_time,
                loop_smc,
                how,
                loop_time / b["seconds"],
            ]
        )
    body = table(
        [
            "task",
            "target",
            "batched: steps (metric)",
            "batched: wall (s)",
            "of which SMC (s)",
            "loop: steps",
            "loop: wall (s)",
            "of which SMC (s)",
            "loop",
            "loop / batched",
        ],
        rows,
    )
    if notes:
        body += "\n\n" + "\n".join(f"- {n}" for n in notes)
    write_section("end-to-end", body, args.out, write=not args.no_write)


if __name__ == "__main__":
    main()
