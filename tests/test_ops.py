"""The small numerical helpers of ``smcwake._ops`` against the torch operations they replace."""

from __future__ import annotations

import pytest
import torch

from smcwake._ops import all_last


@pytest.mark.parametrize("shape", [(3, 7, 10), (5, 2), (4, 1), (4, 0), (2, 3, 5)])
def test_all_last_is_torch_all_over_the_last_axis(shape):
    g = torch.Generator().manual_seed(0)
    # mostly True, so that whole rows hold and rows with one False entry both occur
    mask = torch.rand(shape, generator=g) < 0.9
    assert torch.equal(all_last(mask), mask.all(-1))
    assert torch.equal(all_last(mask.mT), mask.mT.all(-1))  # a non-contiguous view
    assert torch.equal(all_last(~mask), (~mask).all(-1))


def test_all_last_counts_past_the_range_of_a_byte():
    # 300 entries, one False: a sum kept in 8 bits would wrap around and answer wrongly
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 7] = False
    assert all_last(mask).tolist() == [True, False]
