"""`locallearn reproduce TABLE`: a paper's table as rows (recipes) × columns (settings
such as depth) × seeds, each cell a `locallearn train` run of its own, several at once;
finished cells are skipped and interrupted ones resumed, so a stopped reproduction loses
at most the epochs after each run's last checkpoint. The table is written as Markdown
and JSON: mean ± sd over seeds beside the paper's number, the gap, epochs and wall time.

Each cell also keeps its epoch records in a small ``epochs.jsonl``, which is all a
finished cell needs to be counted: an output folder whose run files (metrics.jsonl,
checkpoints) are left behind, such as one kept in version control with only its small
files, regenerates the table without rerunning what it holds (``results/`` in this
repository, whose .gitignore keeps exactly those).

A table file (TOML; paths relative to it)::

    title = "Seed 002 Table 2: Fashion-MNIST test error (%)"
    source = "Ororbia & Mali 2019, Table 2"
    seeds = [0, 1]
    report = "test_error_at_best"        # an epoch record's field, reported in %
    settings = { validation = 2000 }     # for every cell
    document = "../../docs/RESULTS.md"   # optional: where the table is quoted (below)
    [[columns]]
    name = "3 layers"
    settings = { depth = 3 }
    [[rows]]
    name = "Backprop"
    recipe = "../seed002-fashion-mnist-backprop.toml"
    paper = [14.89]                      # one number per column (% test error)
    settings = {}                        # for this row's cells (optional)

A ``document`` holds the table between ``<!-- generated table: NAME -->`` and
``<!-- end of generated table -->`` (NAME: the table file's stem); each full run, but not a
quick look (``--epochs``) or one written elsewhere (``--out``), replaces what is there with
the table, its heading dropped, so the document never quotes an older table.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from locallearn import config
from locallearn.engine.metrics import read_jsonl, read_metrics

CELL_CONFIG = "cell.toml"
CELL_LOG = "train.log"
CELL_WALL = "wall_seconds.json"
CELL_EPOCHS = "epochs.jsonl"
DOCUMENT_END = "<!-- end of generated table -->"


@dataclass(frozen=True)
class Row:
    name: str
    recipe: Path
    paper: tuple[float | None, ...]
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    name: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    path: Path
    title: str
    source: str
    seeds: tuple[int, ...]
    report: str
    settings: dict
    rows: tuple[Row, ...]
    columns: tuple[Column, ...]
    document: Path | None = None


@dataclass(frozen=True)
class Cell:
    """One (row, column, seed) run and the settings it trains with."""

    row: str
    column: str
    seed: int
    settings: dict
    run_dir: Path


def load_table(path: str | Path) -> Table:
    """Read and check a table file (module docstring); errors name the file and the entry."""
    path = Path(path)
    raw = config.load_toml(path)
    for key in ("title", "seeds", "report", "rows", "columns"):
        if key not in raw:
            raise ValueError(f"table {path}: missing {key!r}")
    columns = tuple(Column(entry["name"], dict(entry.get("settings", {}))) for entry in raw["columns"])
    rows = []
    for entry in raw["rows"]:
        recipe = (path.parent / entry["recipe"]).resolve()
        if not recipe.is_file():
            raise ValueError(f"table {path}: row {entry['name']!r} names recipe {recipe}, which does not exist")
        paper = tuple(entry.get("paper", [None] * len(columns)))
        if len(paper) != len(columns):
            raise ValueError(f"table {path}: row {entry['name']!r} has {len(paper)} paper numbers for "
                             f"{len(columns)} columns")
        rows.append(Row(entry["name"], recipe, paper, dict(entry.get("settings", {}))))
    seeds = tuple(int(seed) for seed in raw["seeds"])
    if not seeds or not rows or not columns:
        raise ValueError(f"table {path}: needs at least one seed, row and column")
    document = (path.parent / raw["document"]).resolve() if "document" in raw else None
    if document is not None:  # a missing document or marker is refused before anything trains
        document_span(read_document(document, path.stem), document, path.stem)
    return Table(path, raw["title"], raw.get("source", ""), seeds, raw["report"], dict(raw.get("settings", {})),
                 tuple(rows), columns, document)


def document_start(name: str) -> str:
    return f"<!-- generated table: {name} -->"


def read_document(document: Path, name: str) -> str:
    if not document.is_file():
        raise ValueError(f"table {name}: its document {document} does not exist")
    return document.read_text(encoding="utf-8")


def document_span(text: str, document: Path, name: str) -> tuple[int, int]:
    """Where the table ``name`` goes in ``document``'s ``text``: the offsets just after its start
    marker's line and of its end marker."""
    start = text.find(document_start(name))
    end = text.find(DOCUMENT_END, start) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"table {name}: {document} has no {document_start(name)!r} … {DOCUMENT_END!r} markers "
                         f"to write the table between")
    return text.index("\n", start) + 1, end


