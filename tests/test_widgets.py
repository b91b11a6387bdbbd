"""The "Slide & spots" panel, the reader and the sample data in a real napari viewer (under Xvfb)."""

from pathlib import Path

import numpy as np
import pytest

from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget


@pytest.fixture
def notifications():
    """Collect napari notifications (what the user sees as toasts)."""
    from napari.utils.notifications import notification_manager

    seen = []

    def grab(event):
        seen.append(event)

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


def _open(qtbot, panel, **kw):
    worker = panel.open(**kw)
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    return worker


def test_panel_opens_demo_in_worker(make_napari_viewer, qtbot, demo):
    viewer = make_napari_viewer()
    panel = SlideSpotsWidget(viewer)
    viewer.window.add_dock_widget(panel)
    steps = []
    worker = panel.open(slide=str(demo.slide), spots=str(demo.spots))
    worker.yielded.connect(steps.append)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert steps and steps[-1] == "done"  # progress came from the worker thread
    slide, spots = panel.slide_layer, panel.spots_layer
    assert slide is not None and slide.multiscale and slide.rgb
    assert slide.scale[-1] == pytest.approx(0.5)  # µm world
    assert str(slide.units[-1]) == "micrometer"
    assert len(spots.data) == panel.adata.n_obs
    # true spot size: 55 µm Visium spots
    assert np.allclose(spots.size, 55.0, rtol=0.02)
    assert {"spot", "value"} <= set(spots.features.columns)
    assert spots.face_colorbar.visible
    # spots lie where the counts say (y, x in µm = level-0 px * mpp)
    xy = panel.adata.obsm["spatial"]
    assert np.allclose(spots.data[:, 0], xy[:, 1] * 0.5, atol=0.5)
    # hover: status shows spot id and value
    status = spots.get_status(spots.data[0], world=True)
    assert panel.adata.obs_names[0] in str(status) and "value" in str(status)
    assert panel.setting("slide") == Path(demo.slide)


def test_gene_change_updates_layer_in_place(make_napari_viewer, qtbot, demo, notifications):
    viewer = make_napari_viewer()
    panel = SlideSpotsWidget(viewer)
    _open(qtbot, panel, slide=str(demo.slide), spots=str(demo.spots))
    layer = panel.spots_layer
    # completion over all genes, case-insensitive "contains"
    assert set(panel.gene_completions("")) == set(panel.adata.var_names)
    assert {"COL1A1", "COL1A2"} <= set(panel.gene_completions("col1"))

    panel.set_gene("ERBB2")
    erbb2 = layer.features["value"].to_numpy().copy()
    panel.configure(gene="COL1A1", mode="raw")  # the combo's change re-applies
    assert panel.spots_layer is layer and "COL1A1" in layer.name
    col = layer.features["value"].to_numpy()
    assert np.corrcoef(erbb2, col)[0, 1] < 0  # tumour vs stroma marker
    assert np.allclose(col, np.asarray(panel.adata[:, "COL1A1"].X.todense()).ravel())
    # percentile contrast
    panel.configure(high_percentile=50.0)
    assert layer.face_contrast_limits[1] == pytest.approx(np.percentile(col, 50))
    # an unknown gene warns and keeps the layer
    panel.set_gene("NOTAGENE")
    assert any("NOTAGENE" in str(n.message) for n in notifications)
    assert panel.spots_layer is layer and len(viewer.layers) == 2


def test_broken_slide_notifies_and_viewer_keeps_working(make_napari_viewer, qtbot, shared_data,
                                                        notifications, demo):
    viewer = make_napari_viewer()
    panel = SlideSpotsWidget(viewer)
    _open(qtbot, panel, slide=str(shared_data / "wsi" / "broken.svs"))
    qtbot.waitUntil(lambda: any("broken.svs" in str(n.message) for n in notifications), timeout=5000)
    assert panel.status.startswith("error:") and panel.actions()["Open"]
    assert len(viewer.layers) == 0
    panel.configure(slide=None)  # the panel opens the next file fine
    _open(qtbot, panel, slide=str(demo.slide), spots=str(demo.spots))
    assert panel.slide_layer is not None


def test_reader_and_sample_data(make_napari_viewer, demo, monkeypatch):
    viewer = make_napari_viewer()
    layers = viewer.open(str(demo.slide), plugin="napari-histoexpr")
    assert layers[0].multiscale and layers[0].scale[-1] == pytest.approx(0.5)
    layers = viewer.open(str(demo.spots), plugin="napari-histoexpr")
    assert [ly._type_string for ly in layers] == ["image", "points"]
    monkeypatch.setenv("HISTOEXPR_CACHE", str(Path(demo.folder).parent / "cache"))
    from napari_histoexpr import _sample_data

    monkeypatch.setattr(_sample_data, "DEMO_SIZE", 1024)
    viewer.layers.clear()
    viewer.open_sample("napari-histoexpr", "demo_section")
    names = [ly.name for ly in viewer.layers]
    assert names[0] == "demo slide" and "planted classes" in names


