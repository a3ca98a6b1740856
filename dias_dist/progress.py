"""Progress bars on stderr (tqdm: count, rate, ETA).

``Progress``: the training bar (rank 0): it/s, ETA, patches/s, data-wait share and the current loss.
``bar``: any other long loop (phantom generation, sharding, evaluation, pseudo-labelling).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    import torch


class Progress:
    """``update(loss, data_wait_s, step_s)`` after each optimizer step; ``close()`` at the end.

    ``patches_per_step`` is the global batch; data-wait share is the fraction of wall time spent
    waiting for the loader over the last ``update`` window. ``loss`` may be a device tensor: it is
    read (one host sync) only when the postfix is refreshed, every 5 steps and at the end.
    """

    def __init__(self, total_steps: int, start_step: int, patches_per_step: int, enabled: bool):
        self.patches_per_step = patches_per_step
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled, dynamic_ncols=True,
                        unit="it", desc="train", file=sys.stderr, mininterval=1.0)
        self.wait_s = 0.0
        self.busy_s = 0.0

    def update(self, loss: float | torch.Tensor, data_wait_s: float, step_s: float) -> None:
        if self.bar.disable:
            return
        self.wait_s += data_wait_s
        self.busy_s += step_s
        self.bar.update(1)
        if self.bar.n % 5 == 0 or self.bar.n == self.bar.total:
            rate = self.bar.format_dict.get("rate") or 0.0
            share = self.wait_s / max(self.busy_s, 1e-9)
            self.bar.set_postfix_str(f"patches/s={rate * self.patches_per_step:.0f} wait={share:.0%} "
                                     f"loss={float(loss):.4f}", refresh=False)
            self.wait_s = self.busy_s = 0.0

    def close(self) -> None:
        self.bar.close()


def bar(iterable, *, total: int | None = None, desc: str, unit: str, enabled: bool | None = None,
        leave: bool = True):
    """``iterable`` wrapped in a tqdm bar (count, rate, ETA when ``total`` is known).

    ``enabled``: True shows it, False hides it, None shows it only when stderr is a terminal.
    ``leave=False`` clears the bar when done (bars that open under the training bar).
    """
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled,
                dynamic_ncols=True, file=sys.stderr, mininterval=1.0, leave=leave)
