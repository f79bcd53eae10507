"""Tests for smcwake.encoder_base: what every encoder family inherits (standardization from
real data, weighted or not, and the optional embedding net), exercised through the Gaussian
family, whose density adds nothing to it."""

import math

import pytest
import torch
from torch import nn

from smcwake.encoder_base import Encoder
from smcwake.encoders import GaussianEncoder


def test_families_share_the_base_class():
    assert issubclass(GaussianEncoder, Encoder)
    from smcwake import encoders

    assert encoders.Encoder is Encoder  # still importable where it used to be defined


def test_weighted_standardization_equals_repetition():
    # integer weights are repeated rows; normalized or not, zero weights drop a row
    encoder, repeated = GaussianEncoder(1, 2), GaussianEncoder(1, 2)
    z = torch.tensor([[0.0, 1.0], [2.0, 5.0], [100.0, -100.0]])
    encoder.set_standardization(z=z, z_weights=torch.tensor([1.0, 3.0, 0.0]))
    repeated.set_standardization(z=z[[0, 1, 1, 1]])
    torch.testing.assert_close(encoder.z_loc, repeated.z_loc)
    torch.testing.assert_close(encoder.z_scale, repeated.z_scale)
    encoder.set_standardization(z=z, z_weights=torch.tensor([0.25, 0.75, 0.0]))
    torch.testing.assert_close(encoder.z_loc, repeated.z_loc)


def test_constant_columns_get_unit_scale():
    encoder = GaussianEncoder(3, 1)
    x = torch.tensor([[1.0, 5e6, -2.0], [3.0, 5e6, -2.0], [5.0, 5e6, -2.0]])
    encoder.set_standardization(x=x)
    torch.testing.assert_close(encoder.x_loc, torch.tensor([3.0, 5e6, -2.0]))
    torch.testing.assert_close(encoder.x_scale, torch.tensor([(8 / 3) ** 0.5, 1.0, 1.0]))


def test_bad_standardization_data_raises():
    encoder = GaussianEncoder(2, 2)
    with pytest.raises(ValueError, match="pass x, z or both"):
        encoder.set_standardization()
    with pytest.raises(ValueError, match=r"z: expected shape \[N, 2\]"):
        encoder.set_standardization(z=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        encoder.set_standardization(x=torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="non-negative"):
        encoder.set_standardization(z=torch.zeros(2, 2), z_weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="all weights are zero"):
        encoder.set_standardization(z=torch.zeros(2, 2), z_weights=torch.zeros(2))
    with pytest.raises(ValueError, match=r"z_weights: expected shape \[2\]"):
        encoder.set_standardization(z=torch.zeros(2, 2), z_weights=torch.ones(3))


def test_embedding_options():
    with pytest.raises(ValueError, match="without an embedding"):
        GaussianEncoder(2, 1, embedding_dim=3)
    with pytest.raises(ValueError, match="pass embedding_dim"):
        GaussianEncoder(2, 1, embedding=nn.Linear(5, 3))  # the dry run on [1, 2] fails
    # batch norm: the dry run runs in eval mode, leaves statistics and training flags alone
    embedding = nn.Sequential(nn.Linear(2, 6), nn.BatchNorm1d(6))
    embedding[1].eval()
    encoder = GaussianEncoder(2, 1, embedding=embedding)
    assert encoder.context_dim == 6
    assert embedding.training
    assert not embedding[1].training
    assert int(embedding[1].num_batches_tracked) == 0
    explicit = GaussianEncoder(2, 1, embedding=nn.Linear(2, 4), embedding_dim=5)
    with pytest.raises(ValueError, match=r"embedding: expected output shape \[B=3, 5\]"):
        explicit.log_prob(torch.zeros(3, 1, 1), torch.zeros(3, 2))
