"""Progress on stderr: a tqdm bar (count, rate, ETA) on a terminal, plain periodic lines elsewhere.

``Progress``: the training bar (rank 0): it/s, ETA, patches/s, data-wait share and the current loss.
``bar``: any other long loop (phantom generation, sharding, evaluation, pseudo-labelling).

When stderr is no terminal (a log file, a batch scheduler, ``kubectl logs``) a bar would fill the log
with carriage-return updates, so an enabled bar becomes ``PlainLines`` instead: one line at each tenth
of the work (or every ``PLAIN_EVERY_S`` seconds, whichever comes first) and one at the end; a bar a
terminal would clear when done (``leave=False``: evaluation inside training) prints only when it runs
longer than ``PLAIN_EVERY_S``.
"""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    import torch

PLAIN_EVERY_S = 60.0  # the longest gap between two plain progress lines


def interactive() -> bool:
    """Whether stderr is a terminal (a bar can redraw itself there)."""
    return sys.stderr.isatty()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class PlainLines:
    """Progress as whole lines on stderr: ``[dias] DESC N/TOTAL (P%) R UNIT/s, elapsed E, ETA A[, extra]``.

    A line is printed when a tenth of ``total`` is passed, when ``every_s`` seconds went by since
    the last line, and at ``close`` (when anything happened since the last line)."""

    def __init__(self, total: int | None, desc: str, unit: str, *, initial: int = 0, every_s: float = PLAIN_EVERY_S,
                 transient: bool = False):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = self.initial = self.printed = initial
        self.start = self.last = time.monotonic()
        self.extra = ""
        self.transient, self.lines = transient, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = max(1, (self.total or 0) // 10)
        now = time.monotonic()
        if self.transient:  # a loop inside another (validation inside training): only when it runs long
            if now - self.last >= self.every_s or (self.lines and self.n == self.total):
                self._line(now)
        elif (self.total and self.n // tenth != self.printed // tenth) or now - self.last >= self.every_s \
                or self.n == self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = (self.n - self.initial) / max(elapsed, 1e-9)
        parts = [f"[dias] {self.desc} {self.n}" + (f"/{self.total} ({self.n / self.total:.0%})" if self.total else ""),
                 f"{rate:.3g} {self.unit}/s", f"elapsed {_duration(elapsed)}"]
        if self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        print(", ".join(parts) + (f", {self.extra}" if self.extra else ""), file=sys.stderr, flush=True)
        self.printed, self.last, self.lines = self.n, now, self.lines + 1

    def close(self) -> None:
        if self.n != self.printed and (self.lines or not self.transient):
            self._line(time.monotonic())


class Progress:
    """``update(loss, data_wait_s, step_s)`` after each optimizer step; ``close()`` at the end.

    ``patches_per_step`` is the global batch; data-wait share is the fraction of wall time spent
    waiting for the loader over the last ``update`` window. ``loss`` may be a device tensor: it is
    read (one host sync) only when the postfix is refreshed, every 5 steps and at the end.
    ``terminal``: a bar (True) or plain lines (False); default: whether stderr is a terminal.
    """

    def __init__(self, total_steps: int, start_step: int, patches_per_step: int, enabled: bool,
                 terminal: bool | None = None):
        self.patches_per_step = patches_per_step
        terminal = interactive() if terminal is None else terminal
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (enabled and terminal), dynamic_ncols=True,
                        unit="it", desc="train", file=sys.stderr, mininterval=1.0)
        self.plain = PlainLines(total_steps, "train step", "it", initial=start_step) if enabled and not terminal else None
        self.wait_s = 0.0
        self.busy_s = 0.0
        self.steps = start_step

    def update(self, loss: float | torch.Tensor, data_wait_s: float, step_s: float) -> None:
        if self.bar.disable and self.plain is None:
            return
        self.wait_s += data_wait_s
        self.busy_s += step_s
        self.steps += 1
        if self.steps % 5 == 0 or self.steps == self.bar.total:
            share = self.wait_s / max(self.busy_s, 1e-9)
            if self.plain is not None:
                self.plain.extra = f"wait {share:.0%}, loss {float(loss):.4f}"
            else:
                rate = self.bar.format_dict.get("rate") or 0.0
                self.bar.set_postfix_str(f"patches/s={rate * self.patches_per_step:.0f} wait={share:.0%} "
                                         f"loss={float(loss):.4f}", refresh=False)
            self.wait_s = self.busy_s = 0.0
        if self.plain is not None:
            self.plain.update(1)
        else:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.plain is not None:
            self.plain.close()


def bar(iterable, *, total: int | None = None, desc: str, unit: str, enabled: bool | None = None,
        leave: bool = True):
    """``iterable`` with its progress shown: a tqdm bar (count, rate, ETA when ``total`` is known) on a
    terminal, ``PlainLines`` elsewhere.

    ``enabled``: True shows it, False hides it, None shows it only when stderr is a terminal.
    ``leave=False`` clears the bar when done (bars that open under the training bar).
    """
    if enabled and not interactive():
        return _plain(iterable, total, desc, unit, transient=not leave)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled,
                dynamic_ncols=True, file=sys.stderr, mininterval=1.0, leave=leave)


def _plain(iterable, total: int | None, desc: str, unit: str, transient: bool = False):
    """Yield ``iterable``'s items, printing ``PlainLines`` progress (total: ``len(iterable)`` when it has one;
    ``transient``: a bar that a terminal would clear, i.e. lines only when it runs longer than ``PLAIN_EVERY_S``)."""
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    lines = PlainLines(total, desc, unit, transient=transient)
    try:
        for item in iterable:
            yield item
            lines.update(1)
    finally:
        lines.close()