def test_screenshot_slide_spots_colorbar(make_napari_viewer, qtbot, demo, tmp_path):
    """Render the real canvas and check the slide, spots and colorbar pixels (the docs image is made by
    ``docs/make_screenshots.py slide-spots``, not by the tests)."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1200, 900)
    panel = SlideSpotsWidget(viewer)
    viewer.window.add_dock_widget(panel, name="Slide & spots")
    panel.configure(gene="ERBB2")
    _open(qtbot, panel, slide=str(demo.slide), spots=str(demo.spots))
    viewer.reset_view()
    qtbot.wait(200)
    img = viewer.screenshot(canvas_only=True, flash=False)
    rgb = img[..., :3].astype(int)
    # H&E pink tissue (red > blue > green) and whitish glass around it
    pink = (rgb[..., 0] > 180) & (rgb[..., 1] < 170) & (rgb[..., 2] > 120) & (rgb[..., 0] > rgb[..., 1] + 30)
    assert pink.mean() > 0.02
    # viridis spots: yellow-green high values (g > 180, b < 100) and dark purple low values
    yellow = (rgb[..., 1] > 180) & (rgb[..., 2] < 110) & (rgb[..., 0] > 150)
    purple = (rgb[..., 0] > 50) & (rgb[..., 0] < 90) & (rgb[..., 1] < 30) & (rgb[..., 2] > 70)
    assert yellow.sum() > 200 and purple.sum() > 200
    # the colorbar is drawn in the top-right corner: a vertical viridis ramp
    h, w = rgb.shape[:2]
    corner = rgb[: h // 3, -w // 6:]
    assert ((corner[..., 1] > 200) & (corner[..., 2] < 80)).sum() > 50
    full = viewer.screenshot(str(tmp_path / "slide_spots.png"), canvas_only=False, flash=False)
    assert full.shape[0] > img.shape[0] and (tmp_path / "slide_spots.png").stat().st_size > 10_000


def test_workers_close_quit_generators_in_their_thread_and_are_not_kept(make_napari_viewer, qtbot):
    """A quit worker runs its generator's clean-up in the worker thread before ``finished`` (not later
    wherever the garbage collector closes it), and finished workers are not kept alive (napari's
    ``create_worker`` keeps every worker in the window's task list while a viewer is open)."""
    import gc
    import threading
    import time
    import weakref

    from napari_histoexpr.widgets._common import start_worker

    make_napari_viewer()
    cleaned = []

    def job(n):
        try:
            for i in range(n):
                time.sleep(0.02)
                yield i
        finally:
            cleaned.append(threading.current_thread())

    refs = []
    for _ in range(3):
        worker = start_worker(job, 10_000, desc="test job", total=10_000)
        qtbot.waitUntil(lambda w=worker: w.is_running, timeout=5_000)
        with qtbot.waitSignal(worker.finished, timeout=10_000):
            worker.quit()
        assert cleaned and cleaned[-1] is not threading.main_thread()
        refs.append(weakref.ref(worker))
    worker = start_worker(job, 3, desc="test job", total=3)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        pass
    refs.append(weakref.ref(worker))
    del worker
    qtbot.wait(50)
    gc.collect()
    assert len(cleaned) == 4 and all(r() is None for r in refs)


def test_streaming_tiles_redraw_at_once_then_at_most_every_gap(qtbot):
    """Tiles arriving one after another (a dense view releases some after every block) are drawn:
    the first at once, then at most one redraw per REPAINT_GAP_S, and the last ones too."""
    import time

    from qtpy.QtWidgets import QWidget

    from napari_histoexpr.widgets._gene_layers import REPAINT_GAP_S, GeneLayers

    class Layers(GeneLayers):
        def __init__(self):
            self.draws = []
            self._init_repaint(parent)

        def _refresh_layers(self, final=True):
            self.draws.append(time.perf_counter())

    parent = QWidget()
    layers = Layers()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1.0:  # a tile every 20 ms for a second
        layers._schedule_repaint()
        qtbot.wait(20)
    qtbot.waitUntil(lambda: not layers._repaint.isActive(), timeout=2000)
    gaps = np.diff(layers.draws)
    assert layers.draws[0] - t0 < 0.1  # the first tiles without waiting
    assert len(layers.draws) <= 1 + 1.0 / REPAINT_GAP_S + 1 and gaps.min() >= REPAINT_GAP_S - 0.02
    assert layers.draws[-1] > t0 + 1.0 - REPAINT_GAP_S  # the tiles of the end are drawn as well
