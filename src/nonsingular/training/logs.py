"""Per-epoch metrics on disk: JSONL and CSV next to the checkpoint, and TensorBoard when it is installed.

The JSONL and CSV files are rewritten whole (atomically) from the checkpoint's metrics after every epoch, so a
killed and resumed run ends with exactly one line per finished epoch.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
from pathlib import Path
from typing import Any

from ..models.checkpoint import atomic_write

__all__ = ["MetricsLog", "RunPaths"]

log = logging.getLogger(__name__)


class RunPaths:
    """The files of a run, named after its checkpoint `runs/x.safetensors`.

    Attributes:
        checkpoint: runs/x.safetensors (weights, metadata and resumable state, rewritten every epoch).
        config: runs/x.config.yaml (the resolved config; `--config` accepts it).
        jsonl, csv: runs/x.metrics.jsonl and runs/x.metrics.csv (one row per finished epoch).
        tensorboard: runs/x.tb/ (event files, only with tensorboard=True and TensorBoard installed).
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        stem = self.checkpoint.with_suffix("")
        self.config = Path(f"{stem}.config.yaml")
        self.jsonl = Path(f"{stem}.metrics.jsonl")
        self.csv = Path(f"{stem}.metrics.csv")
        self.tensorboard = Path(f"{stem}.tb")

    def files(self) -> list[Path]:
        """Every file the run writes, checkpoint first."""
        return [self.checkpoint, self.config, self.jsonl, self.csv]


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class MetricsLog:
    """Writes the list of per-epoch metric dicts; TensorBoard gets each epoch once."""

    def __init__(self, paths: RunPaths, tensorboard: bool = False) -> None:
        self.paths = paths
        self._writer: Any = None
        self._logged_epochs = 0
        if tensorboard:
            if importlib.util.find_spec("tensorboard") is None:
                log.warning("tensorboard=True but TensorBoard is not installed (pip install tensorboard); skipped")
            else:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(paths.tensorboard))

    def write(self, metrics: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in metrics)
        atomic_write(self.paths.jsonl, lambda tmp: Path(tmp).write_text(text))
        table = _csv_text(metrics)
        atomic_write(self.paths.csv, lambda tmp: Path(tmp).write_text(table))
        if self._writer is not None:
            for row in metrics[self._logged_epochs :]:
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, int | float):
                        self._writer.add_scalar(key, value, global_step=row["epoch"])
            self._writer.flush()
        self._logged_epochs = len(metrics)

    def resume_from(self, n_epochs: int) -> None:
        """Epochs already in TensorBoard's event files from the interrupted run."""
        self._logged_epochs = n_epochs

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