def write_into_document(document: Path, name: str, body: str) -> None:
    """Replace the quoted table ``name`` in ``document`` by ``body``."""
    text = read_document(document, name)
    start, end = document_span(text, document, name)
    write_atomically(document, text[:start] + body + text[end:])


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def plan(table: Table, out_dir: Path, epochs: int | None = None) -> list[Cell]:
    """Every cell, column by column (a stopped reproduction has whole columns first), with
    its settings: the row's recipe, then the table's, the column's and the row's own
    settings, the seed and, for a quick look, ``epochs``."""
    cells = []
    recipes = {row.name: config.load_toml(row.recipe) for row in table.rows}
    for column in table.columns:
        for row in table.rows:
            for seed in table.seeds:
                settings = {**recipes[row.name], **table.settings, **column.settings, **row.settings, "seed": seed,
                            **({"epochs": epochs} if epochs is not None else {})}
                run_dir = out_dir / slug(row.name) / slug(column.name) / f"seed-{seed}"
                cells.append(Cell(row.name, column.name, seed, settings, run_dir))
    return cells


def epoch_records(cell: Cell) -> list[dict]:
    """The cell's epoch records: from its run's metrics.jsonl, or, where the run files are
    not there, from the epochs.jsonl kept beside them; none before its first epoch."""
    if (cell.run_dir / "metrics.jsonl").is_file():
        return [record for record in read_metrics(cell.run_dir) if record["kind"] == "epoch"]
    if (cell.run_dir / CELL_EPOCHS).is_file():
        return read_jsonl(cell.run_dir / CELL_EPOCHS)
    return []


def epochs_done(cell: Cell) -> int:
    """Epochs the cell's run has logged (0 before its first)."""
    return max((record["epoch"] for record in epoch_records(cell)), default=0)


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)  # a kill leaves the old file or the new one


def is_finished(cell: Cell) -> bool:
    return epochs_done(cell) >= cell.settings["epochs"]


def settings_changed(cell: Cell) -> list[str]:
    """The settings in which the cell's run (its cell.toml) differs from what the table now
    asks of it, such as a recipe edited since; none for a cell not started."""
    stored_path = cell.run_dir / CELL_CONFIG
    if not stored_path.is_file():
        return []
    stored = config.load_toml(stored_path)
    return sorted(key for key in stored.keys() | cell.settings.keys() if stored.get(key) != cell.settings.get(key))


