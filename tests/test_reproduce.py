"""`locallearn reproduce`: a table of recipes x columns x seeds, each cell its own training
run; finished cells are skipped, interrupted ones resumed; the table is written with the
paper's numbers beside ours; and the shipped tables name recipes that build."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from locallearn import engine
from locallearn.engine import reproduce

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPE = """rule = "backprop"
data = "digits"
model = "mlp"
depth = 1
width = 32
epochs = 1
batch-size = 64
lr = 0.01
validation = 200
device = "cpu"
"""
TABLE = """title = "A two-cell table"
source = "a made-up paper, Table 9"
seeds = [0, 1]
report = "test_error_at_best"
[[columns]]
name = "1 layer"
[[rows]]
name = "Backprop"
recipe = "recipe.toml"
paper = [5.0]
"""


@pytest.fixture
def table(tmp_path) -> Path:
    (tmp_path / "recipe.toml").write_text(RECIPE)
    path = tmp_path / "tiny.toml"
    path.write_text(TABLE)
    return path


def test_two_cell_table_end_to_end_then_skipped_then_resumed(table, tmp_path, capfd):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "locallearn.cli", "reproduce", str(table), "--jobs", "2",
                             "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "tiny.json").read_text())
    (entry,) = summary["rows"][0]["cells"]
    values = [100 * seed["value"] for seed in entry["seeds"]]
    for seed, run_dir in zip(entry["seeds"], [out / "backprop" / "1-layer" / f"seed-{s}" for s in (0, 1)]):
        last = [record for record in engine.read_metrics(run_dir) if record["kind"] == "epoch"][-1]
        assert seed["value"] == last["test_error_at_best"] and seed["epochs"] == 1 and seed["wall_seconds"] > 0
        assert engine.read_settings(run_dir).seed == seed["seed"]
    assert entry["mean"] == pytest.approx(sum(values) / 2)
    assert entry["sd"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert entry["paper"] == 5.0 and entry["gap"] == pytest.approx(entry["mean"] - 5.0)
    assert summary["rows"][0]["recipe"] == os.path.relpath(table.parent / "recipe.toml")  # no machine's root in it
    table_text = (out / "tiny.md").read_text()
    assert f"{entry['mean']:.2f} ± {entry['sd']:.2f} | 5.00 | {entry['gap']:+.2f}" in table_text
    assert "made-up paper" in table_text and table_text in result.stdout

    metrics = out / "backprop" / "1-layer" / "seed-0" / "metrics.jsonl"
    written = metrics.stat().st_mtime_ns
    markdown_path, _, failed = reproduce.reproduce(table, out, progress=False)  # all finished: nothing runs
    assert not failed and metrics.stat().st_mtime_ns == written and markdown_path.read_text() == table_text

    # --report-only writes the table of a folder whose cells have not all run, training none.
    pending = tmp_path / "pending"
    shutil.copytree(out / "backprop" / "1-layer" / "seed-0", pending / "backprop" / "1-layer" / "seed-0")
    result = subprocess.run([sys.executable, "-m", "locallearn.cli", "reproduce", str(table), "--report-only",
                             "--out", str(pending), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (pending / "backprop" / "1-layer" / "seed-1").exists() and "(1/2 seeds)" in result.stdout

    # With nothing to train there is no progress bar, even when one is asked for.
    capfd.readouterr()
    reproduce.reproduce(table, out, rows=[], progress=True)
    assert capfd.readouterr().err == ""

    # Only the small files kept (results/.gitignore's selection): still finished, same table.
    kept = tmp_path / "kept"
    shutil.copytree(out, kept, ignore=shutil.ignore_patterns("metrics.jsonl", "train.log", "checkpoints"))
    assert not list(kept.rglob("metrics.jsonl")) and len(list(kept.rglob(reproduce.CELL_EPOCHS))) == 2
    markdown_path, _, failed = reproduce.reproduce(table, kept, progress=False)
    assert not failed and not list(kept.rglob("metrics.jsonl"))  # nothing ran
    assert markdown_path.read_text() == table_text

    # A recipe edited since its cells ran: they are refused, naming what changed, not counted.
    (table.parent / "recipe.toml").write_text(RECIPE.replace("lr = 0.01", "lr = 0.02"))
    with pytest.raises(ValueError, match=r"2 cell\(s\) were trained with other settings.*seed-0 \(lr\)"):
        reproduce.reproduce(table, out, rows=[], progress=False)
    (table.parent / "recipe.toml").write_text(RECIPE)

    # A cell stopped before its first checkpoint (config.toml written, no epoch) is resumed.
    cell = reproduce.plan(reproduce.load_table(table), tmp_path / "second")[0]
    settings = engine.TrainSettings(**{key.replace("-", "_"): value for key, value in cell.settings.items()},
                                    run_dir=str(cell.run_dir))
    engine.start_run(settings, progress=False)
    assert reproduce.epochs_done(cell) == 0 and not reproduce.is_finished(cell)
    _, json_path, failed = reproduce.reproduce(table, tmp_path / "second", progress=False)
    assert not failed and reproduce.is_finished(cell)  # a fresh start there would refuse the run directory
    assert all(entry["seeds_finished"] == 2 for entry in json.loads(json_path.read_text())["rows"][0]["cells"])


def test_markdown_says_when_a_cell_is_pending_or_a_quick_look():
    summary = {"title": "T", "source": "", "report": "test_error", "seeds": [0, 1], "columns": ["c"],
               "rows": [{"row": "r", "cells": [{"column": "c", "paper": 1.0, "mean": None, "sd": None, "gap": None,
                                                "seeds_finished": 1, "seeds": [{"wall_seconds": 60.0}, {"wall_seconds": None}],
                                                "epochs": 3}]}]}
    text = reproduce.markdown(summary, quick_epochs=3)
    assert "Quick look: 3 epoch(s) per cell" in text and "pending (1/2 seeds)" in text and "3 epochs, 1.0 min" in text
    summary["rows"][0]["cells"][0]["seeds"][0]["wall_seconds"] = None
    assert "c: 3 epochs, not run yet" in reproduce.markdown(summary, quick_epochs=None)
    longer = {**summary["rows"][0], "row": "longer", "cells": [{**summary["rows"][0]["cells"][0], "epochs": 100}]}
    summary["rows"].append(longer)  # a row that trains fewer epochs than the others says so in its cells
    lines = reproduce.markdown(summary, quick_epochs=None).splitlines()
    assert "(**3 epochs**)" in next(line for line in lines if line.startswith("| r |"))
    assert "epochs**" not in next(line for line in lines if line.startswith("| longer |"))


def test_a_full_run_rewrites_the_table_quoted_in_its_document(table, tmp_path, monkeypatch):
    document = tmp_path / "RESULTS.md"
    before = "# Results\n\nProse before.\n\n<!-- generated table: tiny -->\n"
    after = "<!-- end of generated table -->\nAfter.\n"
    document.write_text(before + "an older table\n" + after)
    table.write_text(TABLE.replace('report = "test_error_at_best"\n',
                                   'report = "test_error_at_best"\ndocument = "RESULTS.md"\n'))
    monkeypatch.chdir(tmp_path)  # the default output folder, results/tiny, is relative to the working directory
    markdown_path, _, failed = reproduce.reproduce(table, jobs=2, progress=False)
    assert not failed and markdown_path == Path("results") / "tiny" / "tiny.md"
    table_text = markdown_path.read_text()
    assert document.read_text() == before + table_text.split("\n", 2)[2] + after
    assert "| Backprop |" in document.read_text() and "A two-cell table" not in document.read_text()

    # A quick look, or a table written elsewhere, leaves the document alone.
    document.write_text(before + "kept\n" + after)
    reproduce.reproduce(table, epochs=1, progress=False)
    reproduce.reproduce(table, tmp_path / "elsewhere", rows=[], progress=False)
    assert document.read_text() == before + "kept\n" + after

    # A document without the table's markers is refused before anything trains.
    document.write_text("# Results\n<!-- generated table: other -->\n" + after)
    with pytest.raises(ValueError, match="no '<!-- generated table: tiny -->'"):
        reproduce.reproduce(table, tmp_path / "third", progress=False)
    assert not (tmp_path / "third").exists()


def test_bad_tables_are_refused_naming_what_is_wrong(table, tmp_path):
    with pytest.raises(ValueError, match=r"no rows \['LRA-E'\]"):
        reproduce.reproduce(table, tmp_path / "out", rows=["LRA-E"], progress=False)
    table.write_text(TABLE.replace("paper = [5.0]", "paper = [5.0, 6.0]"))
    with pytest.raises(ValueError, match="2 paper numbers for 1 columns"):
        reproduce.load_table(table)
    table.write_text(TABLE.replace("recipe.toml", "absent.toml"))
    with pytest.raises(ValueError, match="absent.toml, which does not exist"):
        reproduce.load_table(table)
    table.write_text(TABLE.replace('report = "test_error_at_best"\n', ""))
    with pytest.raises(ValueError, match="missing 'report'"):
        reproduce.load_table(table)


@pytest.mark.parametrize("path", sorted((CONFIGS / "tables").glob("*.toml")), ids=lambda path: path.name)
def test_shipped_tables_plan_cells_whose_settings_are_train_settings(path):
    table = reproduce.load_table(path)
    cells = reproduce.plan(table, Path("unused"))
    assert len(cells) == len(table.rows) * len(table.columns) * len(table.seeds)
    for cell in cells:
        engine.TrainSettings(**{key.replace("-", "_"): value for key, value in cell.settings.items()})
