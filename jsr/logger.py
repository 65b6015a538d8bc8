"""Training logs: ``metrics.jsonl`` (every logged scalar), TensorBoard event files (tensorboardX, no TensorFlow),
and a progress line with steps/s and ETA. Only the primary process writes."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from jsr import atomic

METRICS_FILE = "metrics.jsonl"


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricLogger:
    def __init__(self, workdir: Path, enabled: bool = True, total_steps: int = 0, resume_step: int = 0):
        self.enabled = enabled
        self.total_steps = total_steps
        self.path = Path(workdir) / METRICS_FILE
        self.writer = None
        self._clock = (time.perf_counter(), resume_step)
        if not enabled:
            return
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self._drop_lines_after(resume_step)
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def _drop_lines_after(self, step: int) -> None:
        """A resumed run repeats the steps after its last checkpoint: forget what those logged the first time."""
        if not self.path.exists():
            return
        steps = [(line, _step_of(line)) for line in self.path.read_text().splitlines()]
        kept = [line for line, at in steps if at is not None and at <= step]
        atomic.write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, step: int, scalars: dict[str, float], loss: str | None = None) -> None:
        """Append ``scalars``; with ``loss`` (the name of the loss scalar), also print a progress line."""
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        if loss is not None:
            now, then = time.perf_counter(), self._clock
            rate = (step - then[1]) / max(now - then[0], 1e-9)
            self._clock = (now, step)
            eta = (self.total_steps - step) / rate if rate > 0 else 0
            shown = scalars.get(loss, math.nan)
            self.note(
                f"step {step}/{self.total_steps} | loss {shown:.5f} | {rate:.2f} steps/s | ETA {format_duration(eta)}"
            )
        elif any(k.startswith("val/") for k in scalars):
            self.note(f"step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in scalars.items()))

    def images(self, step: int, tag: str, image: np.ndarray | None) -> None:
        if self.enabled and image is not None:
            self.writer.add_image(tag, np.clip(image, 0, 1), step, dataformats="HWC")
            self.writer.flush()

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> int | None:
    """The step of one metrics line; None for a line a killed run left half-written."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return None


def read_series(workdir: Path, prefix: str = "") -> dict[str, tuple[list[float], list[float]]]:
    """{name: (steps, values)} of every scalar in ``metrics.jsonl`` whose name starts with ``prefix``."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    path = Path(workdir) / METRICS_FILE
    for line in path.read_text().splitlines() if path.exists() else []:
        if _step_of(line) is None:
            continue
        record = json.loads(line)
        for name, value in record.items():
            if name.startswith(prefix) and name != "step":
                steps, values = series.setdefault(name, ([], []))
                steps.append(record["step"])
                values.append(value)
    return series
