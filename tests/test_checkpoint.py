"""Run folders and checkpoints: interruptions lose no work, resumes are exact and checked."""

import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal

from faults import (
    NOISE_SD,
    PRIOR_SD,
    Counted,
    D,
    Emulator,
    FaultyEncoder,
    conjugate,
    g0,
    gaussian_loglik,
    same_training,
    small,
    with_encoder,
)
from smcwake import Model, fit
from smcwake.encoders import GaussianEncoder
from smcwake.train import CHECKPOINT_NAME


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for the whole module (the module-scoped uninterrupted run too), as
    in the child processes, so that runs in different processes are bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_consecutive_non_finite_losses_raise_and_leave_a_usable_checkpoint(tmp_path):
    model, x = conjugate()
    bad_from_13 = FaultyEncoder(range(13, 10**6))
    with pytest.raises(FloatingPointError, match="4 consecutive non-finite losses at step 16"):
        fit(model, x, encoder=bad_from_13, run_dir=tmp_path, **with_encoder(max_bad_steps=4))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["encoder"].values())
    # after the fault is fixed, the run resumes and finishes
    healthy = GaussianEncoder(D, D).double()
    out = fit(
        model,
        x,
        encoder=healthy,
        run_dir=tmp_path,
        resume=True,
        **with_encoder(max_bad_steps=4),
    )
    assert out.history["step"][-1] == 20


def test_floating_point_error_keeps_the_last_good_checkpoint(tmp_path):
    # Parameters that became NaN after checkpoint 10 (a stand-in for an overflowing update)
    # make every later loss NaN. The checkpoint left behind must be the one of step 10: resuming
    # it gives a full, gap-free history and finite parameters.
    model, x = conjugate()

    def poison_at_12(step, encoder, row):
        if step == 12:
            with torch.no_grad():
                next(encoder.parameters()).fill_(math.nan)

    settings = small(steps=20, log_every=1, max_bad_steps=3)
    with pytest.raises(FloatingPointError):
        fit(model, x, run_dir=tmp_path, callbacks=[poison_at_12], **settings)
    out = fit(model, x, run_dir=tmp_path, resume=True, **settings)
    assert out.history["step"] == list(range(1, 21))
    assert all(torch.isfinite(p).all() for p in out.encoder.parameters())


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_during_fit_writes_a_final_checkpoint_and_resume_is_exact(tmp_path, signum, raised):
    model, x = conjugate()
    settings = small(checkpoint_every=1000, log_every=1)
    whole = fit(model, x, **settings)

    def signal_at_7(step, encoder, row):
        if step == 7:
            os.kill(os.getpid(), signum)

    with pytest.raises(raised) as info:
        fit(model, x, run_dir=tmp_path, callbacks=[signal_at_7], **settings)
    if raised is SystemExit:
        assert info.value.code == 128 + signal.SIGTERM
    # the only checkpoint is the one written on the signal, at the step where fit stopped
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["history"]["step"][-1] == 7
    resumed = fit(model, x, run_dir=tmp_path, resume=True, **settings)
    same_training(whole, resumed)


TRAINING_SCRIPT = '''
"""Train on a conjugate Gaussian model; used by the interruption tests."""
import math
import os
import signal
import sys
import time

import torch
from torch.distributions import Independent, Normal

from smcwake import Model, fit

SETTINGS = dict(
    encoder="gaussian", method="smc-wake-c", steps=40, num_particles=50, batch_size=8,
    refresh_every=4, refresh_size=4, smc_batch_size=4, checkpoint_every=5, log_every=1,
    progress=False, seed=3,
)


def build(signal_on_smc_call=None):
    calls = [0]

    def loglik(z, x):
        if z.shape[1] != SETTINGS["num_particles"]:  # the model's fingerprint, not SMC
            return Normal(z, 0.5).log_prob(x[:, None, :]).sum(-1)
        calls[0] += 1
        if calls[0] == signal_on_smc_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return Normal(z, 0.5).log_prob(x[:, None, :]).sum(-1)

    prior = Independent(Normal(torch.zeros(2, dtype=torch.float64), 2.0 * torch.ones(2,
                        dtype=torch.float64)), 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64) * math.sqrt(4.25)
    return Model(prior, loglik), x


if __name__ == "__main__":
    run_dir, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)

    def record(step, encoder, row):
        with open(os.path.join(run_dir, "seen_steps.txt"), "a") as fh:
            fh.write(f"{step}\\n")
        time.sleep(0.05)  # slow enough for the parent to interrupt mid-run

    model, x = build(signal_on_smc_call=1 if mode == "term-in-initial-smc" else None)
    fit(model, x, run_dir=run_dir, callbacks=[record], **SETTINGS)
'''


