"""The peer benchmarks (benchmarks/peers_smc.py, peers_amortized.py) on a tiny setting.

The scripts run in a subprocess, as a user runs them, with every peer named: a peer whose
package is installed (the optional extra ``smcwake[peers]``) must produce a row of numbers, one
that is not must produce a row saying so. smcwake's own row, the table writer and the figure
are checked everywhere, the peers where they are installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PEERS = {"BlackJAX": "blackjax", "particles": "particles", "PyMC": "pymc"}


def installed(module: str) -> bool:
    """Whether ``module`` can be found (an import hook that refuses it counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def run_script(script: str, *args: str, tmp: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def rows(doc: str) -> dict[tuple[str, str, str], list[str]]:
    """Table rows of the SMC section by (problem, B, tool)."""
    out = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[1].isdigit():
            out[(cells[0], cells[1], cells[2])] = cells
    return out


@pytest.fixture(scope="module")
def smc_doc(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("peers")
    run_script(
        "peers_smc.py",
        "--problems",
        "linear-gaussian-10d,squares-5d",
        "--batches",
        "3",
        "--num-particles",
        "200",
        "--repeats",
        "1",
        "--loop-budget",
        "1",
        "--out",
        str(tmp / "PEERS.md"),
        "--plot",
        str(tmp / "peers-smc.png"),
        tmp=tmp,
    )
    assert (tmp / "peers-smc.png").stat().st_size > 1000
    return (tmp / "PEERS.md").read_text()


def test_section_and_command_line(smc_doc):
    assert "<!-- begin smc-engine -->" in smc_doc
    assert "<!-- end smc-engine -->" in smc_doc
    # the exact command, so the numbers can be regenerated
    assert "`python benchmarks/peers_smc.py --problems linear-gaussian-10d,squares-5d" in smc_doc
    assert smc_doc.startswith("# smcwake beside the tools")


def test_rerunning_one_problem_keeps_the_other_rows(smc_doc, tmp_path):
    doc = tmp_path / "PEERS.md"
    doc.write_text(smc_doc)
    run_script(
        "peers_smc.py",
        *("--problems", "squares-5d", "--peers", "smcwake", "--keep-other-rows"),
        *("--batches", "3", "--num-particles", "200", "--repeats", "1"),
        *("--out", str(doc), "--plot", str(tmp_path / "peers-smc.png")),
        tmp=tmp_path,
    )
    before, after = rows(smc_doc), rows(doc.read_text())
    kept = {k: v for k, v in before.items() if k[0] == "linear-gaussian-10d"}
    assert kept
    assert {k: v for k, v in after.items() if k[0] == "linear-gaussian-10d"} == kept
    assert {k for k in after if k[0] == "squares-5d"} == {("squares-5d", "3", "smcwake")}
    # the kept rows name the run they came from
    assert (
        "Rows of linear-gaussian-10d are from `python benchmarks/peers_smc.py --problems "
        "linear-gaussian-10d,squares-5d" in doc.read_text()
    )


def test_compare_with_an_earlier_revision(tmp_path):
    # HEAD against the working tree: both versions load side by side and print one line
    out = run_script(
        "peers_smc.py",
        *("--compare-with", "HEAD", "--problems", "squares-5d", "--batches", "2"),
        *("--num-particles", "100", "--repeats", "1"),
        tmp=tmp_path,
    )
    line = next(ln for ln in out.splitlines() if ln.startswith("squares-5d B=2:"))
    assert re.search(r"\(x[0-9.]+\); \|dlogZ\| [0-9.]+ -> [0-9.]+", line), line


@pytest.mark.parametrize("problem", ["linear-gaussian-10d", "squares-5d"])
def test_smcwake_row_against_truth(smc_doc, problem):
    cells = rows(smc_doc)[(problem, "3", "smcwake")]
    seconds, ratio, log_z_err, mean_err, evals = cells[3:8]
    assert float(seconds) > 0
    assert ratio == "1.00"
    # K = 200 on these problems: errors of a few tenths; a misaligned truth (wrong observation
    # or sign) gives errors of several posterior sds and tens of nats
    assert float(mean_err) < 1.0
    assert float(log_z_err) < 3.0
    assert int(evals.replace(",", "")) >= 200  # at least the prior draws


@pytest.mark.parametrize("tool", list(PEERS))
def test_peer_row(smc_doc, tool):
    cells = rows(smc_doc)[("linear-gaussian-10d", "3", tool)]
    if not installed(PEERS[tool]):
        assert "not installed" in cells[-1]
        return
    assert re.fullmatch(r"[0-9.e+-]+", cells[3]), cells  # seconds
    assert float(cells[6]) < 1.5, cells  # posterior-mean error in sds: a working sampler


@pytest.mark.slow  # about 5 minutes: C2ST and sbi's leakage-corrected densities dominate
@pytest.mark.skipif(not installed("sbi"), reason="sbi (smcwake[peers]) not installed")
def test_amortized_tiny(tmp_path):
    out = tmp_path / "PEERS.md"
    run_script(
        "peers_amortized.py",
        "--parts",
        "amortized",
        "--tasks",
        "linear-gaussian-10d",
        "--marks",
        "0.01",
        "--budgets",
        "1",
        "--simulations",
        "300",
        "--observations",
        "20",
        "--fit-options",
        "num_particles=100,steps=20",
        "--out",
        str(out),
        tmp=tmp_path,
    )
    doc = out.read_text()
    assert "<!-- begin amortized-linear-gaussian-10d -->" in doc
    assert "| NPE | N = 300 |" in doc
    assert "| SMC-Wake | step" in doc
    rows = json.loads(
        (tmp_path / "results" / "peers_amortized-linear-gaussian-10d.json").read_text()
    )
    assert rows["tasks"]["linear-gaussian-10d"]["npe"][0]["N"] == 300
    assert (tmp_path / "peers-amortized.png").stat().st_size > 0


@pytest.mark.slow  # about 20 s: the exact reference and C2ST of the SMC-Wake row
def test_amortized_reuses_the_earlier_npe_rows(tmp_path):
    """--reuse-npe takes NPE's rows from the results file and trains SMC-Wake alone."""
    folder = tmp_path / "results"
    folder.mkdir()
    scores = {"c2st": 0.61, "forward_kl": 0.987, "coverage_error": 0.05}
    earlier = {"N": 4321, "minutes": 0.5, "calls": 4321, "scores": {"in": scores}}
    task = {"linear-gaussian-10d": {"npe": [earlier], "smc": []}}
    path = folder / "peers_amortized-linear-gaussian-10d.json"
    path.write_text(json.dumps({"tasks": task, "out_of_distribution": {}}))
    out = tmp_path / "PEERS.md"
    run_script(
        "peers_amortized.py",
        "--parts",
        "amortized",
        "--tasks",
        "linear-gaussian-10d",
        "--marks",
        "0.001",
        "--budgets",
        "1",
        "--observations",
        "6",
        "--reuse-npe",
        "--fit-options",
        "num_particles=50,steps=5",
        "--out",
        str(out),
        tmp=tmp_path,
    )
    doc = out.read_text()
    assert "| NPE | N = 4,321 | 0.50 | 4,321 |" in doc
    assert "`--reuse-npe`" in doc
    assert "| SMC-Wake | step" in doc
    assert json.loads(path.read_text())["tasks"]["linear-gaussian-10d"]["npe"] == [earlier]


def test_fit_speed_profile_attributes_the_time(tmp_path):
    # a short default-model fit: the profile's parts must be found by file and function (a
    # part matched by function name alone once counted the SMC's Langevin `step` as Adam's)
    out = tmp_path / "PEERS.md"
    run_script(
        "peers_amortized.py",
        "--parts",
        "fit-speed",
        "--speed-seconds",
        "2",
        "--profile-seconds",
        "2",
        "--fit-options",
        "steps=400,num_particles=100,refresh_every=20",
        "--out",
        str(out),
        tmp=tmp_path,
    )
    parts = {}
    for line in out.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].endswith("%"):
            parts[cells[0].replace("&nbsp;", "")] = float(cells[1])
    whole = parts["`fit`"]
    smc = parts["initial and refresh SMC runs (`_run_and_store`)"]
    step = parts["backward + optimizer step (`_take_step`)"]
    adam = parts.get("of which Adam `step`", 0.0)  # a row under 0.05 s may show 0.0
    assert 0 < smc < whole
    assert 0 < step < whole
    assert parts["of which `backward`"] + adam <= step + 0.1  # both inside `_take_step`
    assert "the whole default fit (400 steps) would take (min)" in out.read_text()
