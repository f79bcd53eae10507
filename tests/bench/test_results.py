"""bench.results: results.json and run records round-trip through JSON unchanged."""

import json
import math

import pytest
import torch

from smcwake.bench.results import (
    RESULTS_NAME,
    RunRecord,
    failed_record,
    load_results,
    read_run,
    save_results,
    to_json_data,
    write_run,
)
from smcwake.train import SMCOptions

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors; seeded runs reproduce


def test_results_round_trip_with_tensors_dataclasses_and_non_finite_numbers(tmp_path):
    results = {
        "kind": "bench",
        "settings": {"train": {"smc": SMCOptions(kernel="rwmh"), "dtype": torch.float64}},
        "panel_x": torch.tensor([[0.5, -1.0]]),
        "metrics": {"forward_kl": math.inf, "c2st": math.nan},
        "budgets": {0: 1200, 1: None},
    }
    path = save_results(results, tmp_path / "out")
    assert path == tmp_path / "out" / RESULTS_NAME
    assert not list((tmp_path / "out").glob(".*tmp*"))  # written atomically, nothing left over
    loaded = load_results(tmp_path / "out")
    assert loaded == load_results(path)  # the folder or the file itself
    assert loaded["settings"]["train"]["smc"]["kernel"] == "rwmh"
    assert loaded["settings"]["train"]["dtype"] == "torch.float64"
    assert loaded["panel_x"] == [[0.5, -1.0]]
    assert loaded["metrics"]["forward_kl"] == math.inf
    assert math.isnan(loaded["metrics"]["c2st"])
    assert loaded["budgets"] == {"0": 1200, "1": None}  # JSON keys are strings
    assert to_json_data(results)["budgets"] == loaded["budgets"]


def test_missing_results_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results here"):
        load_results(tmp_path)


def test_run_records_are_written_once_finished_and_read_back(tmp_path):
    run_dir = tmp_path / "runs" / "wake" / "seed0"
    assert read_run(run_dir) is None
    record: RunRecord = {"seed": 0, "steps": 3, "reconstructions": torch.zeros(1, 2)}
    write_run(run_dir, record)
    assert read_run(run_dir) == {"seed": 0, "steps": 3, "reconstructions": [[0.0, 0.0]]}
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 3


def test_a_failed_run_keeps_the_error():
    assert failed_record(2, ValueError("bad lr")) == {"seed": 2, "failed": "ValueError: bad lr"}


def test_unknown_objects_are_refused():
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        to_json_data({"x": object()})