@pytest.fixture(scope="module")
def training_script(tmp_path_factory):
    """The script's path, its module (build, SETTINGS) and an uninterrupted run of it."""
    folder = tmp_path_factory.mktemp("script")
    path = folder / "train_conjugate.py"
    path.write_text(TRAINING_SCRIPT)
    spec = importlib.util.spec_from_file_location("train_conjugate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, x = module.build()
    whole = fit(model, x, **module.SETTINGS)
    return path, module, whole


def start(script: Path, run_dir: Path, mode: str) -> subprocess.Popen:
    run_dir.mkdir()
    return subprocess.Popen(
        [sys.executable, str(script), str(run_dir), mode],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def saved_step(run_dir: Path) -> int:
    """The last training step recorded by the checkpoint's history (0 before the first)."""
    try:
        steps = json.loads((run_dir / "history.json").read_text())["history"]["step"]
    except FileNotFoundError:
        return 0
    return steps[-1] if steps else 0


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, step: int) -> None:
    """Poll until a checkpoint at training step >= ``step`` is on disk."""
    deadline = time.monotonic() + 120.0
    while saved_step(run_dir) < step:
        if proc.poll() is not None:
            pytest.fail(f"training ended before checkpoint {step}: {proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint at step {step} after 120 s")
        time.sleep(0.005)


def test_sigkill_leaves_the_last_checkpoint_intact_and_resume_is_exact(tmp_path, training_script):
    script, module, whole = training_script
    run_dir = tmp_path / "run"
    proc = start(script, run_dir, "slow")
    wait_for_checkpoint(run_dir, proc, 5)  # the first checkpoint of a training step
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 5 <= saved_step(run_dir) < module.SETTINGS["steps"]  # killed mid-run
    (run_dir / f".{CHECKPOINT_NAME}.tmp-1").write_bytes(b"half a write")  # a leftover temp file
    model, x = module.build()
    resumed = fit(model, x, run_dir=run_dir, resume=True, **module.SETTINGS)
    same_training(whole, resumed)


def test_sigterm_from_outside_writes_a_checkpoint_at_the_step_it_stopped(
    tmp_path, training_script
):
    script, module, whole = training_script
    run_dir = tmp_path / "run"
    proc = start(script, run_dir, "slow")
    wait_for_checkpoint(run_dir, proc, 5)
    time.sleep(0.12)  # land between checkpoints
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    seen = (run_dir / "seen_steps.txt").read_text().split()
    saved = saved_step(run_dir)
    assert saved == int(seen[-1])  # the checkpoint is at the last step taken
    assert saved < module.SETTINGS["steps"]
    model, x = module.build()
    resumed = fit(model, x, run_dir=run_dir, resume=True, **module.SETTINGS)
    same_training(whole, resumed)


def test_sigterm_during_the_initial_smc_writes_a_checkpoint(tmp_path, training_script):
    script, module, whole = training_script
    run_dir = tmp_path / "run"
    proc = start(script, run_dir, "term-in-initial-smc")  # the first SMC evaluation signals
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    # the batch in progress (smc_batch_size=4 of 16 observations) finished and was saved
    counters = torch.load(run_dir / CHECKPOINT_NAME, weights_only=False)["counters"]
    assert counters[6] == 4  # the next observation of the initial SMC
    model, x = module.build()
    resumed = fit(model, x, run_dir=run_dir, resume=True, **module.SETTINGS)
    same_training(whole, resumed)


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=10))
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(fh.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        fit(model, x, run_dir=tmp_path, resume=True, **small(steps=20))
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    out = fit(model, x, run_dir=tmp_path, resume=True, **small(steps=20))
    assert out.history["step"][-1] == 20


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate, "unreadable.*delete it to restart"),
        (lambda path: path.write_bytes(b""), "unreadable"),
        (lambda path: torch.save({"weights": torch.zeros(3)}, path), "not an smcwake v1"),
        (lambda path: torch.save([1, 2, 3], path), "not an smcwake v1"),
    ],
    ids=["truncated", "empty", "foreign-dict", "foreign-list"],
)
def test_a_corrupted_checkpoint_is_refused(tmp_path, damage, message):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    damage(tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=message):
        fit(model, x, run_dir=tmp_path, resume=True, **small())


