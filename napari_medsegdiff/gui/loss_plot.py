"""A small live training plot: loss per step and held-out Dice (matplotlib in Qt)."""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

_BG, _FG = "#262930", "#d6d0ce"  # napari's dark theme


class LossPlot(FigureCanvasQTAgg):
    """Loss (left axis, log scale) and held-out Dice (right axis, 0..1) against step."""

    def __init__(self, parent=None) -> None:
        figure = Figure(figsize=(3.2, 2.0), dpi=90, facecolor=_BG, layout="constrained")
        super().__init__(figure)
        self.setParent(parent)
        self.setMinimumHeight(150)
        self.ax = figure.add_subplot(111)
        self.ax_dice = self.ax.twinx()
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.dice: list[tuple[int, float]] = []
        (self._loss_line,) = self.ax.plot([], [], color="#5aa9e6", lw=1.0, label="loss")
        (self._dice_line,) = self.ax_dice.plot(
            [], [], color="#f5a623", marker="o", ms=3, lw=1.2, label="held-out Dice"
        )
        self._style()
        self.draw_idle()

    def _style(self) -> None:
        for ax in (self.ax, self.ax_dice):
            ax.set_facecolor(_BG)
            ax.tick_params(colors=_FG, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color("#5a5f6a")
        self.ax.set_xlabel("step", color=_FG, fontsize=8)
        self.ax.set_ylabel("loss", color="#5aa9e6", fontsize=8)
        self.ax_dice.set_ylabel("held-out Dice", color="#f5a623", fontsize=8)
        self.ax_dice.set_ylim(0, 1)
        self.ax.set_xlim(0, 1)
        self.ax.set_ylim(0, 1)

    def clear(self) -> None:
        self.steps, self.losses, self.dice = [], [], []
        self.redraw()

    def add(self, points: list[tuple[int, float | None, float | None]]) -> None:
        """Append ``(step, loss, dice)`` points (either value may be None)."""
        for step, loss, dice in points:
            if loss is not None and math.isfinite(loss):
                self.steps.append(step)
                self.losses.append(loss)
            if dice is not None and math.isfinite(dice):
                self.dice.append((step, dice))

    def redraw(self) -> None:
        self._loss_line.set_data(self.steps, self.losses)
        if self.dice:
            xs, ys = zip(*self.dice)
            self._dice_line.set_data(xs, ys)
        else:
            self._dice_line.set_data([], [])
        if self.losses:
            positive = [v for v in self.losses if v > 0]
            self.ax.set_yscale("log" if len(positive) == len(self.losses) else "linear")
            self.ax.set_xlim(0, max(max(self.steps), 1) * 1.02 + 1)
            lo, hi = min(self.losses), max(self.losses)
            pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
            if self.ax.get_yscale() == "log":
                self.ax.set_ylim(lo / 1.2, hi * 1.2)
            else:
                self.ax.set_ylim(lo - pad, hi + pad)
        self.draw_idle()
