"""Per-step metrics to `metrics.jsonl` and TensorBoard in the run directory (rank 0 writes)."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from xr_nemo.io.atomic_dir import write_text_atomically

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    def __init__(self, run_dir: str | Path, resumed_step: int) -> None:
        """Records of steps after `resumed_step` (from a run that died after its last checkpoint) are
        dropped, so the file reads as one uninterrupted run; so is a last line a crash cut short."""
        self.path = Path(run_dir) / METRICS_FILE
        if self.path.exists():
            kept = [
                line
                for line, record in _records(self.path.read_text())
                if record.get("step", 0) <= resumed_step
            ]
            write_text_atomically(self.path, "".join(f"{line}\n" for line in kept))
        self._file = self.path.open("a")
        self._board = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resumed_step + 1)

    def write(self, step: int, values: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        for name, value in values.items():
            self._board.add_scalar(name, value, step)

    def close(self) -> None:
        self._file.close()
        self._board.close()


def _records(text: str) -> list[tuple[str, dict]]:
    """(line, record) pairs; a last line that is not whole JSON (a write cut by a crash) is left out."""
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
    return records


def read_metrics(run_dir: str | Path) -> list[dict]:
    return [record for _, record in _records((Path(run_dir) / METRICS_FILE).read_text())]
