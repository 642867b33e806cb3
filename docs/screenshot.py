"""Make docs/images/screenshot.png: the demo viewer after segmenting a few central slices.

``--fill --out docs/images/fill_between.png``: the Correct tab after painting the first and
last of those slices and *Fill between slices*.

The picture shows a real run: the mask (own colours), the uncertainty layer over it, and
the Segment dock's Review tab with the class names and the ranked slices.

Run with a display (or headless: ``xvfb-run -a .venv/bin/python docs/screenshot.py``).
Uses the shipped default model when installed; otherwise pass ``--model FOLDER`` (with
``--model tiny`` an untrained tiny model is built in a temporary folder: layout only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def tiny_untrained_model(folder: Path) -> Path:
    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.model import build_model

    cfg = preset("tiny")
    return save_model(folder / "tiny-untrained", build_model(cfg).state_dict(), cfg)


def hover_on_a_class(viewer, mask, z: int) -> None:
    """Put the cursor on a labelled voxel: the status bar shows its class name."""
    import numpy as np

    ys, xs = np.nonzero(np.asarray(mask.data[z]) == 1)
    if len(ys):
        k = len(ys) // 2
        world = mask.data_to_world([z, ys[k], xs[k]])
        viewer.cursor.position = (viewer.dims.point[0], *world[1:])


def paint_and_fill(app, viewer, segment, mask, slices: list[int]) -> None:
    """Correct the first and last slice to the reference labels, then fill between."""
    import numpy as np

    from napari_medsegdiff.gui import layers as L

    reference = next(lay for lay in viewer.layers if lay is not mask and hasattr(lay, "paint"))
    truth = np.asarray(reference.data)
    for z in (slices[0], slices[-1]):
        ys, xs = np.mgrid[: truth.shape[1], : truth.shape[2]]
        mask.data_setitem((np.full(ys.size, z), ys.ravel(), xs.ravel()), truth[z].ravel())
    done = []
    segment.fill_finished.connect(done.append)
    segment.fill_between_slices()
    wait(app, lambda: bool(done), 120)
    segment.tabs.show_page("Correct")
    L.jump_to_slice(viewer, mask, slices[len(slices) // 2])


def wait(app, condition, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the segmentation did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder, or 'tiny' (default: shipped model)")
    parser.add_argument("--out", default=str(HERE / "images" / "screenshot.png"))
    parser.add_argument("--slices", type=int, default=5, help="central slices to segment")
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="1366x768", help="window size WxH (a laptop)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--fill",
        action="store_true",
        help="Correct tab: paint the reference labels on the first and last slice, then "
        "Fill between slices (docs/images/fill_between.png)",
    )
    args = parser.parse_args(argv)
    # the pictures' autosaves go to a throwaway folder, not the user's work folders
    os.environ.setdefault("MEDSEGDIFF_WORK", tempfile.mkdtemp(prefix="screenshot-work-"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medsegdiff.checkpoints import list_models
    from napari_medsegdiff.gui import layers as L
    from napari_medsegdiff.gui.launch import build_demo_viewer

    model = args.model
    if model is None and not any(e.is_default for e in list_models()):
        sys.exit("the default model is not installed: pass --model FOLDER (or --model tiny)")
    if model == "tiny":
        model = str(tiny_untrained_model(Path(tempfile.mkdtemp())))
        print("using an untrained tiny model: the mask shows the layout only")

    viewer = napari.Viewer(title="napari-medsegdiff")
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window.resize(width, height)
    segment, _ = build_demo_viewer(viewer, model)
    app = QApplication.instance()
    image = segment.image_combo.layer()
    depth = L.spatial_shape(image)[0]
    centre = depth // 2
    start = max(0, centre - args.slices // 2)
    slices = list(range(start, min(depth, start + args.slices)))
    segment.ensemble.setValue(args.ensemble)
    segment.steps.setValue(args.steps)
    segment.device.setCurrentText(args.device)
    if not segment.run(slices=slices):
        return 1
    wait(app, lambda: not segment.running, args.timeout)
    segment.scope.setCurrentText("slice range")
    segment.range_start.setValue(slices[0])
    segment.range_stop.setValue(slices[-1] + 1)
    ranked = segment.review.slices()
    if ranked:
        segment.review.list.setCurrentRow(0)  # jumps to the most uncertain slice
    segment.tabs.show_page("Review")  # class names, readable uncertainty scores
    mask = segment.mask_layer()
    if args.fill:
        paint_and_fill(app, viewer, segment, mask, slices)
    viewer.layers.selection.active = mask
    if not args.fill:
        hover_on_a_class(viewer, mask, L.current_index(viewer, mask))
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
