"""Visible-region inference (headless), whole-slide prediction (zarr/h5ad, resume, reader, dask)
and the "Predicted expression" panel following the camera in a real viewer."""

import json
import warnings

import numpy as np
import pytest

from napari_histoexpr.infer.grid import Grid, Raster, grid_layer_geometry
from napari_histoexpr.infer.live_view import LatestRequest
from napari_histoexpr.infer.region import RegionPredictor
from napari_histoexpr.infer.tile_cache import TileCache
from napari_histoexpr.layerdata import visible_box
from napari_histoexpr.steps import drain


def test_grid_geometry_aligns_cell_centres():
    g = Grid(stride=40.0, rows=50, cols=30, tile_cells=8)
    geo = grid_layer_geometry(g, world_mpp=0.5)
    # napari: data pixel i centred at translate + i*scale; level-0 px p centred at world p*mpp
    for i in (0, 7, 49):
        level0_centre = (i + 0.5) * 40.0 - 0.5  # pixel-index coordinate of the cell centre
        assert geo["translate"][0] + i * geo["scale"][0] == pytest.approx(level0_centre * 0.5)
    assert g.tile_rows == 7 and g.tile_cols == 4
    c = g.cell_centres(1, 2)
    assert c.shape == (64, 2) and tuple(c[0]) == (16.5 * 40, 8.5 * 40)
    tiles = g.tiles_in_box(300, 300, 700, 700)  # level-0 box, tiles span 320 px
    assert set(tiles) == {(i, j) for i in (0, 1, 2) for j in (0, 1, 2)} and tiles[0] == (1, 1)


def test_visible_box_from_camera():
    y0, x0, y1, x1 = visible_box((0, 500.0, 1000.0), zoom=2.0, canvas_hw=(400, 800), world_mpp=0.5)
    assert (y0, x0, y1, x1) == (800.0, 1600.0, 1200.0, 2400.0)  # ±100 µm, ±200 µm around (500, 1000) µm


def test_tile_cache_is_lru_bounded_in_bytes():
    c = TileCache(max_bytes=3 * 400)
    for k in range(3):
        c.put(k, np.zeros(100, np.float32))
    assert c.get(0) is not None  # 0 is now most recent
    c.put(3, np.zeros(100, np.float32))
    assert c.get(1) is None and c.get(0) is not None and len(c) == 3 and c.nbytes == 1200


def test_latest_request_wins():
    lr = LatestRequest()
    a = lr.new()
    assert not a()
    b = lr.new()
    assert a() and not b()


@pytest.fixture(scope="module")
def model(trained):
    from napari_histoexpr.models.expression import ExpressionModel

    return ExpressionModel.load(trained, "cpu")


def test_live_view_state_without_a_viewer(model, cohort):
    """The live view's state object, driven as a panel drives it, with no viewer: events, latest wins,
    cached tiles at once, superseded requests' tiles kept but not reported, a new model drops the grid."""
    from napari_histoexpr.infer.live_view import LiveView
    from napari_histoexpr.infer.region import predictor_with_raster
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(cohort["demos"][3].slide)
    view, seen = LiveView(), {"model": [], "pred": [], "tiles": [], "status": []}
    view.model_changed.connect(lambda m: seen["model"].append(m))
    view.predictor_changed.connect(lambda p, r: seen["pred"].append((p, r)))
    view.tile_ready.connect(lambda t, v: seen["tiles"].append(t))
    view.status.connect(seen["status"].append)
    view.set_model(model)
    assert seen["model"] == [model] and view.predictor is None
    pred, raster = predictor_with_raster(model, pyr, 25.0, tile_cells=4)
    assert view.fits(pred, "dense", "auto", None) and view.fits(pred, "dense", "auto", 25.0)
    assert not view.fits(pred, "patch", "auto", None) and not view.fits(pred, "dense", "auto", 40.0)
    view.set_predictor(pred, raster)
    assert seen["pred"] == [(pred, raster)] and raster.names == model.genes
    box = (0, 0, 1024, 1024)
    req = view.request(box)
    assert req.tiles and req.todo == req.tiles and req.cached == 0 and view.pending() == len(req.tiles)
    assert seen["status"][-1] == f"predicting {len(req.tiles)} of {len(req.tiles)} tiles in view…"
    assert view.request(box, in_flight=True) is None  # the same view while it is being predicted
    first = None
    for tile, values in pred.run(req.todo, req.cancelled):
        first = first or tile
        assert view.accept(req, tile, values)
    assert sorted(seen["tiles"]) == sorted(req.todo) and view.pending() == 0  # in the order they complete
    np.testing.assert_array_equal(raster.plane("ERBB2")[raster.grid.tile_slices(*first)], pred.cache.get(first)[0])
    view.finished(req)
    assert seen["status"][-1].startswith(f"view predicted ({len(req.todo)} new tiles")
    assert view.request(box) is None  # shown and all cached: nothing to do
    # a new view supersedes the old request: the old one's tiles are still accepted, it reports nothing
    other = view.request((1024, 1024, 2048, 2048))
    assert req.cancelled() and not other.cancelled()
    n = len(seen["status"])
    view.finished(req)
    assert len(seen["status"]) == n
    # back to the first view: every tile from the cache, put into the raster at once
    raster.data[:] = np.nan
    again = view.request(box)
    assert again.todo == [] and again.cached == len(req.tiles) and other.cancelled()
    assert seen["status"][-1] == f"{len(req.tiles)} tiles in view (all cached)"
    assert np.isfinite(raster.plane("ERBB2")[raster.grid.tile_slices(*first)]).any()
    view.stopped()
    assert seen["status"][-1] == f"stopped: 0 of {len(req.tiles)} tiles in view not predicted"
    # another model: the grid is dropped and a late tile of the old predictor is refused
    view.set_model(None)
    assert view.predictor is None and seen["model"][-1] is None and not view.accept(other, first, values)
    pyr.close()


