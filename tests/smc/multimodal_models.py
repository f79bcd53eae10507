"""Models with exact posteriors shared by the tests of the multimodal moves.

``mixture_prior_model``: a two-component Gaussian-mixture prior with a Gaussian likelihood, whose
posterior weights and evidence have closed forms. ``standard_normal_model``: N(0, I_d) as a prior
without likelihood, so every tempered target is N(0, I_d) itself.
"""

import math

import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from smcwake import Model

DT = torch.float64

MU, NOISE, D = 12.0, 0.5, 3
E = torch.ones(D, dtype=DT) / math.sqrt(D)
LOCS = torch.stack([-MU * E, MU * E])
PRIOR_WEIGHTS = torch.tensor([0.25, 0.75], dtype=DT)


def mixture_prior_model() -> Model:
    """0.25 N(-12 e, I_3) + 0.75 N(12 e, I_3) prior, x | z ~ N(z, 0.5^2 I_3)."""
    prior = MixtureSameFamily(
        Categorical(probs=PRIOR_WEIGHTS), Independent(Normal(LOCS, torch.ones_like(LOCS)), 1)
    )
    return Model(prior, lambda z, x: Normal(z, NOISE).log_prob(x[:, None, :]).sum(-1))


def mixture_truth(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior weight of the first component and log evidence. Shapes: x [B, D] -> [B], [B]."""
    marginal = Normal(LOCS[:, None, :], math.sqrt(1 + NOISE**2)).log_prob(x).sum(-1)  # [2, B]
    log_joint = torch.log(PRIOR_WEIGHTS)[:, None] + marginal
    log_evidence = torch.logsumexp(log_joint, 0)
    return torch.exp(log_joint[0] - log_evidence), log_evidence


def observation_with_weight(p: float) -> torch.Tensor:
    """x = t e with posterior weight p on the first component (log odds linear in t)."""
    t = (
        (math.log((1 - p) / p) - math.log(PRIOR_WEIGHTS[1] / PRIOR_WEIGHTS[0]))
        * (1 + NOISE**2)
        / (2 * MU)
    )
    return t * E


def standard_normal_model(d: int = 2) -> Model:
    """N(0, I_d) as a prior without likelihood: the tempered target is N(0, I_d) itself."""
    prior = Independent(Normal(torch.zeros(d, dtype=DT), torch.ones(d, dtype=DT)), 1)
    return Model(prior, lambda z, x: torch.zeros(z.shape[:2], dtype=z.dtype))
