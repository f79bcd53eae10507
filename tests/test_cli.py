"""The smcwake command: every subcommand runs end to end on tiny budgets."""

import json
import subprocess
import sys

import pytest
import torch

from smcwake import cli

FAST = ["--no-progress", "--c2st-observations", "0", "--num-samples", "100"]


@pytest.fixture(autouse=True)
def _threads_restored():
    before = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == before  # main() puts the thread count back


def test_parser_reads_every_subcommand():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["fit", "--task", "two-moons", "--method", "wake", "--steps", "5", "--out", "d"]
    )
    assert (args.command, args.task, args.method, args.steps) == ("fit", "two-moons", "wake", 5)
    args = parser.parse_args(["bench", "toy-collapse", "--seeds", "2", "--out", "d"])
    assert args.methods is None  # the task's own list
    assert args.seeds == 2
    assert parser.parse_args(["report", "d"]).dir == "d"
    assert parser.parse_args(["demo"]).out == "runs/demo"
    assert cli._settings(["runs_per_step=1", "smc.kernel=mala", "grad_clip=null"]) == {
        "runs_per_step": 1,
        "smc.kernel": "mala",
        "grad_clip": None,
    }


def test_fit_writes_metrics_and_report_then_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--threads", "1", "fit", "--task", "toy-collapse", "--method", "smc-wake-a"]
    opts = ["--num-observations", "12", "--num-particles", "50", "--batch-size", "6", *FAST]
    assert cli.main([*common, "--steps", "10", "--out", str(out), *opts]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 10
    assert metrics["method"] == "smc-wake-a"
    assert {"forward_kl", "reverse_kl", "mean_l1", "coverage_error"} <= set(metrics["metrics"])
    assert (out / "report.md").exists()
    assert (out / "curves.png").exists()
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    assert cli.main([*common, "--steps", "20", "--out", str(out), "--resume", *opts]) == 0
    history = json.loads((out / "history.json").read_text())["history"]
    assert history["step"][-1] == 20


def test_fit_refuses_a_method_the_task_cannot_run(tmp_path, capsys):
    args = ["fit", "--task", "two-moons", "--method", "elbo", "--out", str(tmp_path), *FAST]
    args += ["--set", "support_transform=false"]  # q on all of R^2: the bound is undefined
    assert cli.main(args) == 2
    assert "bounded support" in capsys.readouterr().err


def test_bench_then_report_rebuilds_from_json(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--threads", "1", "bench", "toy-collapse", "--methods", "smc-wake-c,wake,elbo"]
    args += ["--seeds", "2", "--steps", "10", "--out", str(out), "--encoder", "mdn"]
    args += ["--num-observations", "10", "--num-particles", "50", *FAST]
    assert cli.main(args) == 0
    report = (out / "report.md").read_text()
    for row in ("| smc-wake-c | 2 |", "| wake | 2 |", "| elbo | — | not run: the mixture"):
        assert row in report
    assert "wake seed 1:" in capsys.readouterr().out
    (out / "report.md").unlink()
    (out / "curves.png").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    assert (out / "curves.png").exists()


def test_demo_on_a_tiny_budget(tmp_path, monkeypatch, capsys):
    settings = {**cli.DEMO_SETTINGS, "num_observations": 12}
    settings["overrides"] = {**settings["overrides"], "num_particles": 50, "batch_size": 6}
    monkeypatch.setattr(cli, "DEMO_SETTINGS", settings)
    monkeypatch.setattr(
        cli,
        "DEMO_EVAL",
        {"c2st_observations": 1, "c2st_samples": 60, "num_samples": 100, "grid_size": 128},
    )
    out = tmp_path / "demo"
    assert cli.main(["--threads", "1", "demo", "--out", str(out), "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    assert "C2ST" in printed
    assert (out / "posteriors.png").exists()
    assert (out / "coverage.png").exists()


def test_python_dash_m_smcwake():
    done = subprocess.run(
        [sys.executable, "-m", "smcwake", "--help"], capture_output=True, text=True, check=True
    )
    assert "fit" in done.stdout
    assert "demo" in done.stdout
