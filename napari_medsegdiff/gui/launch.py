"""Open napari with the sample brain, the shipped model and both docks (``medsegdiff demo``
runs ``python -m napari_medsegdiff.gui.launch``, so the CLI never imports the GUI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer

from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.finetune_dock import FinetuneDock
from napari_medsegdiff.gui.segment_dock import SegmentDock


def build_demo_viewer(
    viewer: Any, model: str | Path | None = None
) -> tuple[SegmentDock, FinetuneDock]:
    """Add the sample scan and both docks to ``viewer``; returns (segment, fine-tune) docks.

    Selects ``model`` (default: the shipped model, if installed) and shows a central slice.
    The reference tissue labels are added hidden (as outlines when shown), so the model's
    mask is what one sees.
    """
    from napari_medsegdiff._sample_data import SAMPLE_LABELS_NAME, SAMPLE_T1_NAME, make_sample_data
    from napari_medsegdiff.checkpoints import list_models

    for data, kwargs, kind in make_sample_data():
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        if layer.name == SAMPLE_LABELS_NAME:
            layer.visible = False
            layer.contour = 1  # outlines when shown: easy to tell from the model's mask
    segment = SegmentDock(viewer)
    finetune = FinetuneDock(viewer)
    finetune.segment_dock = segment
    segment_dw = viewer.window.add_dock_widget(segment, name="Segment", area="right")
    viewer.window.add_dock_widget(finetune, name="Fine-tune", area="right", tabify=True)
    QTimer.singleShot(0, segment_dw.raise_)  # show the Segment tab (once laid out)
    if model is None:
        default = next((e for e in list_models() if e.is_default), None)
        model = default.path if default is not None else None
    if model is not None:
        segment.select_model(model)
        finetune.model_picker.select_model(model)
    image = viewer.layers[SAMPLE_T1_NAME]
    segment.image_combo.setCurrentText(image.name)
    viewer.layers.selection.active = image
    L.jump_to_slice(viewer, image, L.spatial_shape(image)[0] // 2)
    return segment, finetune


def launch_demo(model: str | Path | None = None) -> None:
    """Open the demo viewer and run the Qt event loop until the window closes."""
    import napari

    viewer = napari.Viewer(title="napari-medsegdiff demo")
    build_demo_viewer(viewer, model)
    napari.run()


if __name__ == "__main__":
    launch_demo()