def test_a_checkpoint_of_other_data_or_settings_is_refused(tmp_path):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    with pytest.raises(ValueError, match="different observations"):
        fit(model, x[:-1], run_dir=tmp_path, resume=True, **small())
    with pytest.raises(ValueError, match="other settings .*method: checkpoint 'smc-wake-c'"):
        fit(model, x, run_dir=tmp_path, resume=True, **small(method="smc-wake-naive"))
    with pytest.raises(ValueError, match="other settings .*seed"):
        fit(model, x, run_dir=tmp_path, resume=True, **small(seed=1))


@pytest.mark.parametrize("case", ["other-model-dimension", "missing-keys"])
def test_a_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path, case):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    path = tmp_path / CHECKPOINT_NAME
    if case == "missing-keys":
        state = torch.load(path, weights_only=False)
        torch.save({"version": state["version"]}, path)
    else:  # same data and settings, but a model with d = 3
        prior = Independent(Normal(torch.zeros(3).double(), torch.ones(3).double()), 1)
        model = Model(prior, lambda z, x: Normal(z[..., :2], 1.0).log_prob(x[:, None]).sum(-1))
    with pytest.raises(ValueError, match="checkpoint"):
        fit(model, x, run_dir=tmp_path, resume=True, **small())


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in (CHECKPOINT_NAME, "history.json")}


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=20))
    before = run_files(tmp_path)
    counted = Counted()
    model, x = conjugate(loglik=counted)
    refused = (
        r"already holds a run \(checkpoint.pt, history.json\); pass resume=True .*overwrite=True"
    )
    with pytest.raises(ValueError, match=refused):
        fit(model, x, run_dir=tmp_path, **small(steps=1))
    with pytest.raises(ValueError, match="resume=True and overwrite=True: choose one"):
        fit(model, x, run_dir=tmp_path, resume=True, overwrite=True, **small(steps=1))
    assert counted.calls == 0  # refused before any likelihood evaluation
    assert run_files(tmp_path) == before
    # asked to, it replaces the run
    out = fit(model, x, run_dir=tmp_path, overwrite=True, **small(steps=1))
    assert out.history["step"] == [1]
    assert json.loads((tmp_path / "history.json").read_text())["history"]["step"] == [1]
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["counters"][0] == 1


def test_a_history_without_its_checkpoint_is_not_overwritten_by_a_resume(tmp_path):
    # a finished benchmark run keeps its history and drops its checkpoint
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    (tmp_path / CHECKPOINT_NAME).unlink()
    history = (tmp_path / "history.json").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run \(history.json\)"):
        fit(model, x, run_dir=tmp_path, **small())
    with pytest.raises(ValueError, match="holds history.json but no checkpoint.pt to resume"):
        fit(model, x, run_dir=tmp_path, resume=True, **small())
    assert (tmp_path / "history.json").read_bytes() == history
    assert fit(model, x, run_dir=tmp_path, overwrite=True, **small()).history["step"][-1] == 20


def test_resume_without_a_run_dir_is_an_error():
    counted = Counted()
    model, x = conjugate(loglik=counted)
    with pytest.raises(ValueError, match="resume=True needs run_dir"):
        fit(model, x, resume=True, **small())
    assert counted.calls == 0


def _unwritable_dirs(tmp_path: Path):
    if Path("/proc/self").is_dir():  # a folder that exists but takes no new files
        yield "proc", Path("/proc/self")
    (tmp_path / "a-file").write_text("")
    yield "below-a-file", tmp_path / "a-file" / "run"
    if os.geteuid() != 0:  # permissions do not bind root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        yield "read-only", locked


def test_an_unwritable_run_dir_is_refused_before_any_smc(tmp_path):
    for label, run_dir in _unwritable_dirs(tmp_path):
        counted = Counted()
        model, x = conjugate(loglik=counted)
        with pytest.raises(ValueError, match=r"run_dir .*: cannot write checkpoints there"):
            fit(model, x, run_dir=run_dir, **small())
        assert counted.calls == 0, label


def wider_noise(z, x):
    return Normal(z, 6 * NOISE_SD).log_prob(x[:, None, :]).sum(-1)


