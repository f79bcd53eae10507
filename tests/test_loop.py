"""The pieces under fit: a loop written with them makes fit's run, step for step."""

import pytest
import torch

from faults import conjugate
from smcwake import TrainConfig, fit
from smcwake.loop import HISTORY_COLUMNS, init_training, initial_smc, train_step


@pytest.mark.parametrize("method", ["smc-wake-a", "msc", "sleep"])
def test_a_loop_over_init_training_and_train_step_is_fit(method):
    model, x = conjugate(n=10)
    config = TrainConfig(
        method=method,
        encoder="gaussian",
        steps=12,
        num_particles=30,
        num_proposals=8,
        batch_size=4,
        refresh_every=5,
        log_every=4,
        progress=False,
    )
    out = fit(model, x, config=config)
    state = init_training(model, x, config)
    saved = []
    initial_smc(state, model, x, save=lambda s: saved.append(s.initial_next))
    losses = [float(train_step(state, model, x)[0].detach()) for _ in range(config.steps)]
    for name, p in out.encoder.state_dict().items():
        assert torch.equal(p, state.encoder.state_dict()[name]), name
    assert losses[3::4] == out.history["loss"]  # rows at steps 4, 8, 12
    assert list(out.history) == list(HISTORY_COLUMNS)
    assert state.step == config.steps
    if method == "smc-wake-a":
        assert saved == [10]  # one save, once every observation has its run
        assert torch.equal(out.bank.z, state.bank.z)
        assert state.evals > 0
    else:
        assert saved == []
        assert state.bank is None
    assert (state.chains is not None) == (method == "msc")
    assert state.simulations == (config.steps * 4 * 8 if method == "sleep" else 0)