def _truth_class(demo, xy):
    cm_path = next(demo.truth.glob("class_map_ds*.npy"))
    ds = float(cm_path.stem.split("_ds")[1])
    cm = np.load(cm_path)
    r = np.clip((xy[:, 1] / ds).astype(int), 0, cm.shape[0] - 1)
    c = np.clip((xy[:, 0] / ds).astype(int), 0, cm.shape[1] - 1)
    return cm[r, c]


def test_region_predictions_follow_planted_regions(model, cohort):
    from napari_histoexpr.io.slides import open_slide

    demo = cohort["demos"][3]  # unseen section
    pyr = open_slide(demo.slide)
    rp = RegionPredictor(model, pyr, stride_um=25.0)
    box = (0, 0, 1024, 1024)
    tiles = rp.view_tiles(box)
    ras = Raster(rp.grid, model.genes)
    n = 0
    for t, v in rp.run(tiles):
        ras.put(t, v)
        n += 1
    assert n == len(tiles) > 0
    rows, cols = np.nonzero(np.isfinite(ras.plane("ERBB2")))
    xy = np.stack([(cols + 0.5) * rp.grid.stride, (rows + 0.5) * rp.grid.stride], 1)
    cls = _truth_class(demo, xy)
    erbb2, col = ras.plane("ERBB2")[rows, cols], ras.plane("COL1A1")[rows, cols]
    assert erbb2[cls == 1].mean() > erbb2[cls == 2].mean() + 1.0  # tumour vs stroma, log1p units
    assert col[cls == 2].mean() > col[cls == 1].mean() + 1.0
    assert np.corrcoef(erbb2, cls == 1)[0, 1] > 0.6
    # background cells are not predicted
    assert (cls[np.isfinite(erbb2)] == 0).mean() < 0.1
    # a second run is served from the cache
    hits = rp.cache.hits
    list(rp.run(tiles))
    assert rp.cache.hits == hits + len(tiles)
    # cancellation stops between tiles: cancelled once the first tile has arrived, nothing more comes
    for mode in ("dense", "patch"):
        rp = RegionPredictor(model, pyr, stride_um=25.0, mode=mode)
        got: list = []
        for t, _ in rp.run(rp.view_tiles((1024, 1024, 2048, 2048)), lambda: bool(got)):
            got.append(t)
        assert len(got) == 1 and len(rp.view_tiles((1024, 1024, 2048, 2048))) > 1


def test_tile_tissue_is_the_mask_mean_under_each_tile(model, cohort):
    """The vectorised tissue fraction of tiles (a zoomed-out view has thousands) equals the mean of
    the mask under each tile, cut one by one, for tiles finer and coarser than the mask."""
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(cohort["demos"][3].slide)
    for stride_um, tile_cells in ((10.0, 1), (25.0, 2), (25.0, 7), (60.0, 16)):
        rp = RegionPredictor(model, pyr, stride_um=stride_um, tile_cells=tile_cells, mode="patch")
        g, f = rp.grid, rp.grid.stride / rp.mask_ds
        want = np.zeros((g.tile_rows, g.tile_cols))
        for i in range(g.tile_rows):
            for j in range(g.tile_cols):
                rs, cs = g.tile_slices(i, j)
                m = rp.mask[int(rs.start * f):max(int(rs.start * f) + 1, int(np.ceil(rs.stop * f))),
                            int(cs.start * f):max(int(cs.start * f) + 1, int(np.ceil(cs.stop * f)))]
                want[i, j] = m.mean() if m.size else 0.0
        got = rp.tiles_tissue(np.arange(g.tile_rows), np.arange(g.tile_cols))
        assert 0 < (want > 0).mean() < 1 and np.allclose(got, want), (stride_um, tile_cells)
        assert rp.tile_tissue(g.tile_rows - 1, 0) == pytest.approx(want[-1, 0])


