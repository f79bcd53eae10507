"""Digits task: binarized real images, splits, and the learned linear-sigmoid decoder."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from smcwake.tasks import get
from smcwake.tasks.digits import LinearSigmoidDecoder, digits_task, load_digits_binary


def test_data_is_binary_and_split_by_seed():
    data = load_digits_binary()
    assert data.train.shape[1] == data.test.shape[1] == 64
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == round(0.2 * 1797)
    assert set(data.train.unique().tolist()) == {0.0, 1.0}
    assert set(data.test.unique().tolist()) == {0.0, 1.0}
    # Binarized at pixel > 8: the fraction of ones equals that of the raw data.
    raw = load_digits().data
    ones = float(torch.cat([data.train, data.test]).mean())
    assert ones == pytest.approx(float((raw > 8).mean()), abs=1e-6)
    again = load_digits_binary()
    assert torch.equal(again.train, data.train)
    assert torch.equal(again.test, data.test)
    other = load_digits_binary(split_seed=1)
    assert not torch.equal(other.test, data.test)


def test_one_class():
    data = load_digits_binary(digit=3, test_fraction=0.25)
    total = int((load_digits().target == 3).sum())
    assert len(data.train) + len(data.test) == total
    assert (data.train_labels == 3).all()
    assert (data.test_labels == 3).all()
    with pytest.raises(ValueError, match="digit: expected None"):
        load_digits_binary(digit=10)


def test_decoder_likelihood_equals_direct_bernoulli():
    decoder = LinearSigmoidDecoder(
        4, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    x = load_digits_binary(dtype=torch.float64).train[:5]  # [B, 64]
    z = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        probs = torch.sigmoid(z @ decoder.weight.T + decoder.bias).numpy()  # [B, K, 64]
    xn = x.numpy()[:, None, :]
    direct = (xn * np.log(probs) + (1 - xn) * np.log1p(-probs)).sum(-1)
    np.testing.assert_allclose(decoder.log_likelihood(z, x).detach().numpy(), direct, rtol=1e-10)
    # Also against torch's Bernoulli distribution.
    bern = torch.distributions.Bernoulli(logits=decoder(z)).log_prob(x[:, None, :]).sum(-1)
    torch.testing.assert_close(decoder.log_likelihood(z, x), bern)


def test_decoder_is_stable_for_saturated_logits():
    decoder = LinearSigmoidDecoder(2, 64, dtype=torch.float32)
    with torch.no_grad():
        decoder.weight.mul_(1e4)
    x = load_digits_binary().train[:3]
    z = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0))
    loglik = decoder.log_likelihood(z, x)
    # Premise: sigmoid saturates to exactly 0 or 1 in float32, so log(p) would give -inf.
    assert ((torch.sigmoid(decoder(z)) == 0) | (torch.sigmoid(decoder(z)) == 1)).any()
    assert torch.isfinite(loglik).all()
    assert (loglik < 0).all()


def test_model_reads_the_current_decoder_parameters():
    task, decoder = digits_task(digit=0, latent_dim=3)
    assert task.defaults["decoder"] is decoder
    _, x = task.observations(4, 0)
    z = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0))
    before = task.model.log_likelihood(z, x)
    torch.testing.assert_close(before, decoder.log_likelihood(z, x))
    with torch.no_grad():
        decoder.bias.add_(1.0)
    after = task.model.log_likelihood(z, x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, decoder.log_likelihood(z, x))
    # Gradients reach the decoder (learned jointly with the encoder).
    after.sum().backward()
    assert decoder.weight.grad is not None
    assert torch.isfinite(decoder.weight.grad).all()
    assert decoder.weight.grad.abs().sum() > 0


def test_observations_are_training_images_with_unknown_latents():
    task = get("digits", digit=5, latent_dim=4)
    data = load_digits_binary(digit=5)
    z, x = task.observations(10, 2)
    assert z.shape == (10, 4)
    assert z.isnan().all()
    # Every observation is one of the training images.
    matches = (x[:, None, :] == data.train[None]).all(-1).any(-1)
    assert matches.all()
    held_out = task.defaults["held_out"]()
    assert torch.equal(held_out, data.test)
    assert task.reference_posterior is None
    assert task.posterior_moments is None
    assert task.log_evidence is None
    with pytest.raises(ValueError, match="n: expected at most"):
        task.observations(len(data.train) + 1, 0)


def test_decoder_initialisation_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    _, d1 = digits_task(init_seed=3)
    _, d2 = digits_task(init_seed=3)
    _, d3 = digits_task(init_seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(d1.weight, d2.weight)
    assert not torch.equal(d1.weight, d3.weight)
    # The bias starts at the logit of the smoothed training pixel means.
    train = load_digits_binary().train.double()
    expected = torch.logit((train.sum(0) + 0.5) / (len(train) + 1.0)).float()
    torch.testing.assert_close(d1.bias.detach(), expected)
