"""Launching napari with the plugin's panels (used by ``histoexpr demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .datasets import CLASSES
from .demo import DEMO_GENES
from .layerdata import planted_classes_layer_data


def wait_until(cond, timeout_s: float = 600.0) -> None:
    """Process Qt events until ``cond()`` is true (for scripts; the GUI never blocks)."""
    import time

    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout_s:
        QApplication.processEvents()
        time.sleep(0.005)


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
              progress: Callable[[str], None] = print, model_dir: Path | None = None) -> Path | None:
    """Open the demo section in a viewer with the "Slide & spots" panel, and, given a model, the
    "Predicted expression" panel with predicted layers over the view and the spot comparison.

    With ``screenshot`` the window is rendered to that PNG and closed; otherwise napari runs
    interactively until the user closes it.
    """
    import napari

    from .widgets.slide_spots import SlideSpotsWidget

    viewer = napari.Viewer(title="napari-histoexpr demo", show=True)
    viewer.window.resize(1500, 950)
    panel = SlideSpotsWidget(viewer)
    viewer.window.add_dock_widget(panel, name="Slide & spots", area="right")
    panel.configure(gene=gene)
    progress("opening slide and spots in a worker thread")
    worker = panel.open(slide=str(demo.slide), spots=str(demo.spots))
    wait_for(worker)
    if panel.slide is None:
        raise RuntimeError("the demo section failed to open: " + panel.status)
    truth = planted_classes_layer_data(demo, CLASSES, panel.slide.world_mpp, "µm" if panel.slide.mpp else "pixel")
    if truth is not None:
        viewer.add_labels(truth[0], **truth[1])
    viewer.reset_view()
    if model_dir is not None:
        from .widgets.expression_view import ExpressionPanel

        expr = ExpressionPanel(viewer)
        viewer.window.add_dock_widget(expr, name="Predicted expression", area="right")
        expr.load_model(model_dir, genes=[g for g in DEMO_GENES if g != gene][:1] + [gene])
        expr.configure(display_gene=gene)
        progress("predicting the visible region")
        expr.predict_view()
        wait_until(lambda: not expr.busy)
        wait_for(expr.compare_spots())
        for g in expr.selected_genes():  # show the displayed gene's heatmap; others stay in the list
            layer = expr.gene_layer(g)
            if layer is not None:
                layer.visible = g == gene
        for g in expr.selected_genes():  # residual layers are in the list, hidden: measured spots on top
            resid = expr.residual_layer(g)
            if resid is not None:
                resid.visible = False
        if panel.spots_layer is not None:  # measured spots above the predicted heatmaps
            viewer.layers.move(viewer.layers.index(panel.spots_layer), len(viewer.layers))
            viewer.layers.selection.active = panel.spots_layer
        rows = expr.table_rows()
        for g, rv, ra, n in rows:
            progress(f"{g}: Pearson r predicted vs measured over {n} spots in view {rv:.3f}, section {ra:.3f}")
    if screenshot is None:
        napari.run()
        return None
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(screenshot), canvas_only=False)
    viewer.close()
    return screenshot