def test_whole_slide_prediction_resume_and_reader(model, cohort, trained, tmp_path):
    import anndata as ad

    from napari_histoexpr._reader import get_reader
    from napari_histoexpr.infer.slide import predict_slide_steps

    slide = cohort["demos"][3].slide
    events = []
    drain(predict_slide_steps(model, slide, tmp_path / "full", stride_um=50.0, tile_cells=8), events.append)
    full = np.asarray(__import__("zarr").open_group(str(tmp_path / "full" / "prediction.zarr"))["0"])
    # interrupted after 3 tiles, then resumed: only the rest is computed, the result is identical
    gen = predict_slide_steps(model, slide, tmp_path / "part", stride_um=50.0, tile_cells=8)
    k = 0
    for ev in gen:
        k += ev.get("stage") == "tile"
        if k == 3:
            gen.close()
            break
    ev2 = []
    drain(predict_slide_steps(model, slide, tmp_path / "part", stride_um=50.0, tile_cells=8), ev2.append)
    plan = ev2[0]
    total = events[0]["total"]
    assert plan["total"] == total - 3
    part = np.asarray(__import__("zarr").open_group(str(tmp_path / "part" / "prediction.zarr"))["0"])
    assert np.allclose(full, part, equal_nan=True)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    table = ad.read_h5ad(tmp_path / "full" / "prediction.h5ad")
    assert table.n_obs == summary["cells"] and list(table.var_names) == model.genes
    assert table.obsm["spatial"].shape == (table.n_obs, 2)
    reader = get_reader(str(tmp_path / "full"))
    layers = reader(str(tmp_path / "full"))
    data, kw, kind = layers[0]
    assert kind == "image" and kw["name"] == "predicted: ERBB2"
    assert kw["scale"][0] == pytest.approx(50.0)  # 50 µm cells, 1 µm/px slide
    assert kw["translate"][0] == pytest.approx(24.5)
    # another grid (or model, slide, mode) into the same folder is refused, not mixed; in dense mode
    # 25 µm snaps to the same 50 µm grid (two 32 px feature cells), so 100 µm is the different one
    from napari_histoexpr.errors import HistoExprError

    with pytest.raises(HistoExprError, match="another model"):
        drain(predict_slide_steps(model, slide, tmp_path / "full", stride_um=100.0, tile_cells=8))


def test_cli_predict_many_slides_on_local_cluster(trained, cohort, tmp_path):
    from napari_histoexpr.cli import main as cli

    slides = [str(cohort["demos"][i].slide) for i in (2, 3)]
    rc = cli(["predict", "--model", str(trained), "--slide", slides[0], "--slide", slides[1],
              "--out", str(tmp_path / "many"), "--stride-um", "100", "--device", "cpu"])
    assert rc == 0
    res = json.loads((tmp_path / "many" / "predict.json").read_text())
    assert set(res) == set(slides)
    for s in slides:
        assert res[s]["cells"] > 100
    # with spots: Pearson at the measured spots
    d = cohort["demos"][2]
    assert cli(["predict", "--model", str(trained), "--slide", str(d.slide), "--spots", str(d.spots),
                "--out", str(tmp_path / "one"), "--stride-um", "100", "--device", "cpu"]) == 0
    rep = json.loads((tmp_path / "one" / "spots_report.json").read_text())
    assert rep["pearson"]["ERBB2"] > 0.8


# ---------------------------------------------------------------------------------------------------
# the panel in a real viewer
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def panel_on_section(make_napari_viewer, qtbot, cohort, trained):
    from conftest import expression_panel_on

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1000, 800)
    d = cohort["demos"][3]
    panel = expression_panel_on(viewer, qtbot, d, device="cpu", stride_um=25.0)
    panel.load_model(trained, genes=["ERBB2", "COL1A1"])
    _wait_idle(qtbot, panel)  # following the view: the model predicted it as soon as it was loaded
    assert panel.predictor is not None and view_predicted(panel)
    return viewer, panel, d


def view_predicted(panel) -> bool:
    return all(panel.predictor.cache.get(t) is not None for t in panel.last_request_tiles)


def _wait_idle(qtbot, panel, timeout=60_000):
    qtbot.waitUntil(lambda: not panel.busy, timeout=timeout)


