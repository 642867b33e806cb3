"""The longest GUI stall caused by autosave on a large scan (issue #20).

A 10 ms QTimer probe runs on the GUI thread while (1) a segmentation's save writes labels,
proposal and variance of a Z x 512 x 512 scan, then (2) a scripted brush paints every
150 ms for ``--seconds`` with autosave on (labels only). The gaps between ticks beyond
the 10 ms period are the stalls; the same painting with autosave off is the baseline, so
what napari's own painting costs is not charged to autosave.

    python benchmarks/autosave.py                  # 300 x 512 x 512 (display z, y, x)
    python benchmarks/autosave.py --shape 64,512,512 --seconds 6
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

PROBE_MS = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="300,512,512", help="display z,y,x")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    os.environ.setdefault("MEDSEGDIFF_WORK", tempfile.mkdtemp(prefix="autosave-bench-"))

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_medsegdiff import workfolder as wf
    from napari_medsegdiff.gui import layers as L
    from napari_medsegdiff.gui.autosave import Autosaver, work_folder_of

    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    rng = np.random.default_rng(0)
    image = viewer.add_image(rng.random(shape, dtype=np.float32), name="big scan")
    mask, variance = L.ensure_result_layers(viewer, image, "model")
    proposal = (np.asarray(image.data) > 0.5).astype(np.uint8)
    mask.data = proposal.copy()
    mask.metadata[L.PROPOSAL] = proposal
    variance.data = rng.random(shape, dtype=np.float32) * 0.01
    saver = Autosaver()
    folder = work_folder_of(image)

    def probe(action, seconds: float) -> dict[str, float]:
        ticks: list[float] = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(PROBE_MS)
        end = time.perf_counter() + seconds
        QTimer.singleShot(100, action)  # inside the event loop, so its stall is probed
        while time.perf_counter() < end or saver._busy is not None:
            app.processEvents()
            time.sleep(0.001)
        timer.stop()
        gaps = np.diff(ticks) * 1000 - PROBE_MS
        return {"max": float(gaps.max()), "p99": float(np.percentile(gaps, 99))}

    mask.brush_size = 20
    count = [0]

    def paint() -> None:
        k = count[0]
        z = k % shape[0]
        mask.paint((z, 50 + (37 * k) % (shape[1] - 100), 50 + (53 * k) % (shape[2] - 100)), 2)
        count[0] += 1

    def painting() -> None:
        brush = QTimer(viewer.window._qt_window)
        brush.timeout.connect(paint)
        brush.start(150)
        QTimer.singleShot(int(args.seconds * 1000), brush.stop)

    baseline = probe(painting, args.seconds)  # not tracked: no autosave
    saver.track(mask, variance, folder)
    t0 = time.perf_counter()
    first = probe(lambda: saver.save_now(mask, "segmentation"), 1.0)
    first_s = time.perf_counter() - t0
    saves_before = len(wf.history(folder))
    during = probe(painting, args.seconds)
    saved = wf.load(folder).labels
    assert saved.tobytes() == np.asarray(L.labels_of(mask)).tobytes() or saver.errors == []
    saver.close()
    mb = np.prod(shape) / 1e6
    print(f"scan {shape} (labels {mb:.0f} MB uint8, variance {4 * mb:.0f} MB float32)")
    print(f"full save (labels + proposal + variance): {first_s:.2f} s wall, off the GUI thread")
    print("| probe (10 ms timer) | longest stall ms | p99 ms |")
    print("|---|---|---|")
    print(f"| painting, autosave off | {baseline['max']:.0f} | {baseline['p99']:.0f} |")
    print(f"| full save after a run | {first['max']:.0f} | {first['p99']:.0f} |")
    print(f"| painting, autosave on (2 s) | {during['max']:.0f} | {during['p99']:.0f} |")
    print(f"brush strokes: {count[0]}, snapshots: {saves_before}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