def other_models():
    """(label, model, what the refusal names): each differs from conjugate() in one way."""
    ones = torch.ones(D, dtype=torch.float64)
    yield "likelihood", conjugate(loglik=wider_noise)[0], r"log-likelihood at fixed prior draws"
    prior = Independent(Normal(0 * ones, 3 * ones), 1)
    yield (
        "prior-parameter",
        Model(prior, gaussian_loglik),
        r"base_dist.scale: .*\[2, 2\] vs now \[3, 3\]",
    )
    prior = Independent(torch.distributions.Laplace(0 * ones, PRIOR_SD * ones), 1)
    yield (
        "prior-class",
        Model(prior, gaussian_loglik),
        r"prior class at prior.base_dist: .*normal.Normal vs now .*laplace.Laplace",
    )


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(method="smc-wake-a", steps=10))
    before = run_files(tmp_path)
    for label, other, names in other_models():
        with pytest.raises(ValueError, match=f"made with another model .*{names}"):
            fit(other, x, run_dir=tmp_path, resume=True, **small(method="smc-wake-a"))
        assert run_files(tmp_path) == before, label


def test_resume_accepts_the_same_model_rebuilt_with_other_rounding(tmp_path):
    def same_in_another_order(z, x):
        r = (x[:, None, :] - z) / NOISE_SD
        return (-0.5 * r.square()).sum(-1) - D * (math.log(NOISE_SD) + 0.5 * math.log(2 * math.pi))

    model, x = conjugate()
    z = model.sample_prior((12, 4), generator=g0())
    a, b = gaussian_loglik(z, x), same_in_another_order(z, x)
    assert not torch.equal(a, b)  # premise: not bit-identical ...
    torch.testing.assert_close(a, b)  # ... only rounding apart
    fit(model, x, run_dir=tmp_path, **small(steps=10))
    rebuilt, _ = conjugate(loglik=same_in_another_order)
    assert fit(rebuilt, x, run_dir=tmp_path, resume=True, **small()).history["step"][-1] == 20


class _WideEmulator(Emulator):
    def forward(self, z, x):
        return Normal(z @ self.weight + self.bias, 6 * NOISE_SD).log_prob(x[:, None, :]).sum(-1)


def test_resume_with_a_learned_decoder_checks_the_decoder_state_it_saved(tmp_path):
    model, x = conjugate()
    decoder = Emulator()
    settings = small(decoder_lr=0.05)
    fit(
        Model(model.prior, decoder),
        x,
        run_dir=tmp_path,
        decoder=decoder,
        **{**settings, "steps": 6},
    )
    fresh = Emulator()
    assert not torch.equal(fresh.weight, decoder.weight)  # premise: training moved the decoder
    out = fit(
        Model(model.prior, fresh), x, run_dir=tmp_path, resume=True, decoder=fresh, **settings
    )
    assert out.history["step"][-1] == 20
    other = _WideEmulator()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="another model .*log-likelihood"):
        fit(Model(model.prior, other), x, run_dir=tmp_path, resume=True, decoder=other, **settings)
    for name, value in other.state_dict().items():  # the refused decoder is left as it was
        assert torch.equal(value, before[name]), name


def test_a_checkpoint_without_a_model_fingerprint_resumes_with_a_warning(tmp_path, caplog):
    model, x = conjugate()
    fit(model, x, run_dir=tmp_path, **small(steps=5))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    del state["model"]  # as written before checkpoints carried one
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        out = fit(model, x, run_dir=tmp_path, resume=True, **small())
    assert "no model fingerprint" in caplog.text
    assert out.history["step"][-1] == 20


def test_a_checkpoint_with_seven_counters_and_no_unmixed_column_resumes_exactly(tmp_path):
    # checkpoints written before fit counted unmixed runs hold seven counters and no
    # unmixed_runs column; resuming one continues the run exactly, the count starting at 0
    # (a constant learning rate: a cosine schedule stretches when a resumed run gets more steps)
    model, x = conjugate()
    whole = fit(model, x, **small(lr_schedule="constant"))
    fit(model, x, run_dir=tmp_path, **small(steps=10, lr_schedule="constant"))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    assert len(state["counters"]) == 8
    assert state["counters"][7] == 0  # nothing to lose by dropping it on this model
    state["counters"] = tuple(state["counters"][:7])
    del state["history"]["unmixed_runs"]
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    resumed = fit(model, x, run_dir=tmp_path, resume=True, **small(lr_schedule="constant"))
    same_training(whole, resumed)
    assert resumed.history["unmixed_runs"] == [0] * len(resumed.history["step"])
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["counters"][0] == 20