def test_panel_follows_the_camera(panel_on_section, qtbot):
    viewer, panel, demo = panel_on_section
    cam = viewer.scene.camera
    cam.center = (0, 600.0, 600.0)
    cam.zoom = 1.0
    _wait_idle(qtbot, panel)  # follow view: the camera change itself triggered the prediction
    layer = panel.gene_layer("ERBB2")
    assert layer is not None and layer.units[0] == "micrometer"
    geo = grid_layer_geometry(panel.predictor.grid, 1.0)
    assert tuple(layer.scale) == pytest.approx(geo["scale"])
    assert tuple(layer.translate) == pytest.approx(geo["translate"])

    def covered():
        y0, x0, y1, x1 = panel.view_box()
        g = panel.predictor.grid
        vals = layer.data[int(max(0, y0) / g.stride):int(min(2048, y1) / g.stride),
                          int(max(0, x0) / g.stride):int(min(2048, x1) / g.stride)]
        rows, cols = np.nonzero(np.ones_like(vals, bool))
        return vals, rows, cols

    vals, _, _ = covered()
    y0, x0, _, _ = panel.view_box()
    g = panel.predictor.grid
    r0, c0 = int(max(0, y0) / g.stride), int(max(0, x0) / g.stride)
    rr, cc = np.nonzero(np.isfinite(vals))
    xy = np.stack([(cc + c0 + 0.5) * g.stride, (rr + r0 + 0.5) * g.stride], 1)
    cls = _truth_class(demo, xy)
    assert np.isfinite(vals).mean() > 0.3 and (cls > 0).mean() > 0.9, (panel.status, panel.view_box())
    # every tissue cell in view is predicted
    all_rr, all_cc = np.nonzero(np.ones_like(vals, bool))
    all_xy = np.stack([(all_cc + c0 + 0.5) * g.stride, (all_rr + r0 + 0.5) * g.stride], 1)
    tissue = panel.predictor.cell_tissue(all_xy) >= panel.predictor.min_tissue
    assert np.isfinite(vals.ravel()[tissue]).mean() > 0.98
    # pan: the new view gets predicted too
    n_before = len(panel.predictor.cache)
    cam.center = (0, 1500.0, 1500.0)
    _wait_idle(qtbot, panel)
    assert len(panel.predictor.cache) > n_before
    vals, _, _ = covered()
    assert np.isfinite(vals).any()
    # precision: int8 by default on an x86 CPU without native bf16 (else auto); switching it rebuilds
    # the predictor, which then runs the other one
    from napari_histoexpr.infer.region import int8_runs
    from napari_histoexpr.models.catalog import view_precision_default

    assert panel.setting("precision") == view_precision_default() == panel.predictor.requested_precision
    ran = panel.predictor.precision
    assert ran == ("int8" if panel.setting("precision") == "int8" and int8_runs(panel.model) else "auto")
    before = panel.predictor
    panel.configure(precision="auto" if ran == "int8" else "int8")
    panel.predict_view()
    _wait_idle(qtbot, panel)
    assert panel.predictor is not before and panel.predictor.requested_precision == panel.setting("precision")
    assert panel.predictor.precision == ("int8" if panel.setting("precision") == "int8" and int8_runs(panel.model)
                                         else "auto")
    assert view_predicted(panel) and np.isfinite(covered()[0]).any()


def test_a_jump_is_predicted_at_once_and_once_and_a_drag_where_it_settles(panel_on_section, qtbot, monkeypatch):
    """One camera event after a pause (a jump, a key press) starts its view request at once (in
    the event loop's next turn), not after the 150 ms debounce, and the debounce's end does not start it again; a drag
    (events closer than the debounce) is predicted where it settles."""
    from qtpy.QtWidgets import QApplication

    from napari_histoexpr.widgets import expression_view

    viewer, panel, _ = panel_on_section
    cam = viewer.scene.camera
    cam.zoom, cam.center = 1.0, (0, 600.0, 600.0)
    _wait_idle(qtbot, panel)
    started, real = [], expression_view.start_worker

    def counting(fn, *a, **kw):  # the real start_worker, counting the view requests that start one
        if getattr(fn, "__name__", "") == "run":
            started.append(list(a[0]))
        return real(fn, *a, **kw)

    monkeypatch.setattr(expression_view, "start_worker", counting)
    panel.predictor.cache.clear()
    cam.center = (0, 1400.0, 1400.0)
    QApplication.processEvents()  # one turn of the event loop, long before the 150 ms debounce ends
    assert len(started) == 1
    in_view = panel.predictor.view_tiles(panel.view_box())
    assert panel.last_request_tiles == in_view and panel.actions()["Stop"]
    _wait_idle(qtbot, panel)  # the debounce ended on the same view: the running request was kept
    assert len(started) == 1 and all(panel.predictor.cache.get(t) is not None for t in in_view)
    for k in range(1, 7):  # a drag: a camera event every 20 ms
        cam.center = (0, 1400.0 + 60 * k, 1400.0)
        qtbot.wait(20)
    _wait_idle(qtbot, panel)
    final = panel.predictor.view_tiles(panel.view_box())
    assert panel.last_request_tiles == final and all(panel.predictor.cache.get(t) is not None for t in final)
    assert len(started) <= 3  # at most the drag's first move, and where it settled (not one per event)


