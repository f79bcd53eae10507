"""forked_rng: draws that cannot take a generator still come from one, and leave torch's alone."""

import pytest
import torch

from smcwake._rng import forked_rng


def test_draws_inside_depend_only_on_the_generator_and_the_global_state_is_restored():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with forked_rng(torch.Generator().manual_seed(5)):
        first = torch.randn(4)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # another global state: the same draws inside
    with forked_rng(torch.Generator().manual_seed(5)):
        again = torch.randn(4)
    assert torch.equal(first, again)
    with forked_rng(torch.Generator().manual_seed(6)):
        other = torch.randn(4)
    assert not torch.equal(first, other)


def test_it_takes_exactly_one_draw_from_the_generator():
    used, fresh = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    with forked_rng(used):
        torch.rand(100)  # global draws inside do not touch the generator
    torch.randint(0, 2**62, (1,), generator=fresh)
    assert torch.equal(used.get_state(), fresh.get_state())


def test_without_a_generator_nothing_is_forked():
    torch.manual_seed(7)
    with forked_rng(None):
        inside = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(6), torch.cat([inside, after]))  # one global stream


def test_its_old_home_in_the_model_module_is_deprecated():
    import smcwake.model

    with pytest.warns(FutureWarning, match="smcwake.model.forked_rng is deprecated"):
        assert smcwake.model.forked_rng is forked_rng
