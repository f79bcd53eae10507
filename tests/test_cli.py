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
    # the folder holds a run: without --resume or --overwrite it is left alone
    before = (out / "metrics.json").read_bytes()
    assert cli.main([*common, "--steps", "20", "--out", str(out), *opts]) == 2
    assert "already holds a run (checkpoint.pt, history.json, results.json)" in (
        err := capsys.readouterr().err
    )
    assert "--resume" in err
    assert "--overwrite" in err
    assert (out / "metrics.json").read_bytes() == before
    with pytest.raises(SystemExit):  # one or the other
        cli.main([*common, "--out", str(out), "--resume", "--overwrite", *opts])
    assert cli.main([*common, "--steps", "20", "--out", str(out), "--resume", *opts]) == 0
    history = json.loads((out / "history.json").read_text())["history"]
    assert history["step"][-1] == 20
    assert cli.main([*common, "--steps", "5", "--out", str(out), "--overwrite", *opts]) == 0
    history = json.loads((out / "history.json").read_text())["history"]
    assert history["step"] == [1, 2, 3, 4, 5]  # a new run (the bench logs every step)


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
    # run again into the same folder: refused unless --resume (reuse) or --overwrite (afresh)
    assert cli.main(args) == 2
    assert "already holds a run (results.json, runs)" in capsys.readouterr().err
    runs = json.loads((out / "results.json").read_text())["methods"]
    assert cli.main([*args, "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["methods"] == runs  # all reused
    again = [*args[: args.index("--methods") + 1], "wake", *args[args.index("--seeds") :]]
    assert cli.main([*again, "--steps", "4", "--overwrite"]) == 0
    runs = json.loads((out / "results.json").read_text())["methods"]["wake"]["runs"]
    assert [run["steps"] for run in runs] == [4, 4]


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
    assert f"figure: {out / 'pairplot.png'}" in printed  # smcwake.plot's figures
    assert (out / "coverage_band.png").exists()
    # a second demo into the folder continues the first; --overwrite starts afresh
    assert cli.main(["--threads", "1", "demo", "--out", str(out), "--steps", "6"]) == 0
    assert f"continuing the demo in {out}" in capsys.readouterr().out
    assert json.loads((out / "history.json").read_text())["history"]["step"][-1] == 6
    assert cli.main(["demo", "--out", str(out), "--steps", "2", "--overwrite"]) == 0
    assert "continuing" not in capsys.readouterr().out
    assert json.loads((out / "history.json").read_text())["history"]["step"] == [1, 2]


def test_demo_refuses_a_folder_that_holds_another_kind_of_run(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"kind": "bench"}))
    assert cli.main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 2
    assert "holds a bench run, not a demo; pass --overwrite" in capsys.readouterr().err


def test_python_dash_m_smcwake():
    done = subprocess.run(
        [sys.executable, "-m", "smcwake", "--help"], capture_output=True, text=True, check=True
    )
    assert "fit" in done.stdout
    assert "demo" in done.stdout