def test_stale_view_request_is_cancelled(panel_on_section, qtbot):
    viewer, panel, _ = panel_on_section
    panel.configure(follow=False, stride_um=10.0)  # many small tiles: a slow request
    cam = viewer.scene.camera
    cam.zoom = 0.35
    cam.center = (0, 1024.0, 1024.0)
    panel.build_predictor()  # the tissue mask is found in a worker first
    qtbot.waitUntil(lambda: panel.predictor.requested_stride_um == pytest.approx(10.0), timeout=60_000)
    finished = []
    first = panel.predict_view()
    first.finished.connect(lambda: finished.append("a"))
    tiles_a = list(panel.last_request_tiles)
    cam.zoom = 3.0
    cam.center = (0, 300.0, 300.0)
    second = panel.predict_view()
    tiles_b = list(panel.last_request_tiles)
    assert len(tiles_a) > 20
    busy_at_end = []  # right after the panel's own end-of-view handler
    if second is not None:
        second.finished.connect(lambda: (finished.append("b"), busy_at_end.append(panel.busy)))
    qtbot.waitUntil(lambda: len(finished) == (2 if second is not None else 1), timeout=60_000)
    cache = panel.predictor.cache
    assert all(cache.get(t) is not None for t in tiles_b)  # the latest view is complete
    assert busy_at_end in ([], [False])  # and drawn when its worker finishes: no repaint left pending
    assert len(cache) < len(set(tiles_a) | set(tiles_b))  # the stale one stopped early
    _wait_idle(qtbot, panel)


def test_stop_keeps_predicted_tiles_and_predicting_again_completes(panel_on_section, qtbot):
    viewer, panel, _ = panel_on_section
    panel.configure(follow=False, stride_um=10.0)  # many small tiles: a slow request
    cam = viewer.scene.camera
    cam.zoom = 3.0
    cam.center = (0, 300.0, 300.0)
    panel.build_predictor()  # then predicts this small view
    qtbot.waitUntil(lambda: panel.predictor.requested_stride_um == pytest.approx(10.0), timeout=60_000)
    _wait_idle(qtbot, panel)
    assert not panel.actions()["Stop"]
    cam.zoom = 0.35
    cam.center = (0, 1024.0, 1024.0)
    worker = panel.predict_view()
    assert worker is not None and panel.actions()["Stop"]
    tiles = list(panel.last_request_tiles)
    qtbot.waitUntil(lambda: any(panel.predictor.cache.get(t) is not None for t in tiles), timeout=60_000)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        panel.stop()
    cache = panel.predictor.cache
    done = [t for t in tiles if cache.get(t) is not None]
    assert 1 <= len(done) < len(tiles), (len(done), len(tiles))
    assert panel.status.startswith("stopped:") and not panel.actions()["Stop"] and not panel.busy
    layer = panel.gene_layer("ERBB2")
    assert np.isfinite(layer.data).any()  # what was predicted stays on screen
    panel.predict_view()  # a new request picks up where the stopped one left off: what was done is reused
    _wait_idle(qtbot, panel)
    again = panel.last_request_tiles  # (the dock's new status text may have resized the canvas a little)
    assert len(set(again) & set(done)) >= 1 and all(cache.get(t) is not None for t in again)
    assert panel.status.startswith(f"view predicted ({len(set(again) - set(done))} new tiles"), panel.status


def test_a_view_all_in_cache_supersedes_a_running_request_quietly(panel_on_section, qtbot):
    """Moving from a view being predicted to one whose tiles are all cached: the old request stops,
    Stop is disabled at once, and the old worker's end does not report itself as this view's."""
    viewer, panel, _ = panel_on_section
    panel.configure(follow=False, stride_um=10.0)  # many small tiles: a slow request
    cam = viewer.scene.camera
    cam.zoom, cam.center = 3.0, (0, 300.0, 300.0)
    panel.build_predictor()  # then predicts this small view
    qtbot.waitUntil(lambda: panel.predictor.requested_stride_um == pytest.approx(10.0), timeout=60_000)
    _wait_idle(qtbot, panel)
    small = list(panel.last_request_tiles)
    cam.zoom, cam.center = 0.35, (0, 1024.0, 1024.0)
    worker = panel.predict_view()
    assert worker is not None and panel.actions()["Stop"]
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        cam.zoom, cam.center = 3.0, (0, 300.0, 300.0)
        assert panel.predict_view() is None  # all cached: nothing to start
        assert panel.last_request_tiles == small and not panel.actions()["Stop"]
        assert panel.status == f"{len(small)} tiles in view (all cached)"
    _wait_idle(qtbot, panel)
    assert panel.status == f"{len(small)} tiles in view (all cached)" and not panel.actions()["Stop"]
    cam.center = (0, -3000.0, -3000.0)  # off the slide: nothing to predict, and said so
    assert panel.predict_view() is None and panel.last_request_tiles == [] and panel.status == "no tissue in view"


