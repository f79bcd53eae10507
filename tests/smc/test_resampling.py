"""Resampling schemes: unbiased offspring counts, fixed shapes, zero weights never chosen."""

import math

import pytest
import torch

from smcwake.smc.resampling import RESAMPLERS, ess, get_resampler, systematic

SCHEMES = sorted(RESAMPLERS)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_offspring_counts_are_unbiased(scheme, dtype):
    # R independent rows with the same weights: the mean offspring count of particle k must be
    # K * W_k; the multinomial variance K W (1 - W) bounds every scheme's, so 4 s.e. of it is safe.
    K, R = 7, 20_000
    w = torch.tensor([0.02, 0.3, 0.0, 0.18, 0.25, 0.05, 0.2], dtype=dtype)
    log_w = torch.log(w).expand(R, K).clone()
    g = torch.Generator().manual_seed(1)
    anc = RESAMPLERS[scheme](log_w, generator=g)
    assert anc.shape == (R, K)
    assert anc.dtype == torch.int64
    counts = torch.zeros(R, K, dtype=dtype).scatter_add_(1, anc, torch.ones(R, K, dtype=dtype))
    mean = counts.mean(0)
    se = torch.sqrt(K * w * (1 - w) / R)
    assert torch.all((mean - K * w).abs() <= 4 * se + 1e-12), (mean, K * w)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_weights_are_never_selected(scheme):
    # a trailing zero weight is the case float rounding of the CDF can hit
    log_w = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        anc = RESAMPLERS[scheme](log_w, generator=g)
        assert not torch.isin(anc[0], torch.tensor([2, 3])).any()
        assert (anc[1] == 1).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_num_samples_differs_from_k(scheme):
    g = torch.Generator().manual_seed(0)
    anc = RESAMPLERS[scheme](torch.zeros(3, 10), 25, generator=g)
    assert anc.shape == (3, 25)
    assert anc.min() >= 0
    assert anc.max() < 10


def test_systematic_is_deterministic_for_equal_weights():
    # with equal weights every particle is kept exactly once, whatever the uniform
    g = torch.Generator().manual_seed(3)
    anc = systematic(torch.zeros(4, 9), generator=g)
    assert torch.equal(anc, torch.arange(9).expand(4, 9))


def test_ess_extremes():
    # one live weight -> 1, equal weights -> K (also for huge log-weights: log space throughout)
    log_w = torch.tensor([[0.0, -math.inf, -math.inf], [500.0, 500.0, 500.0]])
    torch.testing.assert_close(ess(log_w), torch.tensor([1.0, 3.0]))


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="unknown scheme 'bogus'"):
        get_resampler("bogus")
