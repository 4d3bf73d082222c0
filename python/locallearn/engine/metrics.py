"""metrics.jsonl (one JSON object per line) and optional TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """Appends records to ``run_dir/metrics.jsonl``; with ``tensorboard`` also writes
    every numeric field as a scalar under ``run_dir/tensorboard``."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ValueError(f"{run_dir} is not a directory: a metrics log is written into a run's directory")
        self.path = run_dir / "metrics.jsonl"
        self.stream = self.path.open("a", encoding="utf-8")
        self.writer = _summary_writer(run_dir / "tensorboard") if tensorboard else None

    def truncate(self, size: int) -> None:
        """Drop what was logged after a checkpoint (a resumed run logs it again)."""
        self.stream.flush()
        self.stream.truncate(size)
        self.stream.seek(size)

    def size(self) -> int:
        self.stream.flush()
        return self.stream.tell()

    def write(self, record: dict) -> None:
        self.stream.write(json.dumps(record, allow_nan=True) + "\n")
        self.stream.flush()
        if self.writer is not None:
            prefix = record.get("kind", "step")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self.stream.close()
        if self.writer is not None:
            self.writer.close()


class DiscardedLog:
    """What a rank other than 0 of a data-parallel run logs to: nothing (rank 0 writes the run's log)."""

    def truncate(self, size: int) -> None:
        pass

    def size(self) -> int:
        return 0

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSON-lines file; ValueError naming the line that is not a JSON object."""
    records = []
    with Path(path).open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}, is not JSON ({error.msg}): {line.strip()[:80]!r}") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}, is not a record (a JSON object): {line.strip()[:80]!r}")
            records.append(record)
    return records


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of a run's metrics.jsonl."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def _summary_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(str(directory))