def run_cell(cell: Cell, threads: int) -> tuple[Cell, int]:
    """Train the cell (start it, or resume it from its run directory) in a process of its own
    with ``threads`` intra-op threads; its output goes to the cell's train.log. Returns the
    exit status; the wall time spent is added to the cell's wall_seconds.json."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    if (cell.run_dir / "config.toml").is_file():
        arguments = ["--resume", str(cell.run_dir)]
    else:
        (cell.run_dir / CELL_CONFIG).write_text(config.dump_toml(cell.settings), encoding="utf-8")
        arguments = ["--config", str(cell.run_dir / CELL_CONFIG), "--run-dir", str(cell.run_dir)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.monotonic()
    with (cell.run_dir / CELL_LOG).open("a", encoding="utf-8") as log:
        completed = subprocess.run([sys.executable, "-m", "locallearn.cli", "train", *arguments, "--no-progress"],
                                   stdout=log, stderr=subprocess.STDOUT, env=environment)
    wall = cell.run_dir / CELL_WALL
    spent = json.loads(wall.read_text())["seconds"] if wall.is_file() else 0.0
    write_atomically(wall, json.dumps({"seconds": spent + time.monotonic() - started}))
    write_atomically(cell.run_dir / CELL_EPOCHS, "".join(json.dumps(record) + "\n" for record in epoch_records(cell)))
    return cell, completed.returncode


def cell_result(cell: Cell, report: str) -> dict:
    """The cell's reported value (a fraction), epochs logged and wall time, or why there is none."""
    wall = cell.run_dir / CELL_WALL
    records = epoch_records(cell)
    result = {"seed": cell.seed, "run_dir": str(cell.run_dir),
              "epochs": max((record["epoch"] for record in records), default=0),
              "wall_seconds": json.loads(wall.read_text())["seconds"] if wall.is_file() else None, "value": None}
    if not records:
        return result
    last = records[-1]
    if report not in last:
        raise ValueError(f"{cell.run_dir}: its epoch records have no {report!r} (does the table set validation?)")
    result["value"] = last[report]
    return result


def summarise(table: Table, cells: list[Cell]) -> dict:
    """The table's JSON record: per row and column, the seeds' values in % and their mean ± sd
    over finished seeds, beside the paper's number."""
    rows = []
    for row in table.rows:
        entries = []
        for column, paper in zip(table.columns, row.paper):
            mine = [cell for cell in cells if cell.row == row.name and cell.column == column.name]
            results = [cell_result(cell, table.report) for cell in mine]
            finished = [100 * result["value"] for cell, result in zip(mine, results)
                        if result["epochs"] >= cell.settings["epochs"]]  # is_finished, from the records read
            mean = statistics.fmean(finished) if finished else None
            sd = statistics.stdev(finished) if len(finished) > 1 else None
            entries.append({"column": column.name, "paper": paper, "mean": mean, "sd": sd,
                            "gap": None if mean is None or paper is None else mean - paper,
                            "seeds_finished": len(finished), "seeds": results,
                            "epochs": mine[0].settings["epochs"]})
        rows.append({"row": row.name, "recipe": os.path.relpath(row.recipe), "cells": entries})
    return {"title": table.title, "source": table.source, "table": str(table.path), "report": table.report,
            "seeds": list(table.seeds), "columns": [column.name for column in table.columns], "rows": rows}


def markdown(summary: dict, quick_epochs: int | None) -> str:
    """The table as Markdown: its title, then :func:`markdown_body`."""
    return f"# {summary['title']}\n\n" + markdown_body(summary, quick_epochs)


