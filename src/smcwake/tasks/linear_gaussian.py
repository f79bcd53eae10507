"""Linear Gaussian model with an exact posterior (the paper's linear Gaussian).

z ~ N(0, I_d), x | z ~ N(A z, noise^2 I_p), with A = scale * (G + c [I_d; 0]): G has iid N(0, 1)
entries drawn from ``matrix_seed`` and c = ``identity_weight`` (0.01) adds a small identity block
in the top d rows. Everything is Gaussian, so

    posterior covariance  S = (I + A^T A / noise^2)^-1,   posterior mean  S A^T x / noise^2,
    evidence              p(x) = N(x; 0, noise^2 I + A A^T),

computed once in float64 from Cholesky factors. :func:`build_linear_gaussian` is shared with the
many-samplers task.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from smcwake.model import Model
from smcwake.tasks import Task
from smcwake.tasks._common import check_count, make_generator, place

__all__ = ["build_linear_gaussian", "design_matrix", "linear_gaussian"]

_LOG_2PI = math.log(2 * math.pi)


def design_matrix(
    d: int,
    p: int,
    *,
    scale: float = 1.0,
    identity_weight: float = 0.01,
    matrix_seed: int = 0,
) -> Tensor:
    """A = scale * (G + c [I_d; 0]) with G iid N(0, 1) from ``matrix_seed`` (float64, CPU).

    ``torch.eye(p, d)`` places the identity in the top d rows (the top p columns when p < d).

    Shapes: -> A [p, d].

    >>> design_matrix(2, 3).shape
    torch.Size([3, 2])
    """
    check_count(d, "d")
    check_count(p, "p")
    g = make_generator(matrix_seed)
    G = torch.randn(p, d, generator=g, dtype=torch.float64)
    return scale * (G + identity_weight * torch.eye(p, d, dtype=torch.float64))


def build_linear_gaussian(
    name: str,
    summary: str,
    defaults: dict[str, Any],
    *,
    d: int,
    p: int,
    noise: float,
    scale: float,
    identity_weight: float,
    matrix_seed: int,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Task:
    """The linear Gaussian task under a given name, description head and defaults.

    Shapes: z [B, K, d], x [B, p]; A [p, d].
    """
    if not noise > 0:
        raise ValueError(f"noise: expected a standard deviation > 0, received {noise!r}")
    A64 = design_matrix(
        d, p, scale=scale, identity_weight=identity_weight, matrix_seed=matrix_seed
    )
    # Posterior precision I + A^T A / noise^2 = L L^T; covariance L^-T L^-1.
    chol_precision = torch.linalg.cholesky(
        torch.eye(d, dtype=torch.float64) + A64.mT @ A64 / noise**2
    )
    cov64 = torch.cholesky_inverse(chol_precision)
    # Evidence covariance noise^2 I + A A^T = M M^T.
    chol_marginal = torch.linalg.cholesky(
        noise**2 * torch.eye(p, dtype=torch.float64) + A64 @ A64.mT
    )
    A = place(A64, dtype, device)
    prior = Independent(
        Normal(
            torch.zeros(d, dtype=dtype, device=device), torch.ones(d, dtype=dtype, device=device)
        ),
        1,
    )
    log_norm = -p * math.log(noise) - 0.5 * p * _LOG_2PI

    def log_likelihood(z: Tensor, x: Tensor) -> Tensor:
        A_ = A.to(dtype=z.dtype, device=z.device)
        resid = x[:, None, :] - z @ A_.mT  # [B, K, p]
        return -0.5 * resid.square().sum(-1) / noise**2 + log_norm

    def simulate(z: Tensor) -> Tensor:
        A_ = A.to(dtype=z.dtype, device=z.device)
        mean = z @ A_.mT
        return mean + noise * torch.randn_like(mean)

    model = Model(prior, log_likelihood, simulate=simulate, name=name)

    def observations(n: int, seed: int) -> tuple[Tensor, Tensor]:
        g = make_generator(seed)
        z = torch.randn(check_count(n), d, generator=g, dtype=torch.float64)
        x = z @ A64.mT + noise * torch.randn(n, p, generator=g, dtype=torch.float64)
        return place(z, dtype, device), place(x, dtype, device)

    def _mean(x: Tensor) -> Tensor:
        """Posterior means in float64 on the CPU. Shapes: x [B, p] -> [B, d]."""
        return (x.detach().to(dtype=torch.float64, device="cpu") @ A64) @ cov64 / noise**2

    def posterior_moments(x: Tensor) -> tuple[Tensor, Tensor]:
        cov = cov64.expand(x.shape[0], d, d)
        return place(_mean(x), x.dtype, x.device), place(cov, x.dtype, x.device)

    def reference_posterior(x: Tensor, n: int, seed: int) -> Tensor:
        eps = torch.randn(
            x.shape[0], check_count(n), d, generator=make_generator(seed), dtype=torch.float64
        )
        # z = mean + L^-T eps has covariance L^-T L^-1 = (I + A^T A / noise^2)^-1.
        dev = torch.linalg.solve_triangular(chol_precision.mT, eps.mT, upper=True).mT
        return place(_mean(x)[:, None, :] + dev, x.dtype, x.device)

    def log_evidence(x: Tensor) -> Tensor:
        x64 = x.detach().to(dtype=torch.float64, device="cpu")
        white = torch.linalg.solve_triangular(chol_marginal, x64.mT, upper=False)  # [p, B]
        half_log_det = torch.log(torch.diagonal(chol_marginal)).sum()
        value = -0.5 * white.square().sum(0) - half_log_det - 0.5 * p * _LOG_2PI
        return place(value, x.dtype, x.device)

    description = (
        f"{summary} z ~ N(0, I_{d}), x | z ~ N(A z, {noise:g}^2 I_{p}), "
        f"A = {scale:g} (G + {identity_weight:g} [I; 0]), G iid N(0, 1) from matrix_seed "
        f"{matrix_seed}. Exact posterior samples, moments and log evidence."
    )
    return Task(
        name=name,
        model=model,
        description=description,
        observations=observations,
        reference_posterior=reference_posterior,
        posterior_moments=posterior_moments,
        log_evidence=log_evidence,
        defaults={**defaults, "design_matrix": A},
    )


def linear_gaussian(
    *,
    d: int = 50,
    p: int = 100,
    noise: float = 1.0,
    scale: float = 1.0,
    identity_weight: float = 0.01,
    matrix_seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Task:
    """Linear Gaussian task: d = 50 latents, p = 100 observed, exact posterior and evidence.

    Args:
        noise: observation noise standard deviation.
        scale: multiplies A (the many-samplers task uses 10).
        identity_weight: c in A = scale (G + c [I; 0]).
        matrix_seed: seeds G (fixed per task; observations take their own seed).

    ``defaults``: ``num_observations`` (50), ``num_particles`` (1000), ``encoder``
    (``"gaussian"``, full-rank), ``num_steps``, ``methods`` and ``metrics`` to
    compare (the paper's linear Gaussian), and ``design_matrix`` (A [p, d] in the task's dtype).

    Shapes: z [B, K, d], x [B, p].

    >>> task = linear_gaussian(d=2, p=3)
    >>> z, x = task.observations(4, seed=0)
    >>> task.posterior_moments(x)[1].shape, task.log_evidence(x).shape
    (torch.Size([4, 2, 2]), torch.Size([4]))
    """
    return build_linear_gaussian(
        "linear-gaussian",
        "Linear Gaussian (the paper's linear Gaussian):",
        {
            "num_observations": 50,
            "num_particles": 1000,
            "encoder": "gaussian",
            "num_steps": 10_000,
            "methods": ["smc-wake-a", "smc-wake-b", "smc-wake-c", "smc-wake-pimh", "msc", "wake"],
            "metrics": ["mean_l1", "forward_kl", "reverse_kl"],
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
