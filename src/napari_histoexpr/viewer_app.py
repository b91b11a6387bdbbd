"""Launching napari with the plugin's panels (used by ``histoexpr demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


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


DEMO_GENES = ["ERBB2", "COL1A1", "PTPRC"]


def demo_model(out: Path, epochs: int = 12, progress: Callable[[str], None] = print) -> Path:
    """Train (once; cached) the demo expression model on two generated sections that are not the
    displayed one; returns the model folder."""
    import json

    from .data.synthetic import PLANTED_GENES, make_demo
    from .evaluation import train_from_manifest_steps
    from .io.manifest import Section, write_manifest
    from .train.expression import TrainConfig

    out = Path(out)
    model_dir = out / "model"
    genes = [g for gs in PLANTED_GENES.values() for g in gs]
    cfg = TrainConfig(genes=genes, max_aux=10, window_um=100.0, px=64, epochs=epochs, lr=1e-3,
                      patience=epochs, batch_size=32, device="auto", seed=0)
    stamp = json.dumps({"epochs": epochs, "genes": genes, "v": 1})
    if (model_dir / "model.json").exists() and (model_dir / "demo.json").exists() \
            and (model_dir / "demo.json").read_text() == stamp:
        return model_dir
    secs = []
    for i, seed in enumerate((101, 102)):
        progress(f"generating training section {i + 1}/2")
        d = make_demo(out / f"train{i + 1}", size=2048, mpp=1.0, seed=seed)
        secs.append(Section(section=f"train{i + 1}", patient=f"P{i + 1}", image=d.slide, spots=d.spots))
    manifest = write_manifest(out / "train.csv", secs)
    gen = train_from_manifest_steps(manifest, model_dir, cfg)
    try:
        while True:
            ev = next(gen)
            if ev.get("stage") == "epoch":
                progress(f"training the demo model: epoch {ev['epoch'] + 1}/{ev['epochs']}, "
                         f"validation mean r {ev['val_mean_r']:.3f}")
            elif ev.get("stage") in ("data", "baselines"):
                progress(ev["msg"])
    except StopIteration:
        pass
    (model_dir / "demo.json").write_text(stamp)
    return model_dir


def show_demo(demo, screenshot: Path | None = None, gene: str = "ERBB2",
              progress: Callable[[str], None] = print, model_dir: Path | None = None) -> Path | None:
    """Open the demo section in a viewer with the "Slide & spots" panel, and, given a model, the
    "Predicted expression" panel with predicted layers over the view and the spot comparison.

    With ``screenshot`` the window is rendered to that PNG and closed; otherwise napari runs
    interactively until the user closes it.
    """
    import napari
    import numpy as np

    from .widgets.slide_spots import SlideSpotsWidget

    viewer = napari.Viewer(title="napari-histoexpr demo", show=True)
    viewer.window.resize(1500, 950)
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
    if model_dir is not None:
        from .widgets.expression_view import ExpressionPanel

        expr = ExpressionPanel(viewer)
        viewer.window.add_dock_widget(expr, name="Predicted expression", area="right")
        expr.load_model(model_dir, genes=[g for g in DEMO_GENES if g != gene][:1] + [gene])
        expr._current.value = gene
        progress("predicting the visible region")
        expr.predict_view()
        wait_until(lambda: not expr.busy)
        wait_for(expr.compare_spots())
        for g in expr._selected():  # show the displayed gene's heatmap; others stay in the list
            layer = expr.gene_layer(g)
            if layer is not None:
                layer.visible = g == gene
        from .widgets.layers import find_layer

        for g in expr._selected():  # residual layers are in the list, hidden: measured spots on top
            resid = find_layer(viewer, f"resid:{g}")
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