def test_load_button_swaps_models_in_a_worker_while_predicting(panel_on_section, qtbot, trained, tmp_path):
    """The Load button loads in a worker (the viewer stays responsive); a swap in the middle of a
    view prediction leaves no stale tile of the old model on the new layers; a corrupt model
    folder is a notification and the loaded model keeps working."""
    import shutil

    from napari.utils.notifications import notification_manager

    viewer, panel, _ = panel_on_section
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        panel.configure(stride_um=10.0)  # a slow view: still predicting when the new model arrives
        cam = viewer.scene.camera
        cam.zoom, cam.center = 0.35, (0, 1024.0, 1024.0)
        qtbot.waitUntil(lambda: panel.actions()["Stop"], timeout=60_000)
        panel.configure(stride_um=25.0, model=str(trained))
        old = panel.model
        panel.load_model(background=True)
        assert panel.status.startswith("loading")
        # (not the worker's finished signal: a fast worker can emit it before a wait connects)
        qtbot.waitUntil(lambda: panel.model is not old, timeout=60_000)
        _wait_idle(qtbot, panel)  # the new model predicts the view without a camera move
        assert panel.predictor.model is panel.model and view_predicted(panel)
        assert panel.predictor.requested_stride_um == pytest.approx(25.0)
        cam.center = (0, 1000.0, 1000.0)
        _wait_idle(qtbot, panel)
        grid = panel.predictor.grid
        layer = panel.gene_layer("ERBB2")
        assert layer.data.shape == (grid.rows, grid.cols)
        assert tuple(layer.scale) == pytest.approx(grid_layer_geometry(grid, 1.0)["scale"])
        assert len([ly for ly in viewer.layers if ly.name.startswith("predicted: ERBB2")]) == 1
        bad = tmp_path / "bad"
        shutil.copytree(trained, bad)
        (bad / "model.safetensors").write_bytes(b"not a model")
        panel.load_model(str(bad), background=True)
        qtbot.waitUntil(lambda: any("corrupt" in str(n.message) or "bad" in str(n.message) for n in seen),
                        timeout=60_000)
        assert panel.status.startswith("error") and panel.model is not None
        cam.center = (0, 1400.0, 1400.0)
        _wait_idle(qtbot, panel)  # the model loaded before keeps following the view
        assert view_predicted(panel)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_uncertainty_layers_follow_the_view_and_the_slide_is_scored(panel_on_section, qtbot):
    viewer, panel, demo = panel_on_section
    qtbot.waitUntil(lambda: panel.ood is not None, timeout=60_000)  # scored once the predictor was built
    assert not panel.ood["outside"] and "like the training sections" in panel._ood_label.value
    panel.configure(uncertainty=True)
    _wait_idle(qtbot, panel)
    pred, unc = panel.gene_layer("ERBB2"), panel.gene_layer("ERBB2 uncertainty")
    assert unc is not None and unc.name == "predicted: ERBB2 uncertainty" and unc.data.shape == pred.data.shape
    fin = np.isfinite(pred.data)
    assert fin.sum() > 20 and np.array_equal(fin, np.isfinite(unc.data)) and np.all(unc.data[fin] > 0)
    # the layer holds the model's uncertainty at those cells (read from each cell's own region here: the
    # live view's regions give each cell other context at their borders, so values agree to a few %)
    g = panel.predictor.grid
    rr, cc = np.nonzero(fin)
    pick = np.random.default_rng(0).choice(len(rr), min(40, len(rr)), replace=False)
    xy = np.stack([(cc[pick] + 0.5) * g.stride, (rr[pick] + 0.5) * g.stride], 1)
    n = len(panel.model.genes)
    ref = panel.model.predict_centres_dense(panel.predictor.pyr, xy)[:, n + panel.model.genes.index("ERBB2")]
    got = unc.data[rr[pick], cc[pick]]
    assert np.median(np.abs(got - ref) / ref) < 0.1
    # switched off while a new view is being predicted: that view's worker keeps its own outputs and
    # stops; the view is predicted again without the uncertainty
    viewer.scene.camera.center = (0, 1300.0, 1300.0)
    qtbot.waitUntil(lambda: panel._worker is not None, timeout=10_000)
    panel.configure(uncertainty=False)
    _wait_idle(qtbot, panel)
    assert panel.predictor.channels == panel.model.genes and view_predicted(panel)
    assert not panel.status.startswith("error") and panel.ood is not None  # the slide is not scored again


