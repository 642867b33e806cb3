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


class ReviewPanel(QGroupBox):
    """A ranked slice list with previous / next; ``on_jump(index)`` moves the viewer."""

    def __init__(
        self, on_jump: Callable[[int], None], on_refresh: Callable[[], None], parent=None
    ) -> None:
        super().__init__("Review by uncertainty", parent)
        self.on_jump = on_jump
        self.list = QListWidget()
        self.list.setMaximumHeight(140)
        self.list.setToolTip("Slices ranked by mean ensemble variance along the mask boundary")
        self.list.itemClicked.connect(self._clicked)
        self.list.currentRowChanged.connect(self._row_changed)
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.refresh_button = QPushButton("Refresh")
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.refresh_button.clicked.connect(on_refresh)
        buttons = QHBoxLayout()
        for button in (self.prev_button, self.next_button, self.refresh_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(buttons)

    def set_ranking(self, ranking: list[tuple[int, float]]) -> None:
        """Show ``[(slice, score), ...]`` most uncertain first."""
        self.list.blockSignals(True)
        self.list.clear()
        for index, score in ranking:
            item = QListWidgetItem(f"slice {index}   variance {score:.4f}")
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
