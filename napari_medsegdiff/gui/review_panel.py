"""The "review by uncertainty" list: slices ranked by boundary variance, click to jump."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from napari_medsegdiff.review import UNCERTAIN_VARIANCE


class ReviewPanel(QGroupBox):
    """A ranked slice list with previous / next; ``on_jump(index)`` moves the viewer."""

    def __init__(
        self, on_jump: Callable[[int], None], on_refresh: Callable[[], None], parent=None
    ) -> None:
        super().__init__("Review by uncertainty", parent)
        self.on_jump = on_jump
        self.list = QListWidget()
        self.list.setMaximumHeight(140)
        self.list.setToolTip(
            "Slices ranked by ensemble disagreement along the mask boundary: the share of "
            "boundary pixels where the samples disagree about the class (variance >= "
            f"{UNCERTAIN_VARIANCE}: about one sample in five votes otherwise). Click to jump there"
        )
        self.list.itemClicked.connect(self._clicked)
        self.list.currentRowChanged.connect(self._row_changed)
        self.prev_button = QPushButton("◀ Previous")
        self.prev_button.setToolTip("Jump to the previous slice in the ranking")
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip("Jump to the next most uncertain slice")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Re-rank the slices (after edits or a new run)")
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.refresh_button.clicked.connect(on_refresh)
        buttons = QHBoxLayout()
        for button in (self.prev_button, self.next_button, self.refresh_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(buttons)

    def set_ranking(
        self, ranking: list[tuple[int, float]], shares: dict[int, float] | None = None
    ) -> None:
        """Show ``[(slice, score), ...]`` most uncertain first (``shares``: 0..1 per slice)."""
        self.list.blockSignals(True)
        self.list.clear()
        for index, score in ranking:
            share = (shares or {}).get(index)
            text = (
                f"slice {index}: {100 * share:.0f} % of the boundary uncertain"
                if share is not None
                else f"slice {index}: mean variance {score:.4f}"
            )
            item = QListWidgetItem(text)
            item.setToolTip(f"mean boundary variance {score:.4f}")
            item.setData(Qt.ItemDataRole.UserRole, int(index))
            self.list.addItem(item)
        self.list.blockSignals(False)

    def slices(self) -> list[int]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def _clicked(self, item: QListWidgetItem) -> None:
        self.on_jump(int(item.data(Qt.ItemDataRole.UserRole)))

    def _row_changed(self, row: int) -> None:
        if 0 <= row < self.list.count():
            self.on_jump(int(self.list.item(row).data(Qt.ItemDataRole.UserRole)))

    def step(self, delta: int) -> None:
        """Select the next (+1) / previous (-1) ranked slice and jump there."""
        if not self.list.count():
            return
        row = self.list.currentRow()
        row = 0 if row < 0 else min(max(row + delta, 0), self.list.count() - 1)
        if row == self.list.currentRow():
            self.on_jump(int(self.list.item(row).data(Qt.ItemDataRole.UserRole)))
        self.list.setCurrentRow(row)
