"""The "Train expression model" panel in a real viewer: trains in a worker, live curve, cancel."""

import json

import torch

from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget
from napari_histoexpr.widgets.train_expression import SOURCES, TrainExpressionWidget


def _small(panel, out, epochs):
    panel.configure(genes="ERBB2,COL1A1,PTPRC", epochs=epochs, px=32, window_um=100.0, batch_size=64, aux=False,
                    device="cpu", out=out)


def test_panel_trains_on_manifest(make_napari_viewer, qtbot, cohort, tmp_path):
    viewer = make_napari_viewer()
    panel = TrainExpressionWidget(viewer)
    viewer.window.add_dock_widget(panel)
    panel.configure(source=SOURCES[1], manifest=cohort["train"])
    _small(panel, tmp_path / "model", 2)
    worker = panel.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["genes"] == ["ERBB2", "COL1A1", "PTPRC"] and meta["training"]["sections"] == ["s0", "s1"]
    assert meta["training"]["validation"] is None and meta["metrics"]["epoch"] == 1  # the default route
    assert len(panel.curve.epochs) == 2 and len(panel.curve.steps) >= 2
    assert panel.summary is not None and "saved to" in panel.status
    assert panel.actions() == {"Train": True, "Cancel": False} and not panel.busy


def test_panel_uses_open_section_and_cancel_keeps_state(make_napari_viewer, qtbot, demo, tmp_path):
    viewer = make_napari_viewer()
    spots = SlideSpotsWidget(viewer)
    w = spots.open(slide=str(demo.slide), spots=str(demo.spots))
    with qtbot.waitSignal(w.finished, timeout=60_000):
        pass
    panel = TrainExpressionWidget(viewer)
    _small(panel, tmp_path / "m", 500)
    worker = panel.start()
    qtbot.waitUntil(lambda: len(panel.curve.epochs) >= 1, timeout=120_000)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        panel.cancel()
    assert panel.summary is None and panel.status.startswith("cancelled")
    assert (tmp_path / "m" / "model.json").exists()  # the averaged weights of the last finished epoch
    ck = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    assert int(ck["epoch"]) >= 0
    assert not list((tmp_path / "m").glob("*.part")) and not list((tmp_path / "m").glob(".*part"))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["training"]["validation"] is None and meta["training"]["n_val"] == 0  # every spot fits


def test_panel_without_sections_notifies(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer = make_napari_viewer()
        panel = TrainExpressionWidget(viewer)
        panel.configure(out=tmp_path)
        assert panel.start() is None
        assert any("Slide & spots" in str(n.message) for n in seen)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
