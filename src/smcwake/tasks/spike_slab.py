"""Spike and slab: a 2-D location on a wide box whose posteriors are a spike on a broad base.

z ~ U[-w, w]^2 and each observation is z plus noise from a 50/50 mixture of a broad and a very
narrow Gaussian,

    p(x | z) = 1/2 N(x; z, s_broad^2 I) + 1/2 N(x; z, s_narrow^2 I),     d = p = 2.

As a function of z the likelihood is the same mixture centred at x, so the posterior is that
mixture restricted to the box: a spike of width s_narrow on a base of width s_broad, each
component keeping its (truncated) mass. Everything is exact:

    p(x) = (1 / (2 w)^2) sum_c 1/2 prod_j [Phi((w - x_j) / s_c) - Phi((-w - x_j) / s_c)],

and posterior draws pick a component by its truncated mass, then each coordinate from a
Gaussian truncated to [-w, w] by inverting its CDF (in float64, on the short tail side).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, Uniform
from torch.special import log_ndtr, ndtri

from smcwake.model import Model
from smcwake.tasks import Task
from smcwake.tasks._common import check_count, make_generator, place

__all__ = ["log_likelihood", "spike_slab"]

_LOG_HALF = math.log(0.5)
_LOG_2PI = math.log(2 * math.pi)


def log_likelihood(z: Tensor, x: Tensor, broad_sd: float, narrow_sd: float) -> Tensor:
    """log p(x | z): the 50/50 mixture of N(z, broad_sd^2 I) and N(z, narrow_sd^2 I).

    Broadcasts over leading dimensions. Shapes: z [*, 2], x [*, 2] -> [*].

    >>> z = torch.zeros(1, 2)
    >>> round(float(log_likelihood(z, z, 1.0, 0.05)), 4)  # the spike's peak dominates
    3.4629
    """
    sq = (x - z).square().sum(-1)
    parts = [
        _LOG_HALF - sq / (2 * sd**2) - 2 * math.log(sd) - _LOG_2PI for sd in (broad_sd, narrow_sd)
    ]
    return torch.logaddexp(*parts)


def _log_interval_mass(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log (Phi(b) - Phi(a)) for a < b, computed on the side of the shorter tail.

    Returns (log mass, lo, hi) with [lo, hi] = [a, b], or [-b, -a] where a > 0 (then a draw t
    from N(0, 1) on [lo, hi] is negated). Shapes: a, b [*] -> three [*].
    """
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi)), lo, hi


def _component_masses(x: Tensor, half_width: float, sds: tuple[float, ...]) -> Tensor:
    """log of 1/2 times the box mass of N(x, s_c^2 I), per component.

    Shapes: x [B, 2] -> [B, C].
    """
    out = []
    for sd in sds:
        mass, _, _ = _log_interval_mass((-half_width - x) / sd, (half_width - x) / sd)
        out.append(_LOG_HALF + mass.sum(-1))
    return torch.stack(out, -1)


def exact_log_evidence(x: Tensor, half_width: float, broad_sd: float, narrow_sd: float) -> Tensor:
    """log p(x) in closed form (float64). Shapes: x [B, 2] -> [B].

    >>> x = torch.zeros(1, 2)
    >>> round(float(exact_log_evidence(x, 5.0, 1.0, 0.05)), 4)  # log (1 / 100): no truncation
    -4.6052
    """
    x64 = x.detach().to(dtype=torch.float64, device="cpu")
    masses = _component_masses(x64, half_width, (broad_sd, narrow_sd))
    return torch.logsumexp(masses, -1) - 2 * math.log(2 * half_width)