def test_an_unrelated_slide_raises_a_warning(make_napari_viewer, qtbot, trained, shared_data):
    from napari.utils.notifications import notification_manager

    from napari_histoexpr.widgets.expression_view import ExpressionPanel
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    viewer = make_napari_viewer(show=True)
    spots = SlideSpotsWidget(viewer)
    w = spots.open(slide=str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    with qtbot.waitSignal(w.finished, timeout=60_000):
        pass
    panel = ExpressionPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.configure(device="cpu")
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        panel.load_model(trained, genes=["ERBB2"])
        qtbot.waitUntil(lambda: panel.ood is not None, timeout=120_000)
        assert panel.ood["outside"] and "out of distribution" in panel._ood_label.value
        qtbot.waitUntil(lambda: any("out of distribution" in str(n.message) for n in seen), timeout=10_000)
        _wait_idle(qtbot, panel)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_compare_with_measured_spots(panel_on_section, qtbot, tmp_path):
    viewer, panel, _ = panel_on_section
    w = panel.compare_spots()
    with qtbot.waitSignal(w.finished, timeout=60_000):
        pass
    resid = panel.residual_layer("ERBB2")
    assert resid is not None and {"ERBB2 measured", "ERBB2 predicted", "COL1A1 predicted"} <= set(resid.features)
    assert resid.face_colorbar.visible
    rows = {g: (rv, ra, n) for g, rv, ra, n in panel.table_rows()}
    assert rows["ERBB2"][1] > 0.8 and rows["COL1A1"][1] > 0.8
    assert panel.table.rowCount() == 2 and panel.table.item(0, 0).text() == "ERBB2"

    picked = panel.pick(resid, tuple(resid.data[0]))  # what a click on the first spot shows
    assert "ERBB2 measured" in picked and "ERBB2 predicted" in panel.picked

    # for QuPath: the comparison's spots (every gene, measured and predicted) and the view's grid cells
    from conftest import assert_qupath_objects
    from napari_histoexpr.io.qupath import read_geojson
    from napari_histoexpr.widgets.qupath_panel import QuPathPanel

    qp = QuPathPanel(viewer)
    sp = panel.spot_pred
    objs, _ = read_geojson(qp.export("spots: measured + predicted", tmp_path / "spots.geojson"))
    assert_qupath_objects(tmp_path / "spots.geojson", "detection")
    assert [o.name for o in objs] == list(sp.spot_ids)
    for k, g in enumerate(sp.genes):
        assert np.allclose([o.measurements[f"predicted: {g}"] for o in objs], sp.pred[:, k], atol=1e-6)
        assert np.allclose([o.measurements[f"measured: {g}"] for o in objs], sp.meas[:, k], atol=1e-6)
    objs, _ = read_geojson(qp.export("predicted view: grid cells", tmp_path / "grid"))  # .geojson added
    plane, stride = panel.raster.plane("ERBB2"), panel.predictor.grid.stride
    assert len(objs) == np.isfinite(plane).sum() > 0
    for o in objs[:: max(1, len(objs) // 50)]:
        r, c = (int(v[1:]) for v in o.name.split("_"))
        assert o.geometry.centroid.x == pytest.approx((c + 0.5) * stride)
        assert o.geometry.centroid.y == pytest.approx((r + 0.5) * stride)
        assert o.measurements["predicted: ERBB2"] == pytest.approx(plane[r, c], abs=1e-6)


def test_gene_set_score_layer_follows_the_view_and_compares_with_the_spots(panel_on_section, qtbot):
    """A typed set: its score layer is the set mean minus the controls' mean of the predicted maps; with
    the spots compared, the table has its r of predicted vs measured scores."""
    viewer, panel, _ = panel_on_section
    assert panel.add_gene_set("epithelium=ERBB2,krt8,EPCAM,CDH1") == ["epithelium"]
    assert panel.setting("gene_set") == "epithelium" and "4 genes" in panel.status
    _wait_idle(qtbot, panel)
    layer, s = panel.score_layer(), panel.score_set
    assert s.genes == ["ERBB2", "KRT8", "EPCAM", "CDH1"] and s.controls
    names = list(panel.model.outputs)
    raster = panel.raster.data
    with warnings.catch_warnings():  # cells never predicted: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        want = (np.nanmean(raster[[names.index(g) for g in s.genes]], 0)
                - np.nanmean(raster[[names.index(g) for g in s.controls]], 0))
    fin = np.isfinite(layer.data)
    assert fin.sum() > 20 and (fin == np.isfinite(want)).all()
    np.testing.assert_allclose(layer.data[fin], want[fin], atol=1e-5)
    assert layer.contrast_limits[0] == pytest.approx(-layer.contrast_limits[1])  # diverging around 0
    w = panel.compare_spots()
    with qtbot.waitSignal(w.finished, timeout=60_000):
        pass
    rows = {r[0]: r for r in panel.table_rows()}
    assert rows["score: epithelium"][2] > 0.5 and panel.table.rowCount() == 3
    # the measured spots' score, with the same controls: what the table compares against
    measured = panel.measured_score_layer()
    f = measured.features.set_index("spot")
    sp = panel.spot_pred
    meas = (sp.meas[:, [sp.genes.index(g) for g in s.genes]].mean(1)
            - sp.meas[:, [sp.genes.index(g) for g in s.controls]].mean(1))
    np.testing.assert_allclose(f.loc[list(sp.spot_ids), "value"], meas, atol=1e-5)
    assert measured.face_contrast_limits[0] == pytest.approx(-measured.face_contrast_limits[1])
    # a built-in set the model predicts none of: a named error, no layer
    panel.configure(gene_set="proliferation")
    assert panel.setting("gene_set") == "none" and panel.score_layer() is None and panel.measured_score_layer() is None
    assert "none of its genes" in panel.status and panel.table.rowCount() == 2


def test_side_by_side_shows_measured_and_predicted_with_their_own_colour_bars(panel_on_section, qtbot, tmp_path):
    """One click: measured spots left, the predicted map right, over the slide in two linked views (one
    camera), each with its colour bar and its name; the user's other layers come back afterwards."""
    from napari_histoexpr.widgets.layers import find_layer

    viewer, panel, _ = panel_on_section
    extra = viewer.add_points([[10.0, 10.0]], name="user points")
    panel.configure(display_gene="ERBB2", side_by_side=True)
    grid = viewer.canvas.grid
    assert grid.enabled and tuple(grid.shape) == (1, 2)
    spots, pred = panel.session.spots_layer, panel.gene_layer("ERBB2")
    copy = find_layer(viewer, "slide:side")
    layers = list(viewer.layers)

    def pos(ly):
        return grid.position(layers.index(ly), layers)

    assert pos(panel.session.slide_layer) == pos(spots) == (0, 0) and pos(copy) == pos(pred) == (0, 1)
    assert copy.data[0] is panel.session.slide_layer.data[0]  # the same pyramid, not a second read
    assert spots.metadata["histoexpr"]["gene"] == "ERBB2" and not extra.visible
    assert spots.face_colorbar.visible and pred.colorbar.visible
    assert spots.name_overlay.visible and pred.name_overlay.visible
    shot = viewer.screenshot(canvas_only=True, flash=False)
    half = shot.shape[1] // 2
    assert shot[:, :half, :3].std() > 5 and shot[:, half:, :3].std() > 5  # both views drawn
    panel.configure(side_by_side=False)
    assert not grid.enabled and extra.visible and find_layer(viewer, "slide:side") is None
    assert not pred.name_overlay.visible


def test_a_model_on_the_same_grid_gets_its_own_layers(panel_on_section, qtbot, trained):
    """A second model whose grid is the old one's (a retrained model, the same file again, another
    mode) shows its own predictions: the gene layers take the new raster, not only a new shape."""
    viewer, panel, _ = panel_on_section
    old_grid = panel.predictor.grid
    old = panel.model
    panel.load_model(str(trained), genes=["ERBB2", "COL1A1"], background=True)
    qtbot.waitUntil(lambda: panel.model is not old, timeout=60_000)
    _wait_idle(qtbot, panel)
    grid = panel.predictor.grid
    assert (grid.rows, grid.cols, grid.stride) == (old_grid.rows, old_grid.cols, old_grid.stride)
    cam = viewer.scene.camera
    cam.zoom, cam.center = 2.0, (0, 1500.0, 400.0)  # a region the first model never predicted
    _wait_idle(qtbot, panel)
    for gene in ("ERBB2", "COL1A1"):
        layer = panel.gene_layer(gene)
        assert np.shares_memory(layer.data, panel.raster.data)
        assert layer.metadata["histoexpr"]["gene"] == gene
    y0, x0, y1, x1 = panel.view_box()
    rs, cs = slice(int(y0 / grid.stride), int(y1 / grid.stride)), slice(int(x0 / grid.stride), int(x1 / grid.stride))
    shown = panel.gene_layer("ERBB2").data[rs, cs]
    assert np.isfinite(shown).mean() > 0.3  # the new model's predictions are on screen
    np.testing.assert_array_equal(shown, panel.raster.plane("ERBB2")[rs, cs])
