"""Sub-spot (iStar-style) expression models: cells finer than the spots that trained them.

Generated sections carry small immune clusters (10-20 µm radius, finer than the 100 µm spots); the
planted expression is known at any resolution. A sub-spot model trained only on spots must map that
fine pattern better than a spot-level model trained on the same spots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_histoexpr.cli import main as cli

GENES = ["ERBB2", "KRT8", "COL1A1", "COL1A2", "PTPRC", "CD74"]
BLOBS = (60.0, 0.45, 10.0, 20.0)  # jittered grid pitch, probability, radius range (µm)
CELL_UM = 25.0


@pytest.fixture(scope="module")
def fine(tmp_path_factory):
    from napari_histoexpr.datasets import make_demo
    from napari_histoexpr.io.manifest import Section, write_manifest

    base = tmp_path_factory.mktemp("fine")
    demos = [make_demo(base / f"f{i}", size=1280, mpp=1.0, seed=41 + i, spot_um=100.0, pitch_um=100.0,
                       blobs=BLOBS) for i in range(3)]
    secs = [Section(section=f"f{i}", patient=f"p{i}", image=d.slide, spots=d.spots) for i, d in enumerate(demos)]
    common = ["--manifest", str(write_manifest(base / "train.csv", secs[:2])), "--gene-list", ",".join(GENES),
              "--aux-genes", "0", "--epochs", "12", "--lr", "1e-3", "--device", "cpu", "--no-baselines"]
    sub, spot = base / "sub", base / "spot"
    assert cli(["train", *common, "--out", str(sub), "--subspot-um", str(CELL_UM)]) == 0
    assert cli(["train", *common, "--out", str(spot), "--window-um", "100", "--px", "64"]) == 0
    return {"demos": demos, "sections": secs, "sub": sub, "spot": spot, "base": base,
            "test": write_manifest(base / "test.csv", secs[2:])}


def test_footprint_weights_and_pooled_groups():
    from napari_histoexpr.data.section_data import grid_spacing, pool_groups
    from napari_histoexpr.datasets import visium_grid
    from napari_histoexpr.models.expression import footprint_weights

    w = footprint_weights(7, 25.0, [(0.0, 0.0, 50.0)])
    assert w.sum() == pytest.approx(1.0) and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert w[0].sum() == 0 and w[3, 3] == w.max()  # the border cells are context only
    two = footprint_weights(9, 25.0, [(-50.0, 0.0, 50.0), (50.0, 0.0, 50.0)])
    assert two[4, 1] > 0 and two[4, 7] > 0 and two[1, 4] == 0  # the union of two disks side by side

    xy, _, _ = visium_grid(2000, 2000, 1.0)
    pitch, rows = grid_spacing(xy)
    assert pitch == pytest.approx(100.0, abs=0.5) and rows == pytest.approx(100 * np.sqrt(3) / 2, abs=0.5)
    groups = pool_groups(xy, 2)
    sizes = np.array([len(g) for g in groups])
    assert len(groups) > 50 and np.median(sizes) == 4 and sizes.min() >= 3
    assert len(np.unique(np.concatenate(groups))) == sizes.sum()  # every spot in at most one group
    for g in groups[:20]:  # neighbours: within about two pitches of each other
        assert np.ptp(xy[g], axis=0).max() < 2.01 * pitch


def test_subspot_model_recovers_a_pattern_finer_than_its_spots(fine):
    from napari_histoexpr.datasets import demo_tissue, planted_expression
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.metrics import pearson_columns
    from napari_histoexpr.models.expression import ExpressionModel

    sub, spot = ExpressionModel.load(fine["sub"], "cpu"), ExpressionModel.load(fine["spot"], "cpu")
    meta = json.loads((fine["sub"] / "model.json").read_text())
    assert meta["subspot"]["cell_um"] == CELL_UM and meta["subspot"]["spot_um"] == pytest.approx(100.0)
    assert meta["input_px"] == 7 * 32 and sub.default_step_um == CELL_UM  # 100 µm + a cell each side: 7 cells
    demo = fine["demos"][2]  # unseen
    truth = planted_expression(demo_tissue(demo), CELL_UM, GENES)  # (rows, cols, G) at 25 µm cells
    rows, cols = truth.shape[:2]
    pyr = open_slide(demo.slide)
    sub_map = sub.predict_cells(pyr, CELL_UM / 2, CELL_UM / 2, rows, cols, CELL_UM)
    step = spot.dense_step_um(50.0)
    assert step == pytest.approx(50.0)  # two 25 µm cells per spot-model cell
    spot_map = spot.predict_cells(pyr, 25.0, 25.0, rows // 2, cols // 2, 50.0)
    spot_map = spot_map.repeat(2, 0).repeat(2, 1)[:rows, :cols]
    spot_map = np.pad(spot_map, ((0, rows - spot_map.shape[0]), (0, cols - spot_map.shape[1]), (0, 0)), mode="edge")
    ok = np.isfinite(truth[..., 0])
    t, tf = truth[ok], finer_than_spots(truth)[ok]
    r = {k: pearson_columns(m[ok], t) for k, m in (("sub", sub_map), ("spot", spot_map))}
    fine_r = {k: pearson_columns(finer_than_spots(m)[ok], tf) for k, m in (("sub", sub_map), ("spot", spot_map))}
    report = {g: {k: (round(float(r[k][i]), 3), round(float(fine_r[k][i]), 3)) for k in r}
              for i, g in enumerate(GENES)}
    # the pattern finer than the spots: recovered by the sub-spot map, not by the spot-level one
    assert fine_r["sub"].mean() > fine_r["spot"].mean() + 0.15, report
    p = GENES.index("PTPRC")  # the marker of the small immune clusters
    assert fine_r["sub"][p] > fine_r["spot"][p] + 0.15, report
    # and the whole map is at least as good
    assert r["sub"].mean() > r["spot"].mean() - 0.01 and r["sub"].mean() > 0.75, report


def finer_than_spots(m: np.ndarray, spot_cells: int = 4) -> np.ndarray:
    """The part of a ``(rows, cols, G)`` map finer than a spot: the map minus its box mean over a
    spot's width (100 µm = 4 cells of 25 µm); off-tissue NaNs filled with the map's mean first."""
    from scipy.ndimage import uniform_filter

    f = np.where(np.isfinite(m), m, np.nanmean(m, axis=(0, 1)))
    return f - uniform_filter(f, size=(spot_cells, spot_cells, 1), mode="nearest")


def test_subspot_model_through_evaluate_and_predict(fine, tmp_path):
    """The CLI works with a sub-spot model unchanged: spot-level evaluation (its cells averaged over
    each measured spot) and a whole-slide map on the model's finer grid."""
    assert cli(["evaluate", "--model", str(fine["sub"]), "--manifest", str(fine["test"]), "--out",
                str(tmp_path / "ev"), "--device", "cpu", "--no-baselines"]) == 0
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    r = rep["sections"]["f2"]["pearson"] if "sections" in rep else rep["pearson"]
    assert np.mean([r[g] for g in GENES]) > 0.7, r
    demo = fine["demos"][2]
    assert cli(["predict", "--model", str(fine["sub"]), "--slide", str(demo.slide), "--out", str(tmp_path / "pr"),
                "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "pr" / "summary.json").read_text())
    import zarr

    attrs = dict(zarr.open_group(str(tmp_path / "pr" / "prediction.zarr"), mode="r").attrs)["histoexpr_prediction"]
    assert attrs["stride_px"] == pytest.approx(CELL_UM) and summary


def test_pooled_training_sees_pseudo_spots(fine, tmp_path):
    """``--pool 2``: about four neighbouring spots per training sample, their union as the footprint."""
    from napari_histoexpr.data.section_data import prepare_sections_steps
    from napari_histoexpr.io.manifest import Section
    from napari_histoexpr.steps import drain
    from napari_histoexpr.train.expression_trainer import subspot_geometry

    secs: list[Section] = fine["sections"][:1]
    single, _, _ = drain(prepare_sections_steps(secs, 100.0, 32))
    pooled, _, window = drain(prepare_sections_steps(secs, 100.0, 32, pool=2,
                                                     geometry=lambda fp: subspot_geometry(CELL_UM, fp)))
    s1, s2 = single[0], pooled[0]
    assert len(s2) < len(s1) / 3 and all(len(f) >= 3 for f in s2.footprints)
    assert window == pytest.approx(11 * CELL_UM)  # footprint 200 µm (+ 2 cells) -> 9.x -> 11 cells
    i = 0
    members = s2.spot_ids[i].split("+")
    idx = [s1.spot_ids.index(m) for m in members]
    want = np.log1p(np.expm1(s1.expr[idx]).mean(0))
    assert np.allclose(s2.expr[i], want, atol=1e-5)
    assert np.allclose(s2.xy[i], s1.xy[idx].mean(0))
