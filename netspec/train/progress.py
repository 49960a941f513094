"""What training shows and records: a progress bar on a terminal (plain log lines otherwise), a metrics
CSV, a plain-text log, and TensorBoard scalars when TensorBoard is installed."""

from __future__ import annotations

import csv
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Any


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _bar(done: int, total: int, epoch: float, loss: float, lr: float, samples_per_s: float, eta: float) -> str:
    """The bar line, shorter than the terminal is wide: a line that wraps cannot be redrawn in place, and
    each redraw would leave a stale row. Fields are dropped from the right until it fits."""
    columns = shutil.get_terminal_size((80, 24)).columns - 1
    fields = [
        f"loss {loss:.4g}",
        f"lr {lr:.3g}",
        f"ETA {_duration(eta)}",
        f"epoch {epoch:.2f}",
        f"{samples_per_s:,.0f}/s",
    ]
    count = f"{done}/{total}"

    def rest() -> int:  # the columns left for the bar itself
        return columns - len(count) - 3 - sum(len(f) + 2 for f in fields)

    while fields and rest() < 10:
        fields.pop()
    width = max(0, min(24, rest()))
    filled = int(width * done / max(total, 1))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {count}" + "".join(f"  {f}" for f in fields)
    return line[:columns]


class Progress:
    """Shows training as it goes. On a terminal, one bar line (iteration, loss, learning rate, samples/s,
    ETA) redrawn in place; elsewhere, a log line every `display` iterations. Messages (tests, snapshots)
    are lines in both cases, and all lines also go to the run's log file."""

    def __init__(
        self, total: int, display: int, log_file: Path | None, quiet: bool = False, stream: IO[str] | None = None
    ) -> None:
        self.total, self.display, self.quiet = total, display, quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty() and not quiet
        self.log: IO[str] | None = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._bar = False

    def line(self, text: str) -> None:
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()
        if self.quiet:
            return
        if self._bar:
            self.stream.write("\r\033[K")
            self._bar = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def iteration(self, it: int, epoch: float, loss: float, lr: float, samples_per_s: float) -> None:
        """After the update of iteration `it` (counted as Caffe does: the updates done before it), with
        the smoothed loss and the learning rate that update used."""
        done = it + 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done)
        text = (
            f"iteration {it}  epoch {epoch:.2f}  loss {loss:.4g}  lr {lr:.6g}  "
            f"{samples_per_s:,.0f} samples/s  ETA {_duration(eta)}"
        )
        due = self.display and it % self.display == 0
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw >= 0.1 or done == self.total:
                self.stream.write("\r\033[K" + _bar(done, self.total, epoch, loss, lr, samples_per_s, eta))
                self.stream.flush()
                self._bar, self._last_draw = True, now
            if due and self.log:
                self.log.write(text + "\n")
        elif due:
            self.line(text)

    def close(self) -> None:
        if self._bar:
            self.stream.write("\n")
            self._bar = False
        if self.log:
            self.log.close()


class Metrics:
    """The metrics CSV (iteration, epoch, lr, loss, each test output, seconds), and TensorBoard."""

    def __init__(self, path: Path, test_columns: list[str], append: bool) -> None:
        self.columns = ["iteration", "epoch", "lr", "loss", *test_columns, "seconds"]
        new = not (append and path.exists())
        self.file = open(path, "w" if new else "a", newline="", encoding="utf-8")  # noqa: SIM115
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns)
        if new:
            self.writer.writeheader()
        self.start = time.perf_counter()
        self.offset = 0.0
        self.board: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:
            self.board = None

    def write(self, **values: float | int) -> None:
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()}
        row["seconds"] = f"{self.offset + time.perf_counter() - self.start:.2f}"
        self.writer.writerow(row)
        self.file.flush()
        if self.board is not None:
            it = int(values["iteration"])
            for k, v in values.items():
                if k not in ("iteration", "epoch"):
                    self.board.add_scalar(k, v, it)

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()
