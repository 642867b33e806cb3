"""Dock layout helpers: tab pages that scroll, so a dock fits a 1366x768 laptop screen."""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QTabWidget, QVBoxLayout, QWidget

MIN_PAGE_HEIGHT = 90  # a page may shrink to this and scroll; the dock's minimum stays small


def scrolled(content: QWidget) -> QScrollArea:
    """``content`` in a frameless vertical scroll area (no horizontal scroll bar)."""
    area = QScrollArea()
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setMinimumHeight(MIN_PAGE_HEIGHT)
    area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    return area


def page() -> tuple[QWidget, QVBoxLayout]:
    """A blank page widget and its vertical layout."""
    widget = QWidget()
    layout = QVBoxLayout(widget)
    layout.setContentsMargins(4, 4, 4, 4)
    return widget, layout


class Tabs(QTabWidget):
    """Named, scrolling pages; other features add their own pages or rows later."""

    def add_page(self, title: str, content: QWidget, tooltip: str = "") -> int:
        index = self.addTab(scrolled(content), title)
        if tooltip:
            self.setTabToolTip(index, tooltip)
        return index

    def page_index(self, title: str) -> int:
        """Index of the page titled ``title`` (-1 if none)."""
        return next((i for i in range(self.count()) if self.tabText(i) == title), -1)

    def show_page(self, title: str) -> None:
        index = self.page_index(title)
        if index >= 0:
            self.setCurrentIndex(index)