def exact_posterior_samples(
    x: Tensor, n: int, seed: int, half_width: float, broad_sd: float, narrow_sd: float
) -> Tensor:
    """Exact posterior draws: a component by its truncated mass, then a truncated Gaussian.

    Shapes: x [B, 2] -> [B, n, 2] (x's dtype and device; computed in float64 on the CPU).
    """
    check_count(n)
    g = make_generator(seed)
    x64 = x.detach().to(dtype=torch.float64, device="cpu")
    sds = torch.tensor([broad_sd, narrow_sd], dtype=torch.float64)
    log_mass = _component_masses(x64, half_width, (broad_sd, narrow_sd))  # [B, 2]
    pick = torch.multinomial(torch.softmax(log_mass, -1), n, replacement=True, generator=g)
    sd = sds[pick][..., None]  # [B, n, 1]
    centre = x64[:, None, :]  # [B, 1, 2]
    _, lo, hi = _log_interval_mass((-half_width - centre) / sd, (half_width - centre) / sd)
    u = torch.rand(lo.shape, generator=g, dtype=torch.float64)
    # t = Phi^-1((1 - u) Phi(lo) + u Phi(hi)), the sum in log space (Phi(lo) may underflow);
    # lo <= 0 after the flip, so the argument stays below 1 - 2^-54 and Phi^-1 finite
    log_p = torch.logaddexp(log_ndtr(lo) + torch.log1p(-u), log_ndtr(hi) + torch.log(u))
    t = ndtri(torch.exp(log_p)).clamp(lo, hi)
    t = torch.where((-half_width - centre) / sd > 0, -t, t)
    z = (centre + sd * t).clamp(-half_width, math.nextafter(half_width, 0.0))
    return place(z, x.dtype, x.device)


def spike_slab(
    *,
    half_width: float = 5.0,
    broad_sd: float = 1.0,
    narrow_sd: float = 0.05,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Task:
    """The spike-and-slab task: exact likelihood, evidence and posterior draws.

    ``defaults``: ``num_observations`` (100), ``num_particles`` (1000), ``encoder`` ("flow").

    Shapes: z [B, K, 2], x [B, 2].

    >>> task = spike_slab()
    >>> z, x = task.observations(100, seed=0)
    >>> bool(torch.isfinite(task.model.log_likelihood(z[:, None, :], x)).all())
    True
    """
    for name, value in (
        ("half_width", half_width),
        ("broad_sd", broad_sd),
        ("narrow_sd", narrow_sd),
    ):
        if not (isinstance(value, int | float) and 0 < value < math.inf):
            raise ValueError(f"{name}: expected a finite number > 0, received {value!r}")
    bound = torch.full((2,), float(half_width), dtype=dtype, device=device)
    prior = Independent(Uniform(-bound, bound), 1)

    def model_log_likelihood(z: Tensor, x: Tensor) -> Tensor:
        return log_likelihood(z, x[:, None, :], broad_sd, narrow_sd)

    def simulate(z: Tensor) -> Tensor:
        narrow = torch.rand(z.shape[:-1], dtype=z.dtype, device=z.device)[..., None] < 0.5
        sd = torch.where(narrow, narrow_sd, broad_sd)
        return z + sd * torch.randn_like(z)

    model = Model(prior, model_log_likelihood, simulate=simulate, name="spike-slab")

    def observations(n: int, seed: int) -> tuple[Tensor, Tensor]:
        g = make_generator(seed)
        z = half_width * (
            2.0 * torch.rand(check_count(n), 2, generator=g, dtype=torch.float64) - 1
        )
        narrow = torch.rand(n, 1, generator=g, dtype=torch.float64) < 0.5
        sd = torch.where(narrow, narrow_sd, broad_sd)
        x = z + sd * torch.randn(n, 2, generator=g, dtype=torch.float64)
        return place(z, dtype, device), place(x, dtype, device)

    def reference_posterior(x: Tensor, n: int, seed: int) -> Tensor:
        return exact_posterior_samples(x, n, seed, half_width, broad_sd, narrow_sd)

    def log_evidence(x: Tensor) -> Tensor:
        return exact_log_evidence(x, half_width, broad_sd, narrow_sd).to(x.device)

    return Task(
        name="spike-slab",
        model=model,
        description=(
            f"Spike and slab: z ~ U[-{half_width:g}, {half_width:g}]^2, x | z ~ 1/2 "
            f"N(z, {broad_sd:g}^2 I) + 1/2 N(z, {narrow_sd:g}^2 I), d = p = 2; each posterior is "
            "a spike on a broad base, truncated to the box. Exact likelihood, evidence and "
            "posterior draws."
        ),
        observations=observations,
        reference_posterior=reference_posterior,
        log_evidence=log_evidence,
        defaults={"num_observations": 100, "num_particles": 1000, "encoder": "flow"},
    )
