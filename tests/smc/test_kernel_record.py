"""A built kernel is a frozen MoveKernel from make_kernel; a plain function still works."""

import dataclasses

import pytest
import torch

from faults import conjugate, g0
from smcwake import run_smc
from smcwake.smc import base
from smcwake.smc.base import MoveKernel, make_kernel
from smcwake.smc.kernels import KERNEL_NAMES, get_kernel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_every_named_kernel_is_a_frozen_record(name):
    kernel = get_kernel(name)
    assert isinstance(kernel, MoveKernel)
    assert isinstance(kernel.num_steps, int)
    assert kernel.num_steps >= 1
    assert 0.0 < kernel.target_acceptance < 1.0
    assert kernel.initial_scale > 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        kernel.name = "renamed"


def test_the_default_gain_is_the_named_constant():
    kernel = make_kernel(
        lambda *args: None, target_acceptance=0.3, initial_scale=1.0, num_steps=1, name="k"
    )
    assert kernel.adaptation_gain == base.ADAPTATION_GAIN
    assert (kernel.uses_scale, kernel.resamples, kernel.choose) == (True, False, None)


def test_calling_the_record_calls_its_move():
    model, x = conjugate(2)
    inner = get_kernel("rwmh", 2)
    calls = []

    def move(state, target, generator, chol):
        calls.append(state.z.shape)
        return inner(state, target, generator, chol)

    wrapped = dataclasses.replace(inner, move=move)
    a = run_smc(model, x, 20, kernel=wrapped, generator=g0())
    b = run_smc(model, x, 20, kernel=get_kernel("rwmh", 2), generator=g0())
    assert len(calls) == int(a.num_stages.max())
    assert torch.equal(a.particles, b.particles)


def test_a_scale_free_move_needs_no_scale_settings():
    def move(*args):
        return None

    free = make_kernel(move, num_steps=2, name="free", uses_scale=False)
    assert (free.target_acceptance, free.initial_scale) == (0.5, 1.0)  # placeholders
    with pytest.raises(TypeError, match="needs target_acceptance and initial_scale"):
        make_kernel(move, num_steps=2, name="scaled")
