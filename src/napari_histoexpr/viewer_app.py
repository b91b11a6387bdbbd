"""Launching napari with the plugin's panels (used by ``histoexpr demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def wait_for(worker, timeout_s: float = 600.0) -> None:
    """Process Qt events until ``worker`` has finished (for scripts; the GUI never blocks)."""
    import time

    from qtpy.QtWidgets import QApplication

    if worker is None:
        return
    done = []
    worker.finished.connect(lambda: done.append(True))
    t0 = time.monotonic()
    while not done and time.monotonic() - t0 < timeout_s:
        QApplication.processEvents()
        if not done and not worker.is_running and time.monotonic() - t0 > 1.0:
            QApplication.processEvents()
            break
        time.sleep(0.01)


def show_demo(demo, screenshot: Path | None = None, gene: str = "ERBB2",
              progress: Callable[[str], None] = print) -> Path | None:
    """Open the demo section in a viewer with the "Slide & spots" panel.

    With ``screenshot`` the window is rendered to that PNG and closed; otherwise napari runs
    interactively until the user closes it.
    """
    import napari
    import numpy as np

    from .widgets.slide_spots import SlideSpotsWidget

    viewer = napari.Viewer(title="napari-histoexpr demo", show=True)
    panel = SlideSpotsWidget(viewer)
    viewer.window.add_dock_widget(panel, name="Slide & spots", area="right")
    panel._gene.value = gene
    progress("opening slide and spots in a worker thread")
    worker = panel.open(slide=str(demo.slide), spots=str(demo.spots))
    wait_for(worker)
    if panel.slide is None:
        raise RuntimeError("the demo section failed to open: " + str(panel._status.value))
    truth = sorted(Path(demo.truth).glob("class_map_ds*.npy"))
    if truth:
        ds = float(truth[0].stem.split("_ds")[1])
        mpp = panel.slide.world_mpp
        viewer.add_labels(np.load(truth[0]), name="planted classes", scale=(ds * mpp, ds * mpp),
                          translate=((ds - 1) / 2 * mpp,) * 2, visible=False, opacity=0.4,
                          units="µm" if panel.slide.mpp else "pixel")
    viewer.reset_view()
    if screenshot is None:
        napari.run()
        return None
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    viewer.window.resize(1400, 900)
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()
    viewer.screenshot(str(screenshot), canvas_only=False)
    viewer.close()
    return screenshot
