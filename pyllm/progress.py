"""The one progress display of every long command (`pyllm quantize`, `pull`, `perplexity`): a bar
redrawn in place on stderr when stderr is a terminal; when it is not (a log, a pipe, a test),
silent, or one plain line per step for commands whose steps are results (perplexity's running
value). Not here: logging, or anything written to stdout (which carries a command's output).

Home-made rather than tqdm: three call sites need a label, a fraction and a short note, and
pyllm keeps its runtime dependencies to what computes (numpy, regex, jinja2, llguidance).
"""
from __future__ import annotations

import sys
import time

BAR_WIDTH = 30


class Progress:
    """progress = Progress(total, "writing"); progress.update(done, note); progress.close().

    enabled: draw the bar (None: when stderr is a terminal).
    lines: when the bar is not drawn, write "[done/total] note" as one line per update instead.
    unit: (divisor, name), e.g. (1e6, "MB"): the note defaults to "(done/total MB)".
    """

    def __init__(self, total: int, label: str, enabled: bool | None = None, lines: bool = False,
                 unit: tuple[float, str] | None = None):
        self.total, self.label = max(1, int(total)), label
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.lines = lines and not self.enabled
        self.unit = unit
        self.t0 = time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if self.unit and not note:
            div, name = self.unit
            note = f"({done / div:.0f}/{self.total / div:.0f} {name})"
        if self.lines:
            sys.stderr.write(f"[{done}/{self.total}] {note}\n")
        elif self.enabled:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * BAR_WIDTH)
            sys.stderr.write(f"\r{self.label} [{bar:{BAR_WIDTH}s}] {100 * frac:5.1f}% {note[:40]:40s}")
        else:
            return
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{self.label} done in {time.perf_counter() - self.t0:.1f} s" + " " * 60 + "\n")
            sys.stderr.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