def markdown_body(summary: dict, quick_epochs: int | None) -> str:
    """The table without its title, as a document quotes it: ours (mean ± sd over seeds) / the
    paper's, and the gap."""
    lines = []
    if summary["source"]:
        lines += [f"Paper: {summary['source']}. Reported: `{summary['report']}` (%), mean ± sd over seeds "
                  f"{summary['seeds']}; the paper's number and our gap to it beside.", ""]
    if quick_epochs is not None:
        lines += [f"**Quick look: {quick_epochs} epoch(s) per cell (`--epochs {quick_epochs}`), not the recipes' "
                  "epochs: not comparable with the paper.**", ""]
    most_epochs = max(entry["epochs"] for row in summary["rows"] for entry in row["cells"])
    header = "| | " + " | ".join(f"{name}: ours | paper | gap" for name in summary["columns"]) + " |"
    lines += [header, "|---" * (1 + 3 * len(summary["columns"])) + "|"]
    for row in summary["rows"]:
        cells = []
        for entry in row["cells"]:
            if entry["mean"] is None:
                ours = f"pending ({entry['seeds_finished']}/{len(entry['seeds'])} seeds)"
            else:
                ours = f"{entry['mean']:.2f}" + (f" ± {entry['sd']:.2f}" if entry["sd"] is not None else "")
                if entry["seeds_finished"] < len(entry["seeds"]):
                    ours += f" ({entry['seeds_finished']}/{len(entry['seeds'])} seeds)"
            if entry["epochs"] < most_epochs:  # a row whose settings train it for fewer epochs
                ours += f" (**{entry['epochs']} epochs**)"
            paper = "-" if entry["paper"] is None else f"{entry['paper']:.2f}"
            gap = "-" if entry["gap"] is None else f"{entry['gap']:+.2f}"
            cells += [ours, paper, gap]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    lines += ["", "Epochs and wall time per cell (summed over seeds and resumptions):", ""]
    for row in summary["rows"]:
        times = []
        for entry in row["cells"]:
            seconds = sum(seed["wall_seconds"] or 0 for seed in entry["seeds"])
            spent = f"{seconds / 60:.1f} min" if seconds else "not run yet"
            times.append(f"{entry['column']}: {entry['epochs']} epochs, {spent}")
        lines.append(f"- {row['row']}: " + "; ".join(times))
    return "\n".join(lines) + "\n"


def reproduce(table_path: str | Path, out_dir: str | Path | None = None, *, jobs: int = 1,
              epochs: int | None = None, rows: list[str] | None = None,
              progress: bool = True) -> tuple[Path, Path, list[Cell]]:
    """Run every unfinished cell of the table (``jobs`` at a time; only those of ``rows``
    when given, the others stay as they are; none for ``rows=[]``), then write ``<out_dir>/<table>.md`` and
    ``.json``, and the table's document unless ``epochs`` or ``out_dir`` is given; returns the two
    paths and the cells that failed."""
    table = load_table(table_path)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    unknown = sorted(set(rows or ()) - {row.name for row in table.rows})
    if unknown:
        raise ValueError(f"table {table.path} has no rows {unknown}; its rows: {[row.name for row in table.rows]}")
    default_out_dir = Path("results") / table.path.stem
    out_dir = Path(out_dir) if out_dir else default_out_dir
    if epochs is not None:
        out_dir = out_dir / f"quick-{epochs}-epochs"
    cells = plan(table, out_dir, epochs)
    changed = {cell.run_dir: keys for cell in cells if (keys := settings_changed(cell))}
    if changed:
        listed = "; ".join(f"{run_dir} ({', '.join(keys)})" for run_dir, keys in changed.items())
        raise ValueError(f"{len(changed)} cell(s) were trained with other settings than the table now gives them: "
                         f"{listed}. Remove those run directories to train them anew.")
    todo = [cell for cell in cells if not is_finished(cell) and (rows is None or cell.row in rows)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(todo), desc=table.path.stem, disable=not progress or not todo) as bar:
        for future in concurrent.futures.as_completed([pool.submit(run_cell, cell, threads) for cell in todo]):
            cell, status = future.result()
            bar.update()
            if status != 0:
                failed.append(cell)
                tqdm.write(f"{cell.row} / {cell.column} / seed {cell.seed} failed (exit {status}); "
                           f"see {cell.run_dir / CELL_LOG}")
    summary = summarise(table, cells)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / f"{table.path.stem}.json", out_dir / f"{table.path.stem}.md"
    json_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    markdown_path.write_text(markdown(summary, epochs), encoding="utf-8")
    if table.document is not None and out_dir == default_out_dir:  # a quick look has a folder of its own
        write_into_document(table.document, table.path.stem, markdown_body(summary, epochs))
    return markdown_path, json_path, failed
