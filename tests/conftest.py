"""Shared test fixtures: every test runs with a fixed seed and must leave torch's globals alone."""

import pytest
import torch
import zuko  # noqa: F401  (imported first: importing it changes torch's validation default)
from torch.distributions import Distribution


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--dtype", default="float64", choices=["float32", "float64"])


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture(autouse=True)
def _isolated_torch_state():
    """Fixed seed inside a forked RNG; fail if the test changed dtype, device or validation."""
    before = (torch.get_default_dtype(), torch.empty(0).device, Distribution._validate_args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    after = (torch.get_default_dtype(), torch.empty(0).device, Distribution._validate_args)
    assert after == before, f"test changed torch global state: {before} -> {after}"


@pytest.fixture
def one_thread():
    """One intra-op thread (small tensors; and results reproduce bit for bit), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
