"""The training run's metric records: a JSON-lines file and TensorBoard event files in the output folder.

Each record is one line of out_dir/metrics.jsonl, {"step": N, "split": "train" or "valid", ...numbers}. A
resumed run first drops the lines of steps after its checkpoint (they are computed again), so that the file
reads as one uninterrupted run; TensorBoard is told the same through purge_step.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append metric records; a no-op where enabled is False (processes other than rank 0)."""

    def __init__(self, out_dir: str | Path, start_step: int, tensorboard: bool, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.writer = None
        self.tensorboard_note = ""
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_records_after(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch's writer needs the tensorboard package
                self.tensorboard_note = "TensorBoard events off: the tensorboard package is not installed"
            else:
                self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"),
                                            purge_step=start_step + 1)

    def _drop_records_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        temp = self.path.with_suffix(".jsonl.tmp")
        temp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(temp, self.path)

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split}
        for key, value in values.items():  # JSON has no NaN or Infinity: those are written as strings
            record[key] = value if not isinstance(value, float) or math.isfinite(value) else str(value)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()
