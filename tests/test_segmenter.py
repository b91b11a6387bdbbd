"""Transcriptome-supervised segmenter: classes, training, Dice on an unseen section, the panel with
drawn ground truth (hand-computed Dice) and annotation autosave across a simulated crash."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import assert_qupath_objects, open_section
from napari_histoexpr.cli import main as cli
from napari_histoexpr.segment.annotations import (
    from_geojson,
    load_regions,
    rasterise,
    save_regions,
    sidecar_path,
    to_geojson,
)
from napari_histoexpr.segment.maps import dice_scores
from napari_histoexpr.steps import drain

# planted class of each marker gene's "high" class
GENE_CLASS = {"ERBB2 high": 1, "COL1A1 high": 2, "PTPRC high": 3, "background": 0}


@pytest.fixture(scope="session")
def segmenter(cohort, trained, tmp_path_factory):
    """The default route: the trained expression model's backbone (frozen) + a class head."""
    out = tmp_path_factory.mktemp("seg") / "m"
    assert cli(["segment", "train", "--manifest", str(cohort["train"]), "--classes", "genes:ERBB2,COL1A1,PTPRC",
                "--out", str(out), "--encoder", str(trained), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="session")
def scratch_segmenter(cohort, tmp_path_factory):
    """Patch classifiers trained from scratch on the classes alone."""
    out = tmp_path_factory.mktemp("seg_scratch") / "m"
    assert cli(["segment", "train", "--manifest", str(cohort["train"]), "--classes", "genes:ERBB2,COL1A1,PTPRC",
                "--out", str(out), "--features", "scratch", "--windows-um", "50,100", "--px", "48", "--epochs", "6",
                "--device", "cpu"]) == 0
    return out


def test_classes_from_planted_genes(cohort):
    from napari_histoexpr.io.spots import read_spots
    from napari_histoexpr.segment.classes import (
        classes_from_clusters,
        classes_from_genes,
    )

    d = cohort["demos"][0]
    ad = read_spots(d.spots)
    lab = classes_from_genes(ad, ["ERBB2", "COL1A1", "PTPRC"], 0.5)
    truth = pd.read_csv(d.truth / "spots.csv", index_col=0).loc[ad.obs_names, "class"].to_numpy()
    mapped = np.array([GENE_CLASS.get(v, -1) for v in lab])
    assert (mapped == truth).mean() > 0.85
    km = classes_from_clusters(ad, "kmeans", 3)
    # clusters recover the planted classes up to naming: each cluster is dominated by one class
    purity = sum(pd.Series(truth[km == c]).value_counts().iloc[0] for c in km.unique()) / len(km)
    assert purity > 0.85
    ld = classes_from_clusters(ad, "leiden", resolution=0.3)
    assert 2 <= ld.nunique() <= 8


def test_dice_by_hand():
    pred = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    true = np.array([[1, 1, 1, 1], [-1, -1, 2, 2]])
    d = dice_scores(pred, true, ["bg", "a", "b", "c"], valid=true >= 0)
    # class a: P = 2 (row 0) , T = 4, overlap 2 -> 4/6 ; class b: P = 4, T = 2, overlap 2 -> 4/6
    assert d["per_class"] == {"a": pytest.approx(4 / 6), "b": pytest.approx(4 / 6)}
    assert d["mean_dice"] == pytest.approx(4 / 6) and d["predicted_only"] == []
    d = dice_scores(np.array([3, 1]), np.array([1, 1]), ["bg", "a", "b", "c"])
    assert d["per_class"] == {"a": pytest.approx(2 / 3)} and d["predicted_only"] == ["c"]


def test_geojson_round_trip_and_rasterise(tmp_path):
    sq = np.array([[10.0, 10.0], [50.0, 10.0], [50.0, 50.0], [10.0, 50.0]])
    regions = [(sq, "tumour"), (sq + 100, "stroma")]
    p = save_regions(tmp_path / "a.geojson", regions)
    back = load_regions(p)
    assert [r.cls for r in back] == ["tumour", "stroma"] and np.allclose(back[0].exterior, sq)
    assert from_geojson(to_geojson(back))[1].cls == "stroma"
    r = rasterise(back, ["bg", "tumour", "stroma"], 10.0, 20, 20)
    assert (r == 1).sum() == 16 and (r == 2).sum() == 16  # 4 x 4 cell centres inside each square
    assert sidecar_path(tmp_path / "x.svs").name == "x.svs.histoexpr.geojson"


def test_autosave_removes_parts_of_killed_writers_only(tmp_path):
    """A writer killed between its temporary file and the rename leaves a ``.part``; the next save
    removes it (its process is gone) but never one a live writer is still filling."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    path = tmp_path / "s.tif.histoexpr.geojson"
    stale = tmp_path / f".{path.name}.{int(dead.stdout)}.part"
    live = tmp_path / f".{path.name}.{os.getppid()}.part"
    stale.write_text("{half a file")
    live.write_text("{being written")
    save_regions(path, [(np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 5.0]]), "tumour")])
    assert not stale.exists() and live.exists()
    assert [r.cls for r in load_regions(path)] == ["tumour"]


@pytest.mark.parametrize("route", ["segmenter", "scratch_segmenter"])
def test_segmenter_dice_on_unseen_section(route, request, cohort, tmp_path):
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.models.segmenter import Segmenter
    from napari_histoexpr.segment.maps import label_map, segment_region

    segmenter = request.getfixturevalue(route)
    meta = json.loads((segmenter / "model.json").read_text())
    assert meta["classes"][0] == "background" and set(meta["classes"][1:]) == set(GENE_CLASS) - {"background"}
    assert meta["features"]["source"] == ("expression" if route == "segmenter" else "scratch")
    # CLI: spot-level Dice against the gene classes of the unseen sections
    assert cli(["segment", "evaluate", "--model", str(segmenter), "--manifest", str(cohort["unseen"]),
                "--out", str(tmp_path / "rep"), "--device", "cpu"]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["summary"]["mean_dice"] > 0.8, rep["summary"]
    assert (tmp_path / "rep" / "s3_segmentation.png").stat().st_size > 10_000
    from napari_histoexpr.models.quantize import int8_engine

    if route == "segmenter" and int8_engine() is not None:  # both patch sizes' bodies in int8
        assert cli(["segment", "evaluate", "--model", str(segmenter), "--manifest", str(cohort["unseen"]),
                    "--out", str(tmp_path / "rep8"), "--device", "cpu", "--precision", "int8"]) == 0
        rep8 = json.loads((tmp_path / "rep8" / "report.json").read_text())
        assert rep8["precision"] == "int8" and rep["precision"] == "auto"
        assert abs(rep8["summary"]["mean_dice"] - rep["summary"]["mean_dice"]) < 0.05, rep8["summary"]
    # dense map against the planted class map of the unseen section
    model = Segmenter.load(segmenter, "cpu")
    demo = cohort["demos"][3]
    rp, ras = drain(segment_region(model, open_slide(demo.slide), 25.0))
    lab = label_map(ras.data)
    mapped = np.vectorize(lambda i: GENE_CLASS[model.classes[i]])(lab)
    cm_path = next(demo.truth.glob("class_map_ds*.npy"))
    ds = float(cm_path.stem.split("_ds")[1])
    cm = np.load(cm_path)
    rr, cc = np.meshgrid(np.arange(lab.shape[0]), np.arange(lab.shape[1]), indexing="ij")
    ty = np.clip(((rr + 0.5) * rp.grid.stride / ds).astype(int), 0, cm.shape[0] - 1)
    tx = np.clip(((cc + 0.5) * rp.grid.stride / ds).astype(int), 0, cm.shape[1] - 1)
    truth = cm[ty, tx]
    d = dice_scores(mapped, truth, ["background", "tumour", "stroma", "immune"], skip=(0,))
    assert d["mean_dice"] > 0.8, d


def test_panel_segments_and_dice_from_drawn_regions(make_napari_viewer, qtbot, segmenter, cohort, tmp_path):
    from napari_histoexpr.widgets.segmenter_panel import SegmenterPanel

    viewer = make_napari_viewer()
    d = cohort["demos"][3]
    sp = open_section(viewer, qtbot, d)  # noqa: F841 (kept while the viewer is used)
    sidecar = sidecar_path(d.slide)
    sidecar.unlink(missing_ok=True)
    panel = SegmenterPanel(viewer)
    panel.configure(device="cpu", genes="ERBB2,COL1A1,PTPRC")
    classes_layer = panel.show_classes()
    assert set(classes_layer.features["class"].unique()) >= {"ERBB2 high", "COL1A1 high"}
    panel.load_model(segmenter)
    w = panel.segment(view=False)
    with qtbot.waitSignal(w.finished, timeout=120_000):
        pass
    seg = [ly for ly in viewer.layers if ly.name == "segmentation"][0]
    assert seg.data.max() >= 2 and seg.scale[0] == pytest.approx(panel.predictor.grid.stride * 1.0)
    # exported for QuPath (one annotation per class region, holes kept) and rasterised back: the map
    from napari_histoexpr.widgets.qupath_panel import QuPathPanel

    qp = QuPathPanel(viewer)
    out = qp.export("segmentation", tmp_path / "seg.geojson")
    assert_qupath_objects(out, "annotation")
    regions = load_regions(out)
    assert {r.cls for r in regions} <= set(panel.model.classes[1:]) and len(regions) >= 2
    g = panel.predictor.grid
    back = rasterise(regions, panel.model.classes, g.stride, g.rows, g.cols)
    want = np.where(seg.data > 0, seg.data, -1)
    assert np.mean(back == want) > 0.99, np.mean(back == want)
    # the other precision: a new predictor in it (int8 where it runs), nearly the same classes
    from napari_histoexpr.infer.region import int8_runs

    first, labels = panel.predictor, seg.data.copy()
    other = "auto" if first.requested_precision == "int8" else "int8"
    panel.configure(precision=other)
    w = panel.segment(view=False)
    with qtbot.waitSignal(w.finished, timeout=120_000):
        pass
    assert panel.predictor is not first and panel.predictor.requested_precision == other
    assert panel.predictor.precision == (other if other == "auto" or int8_runs(panel.model) else "auto")
    assert np.mean(seg.data[labels > 0] == labels[labels > 0]) > 0.9
    # a known prediction and a drawn square: Dice by hand
    g = panel.predictor.grid
    known = np.zeros((g.rows, g.cols), np.int32)
    cls = panel.model.classes
    a, b = cls.index("ERBB2 high"), cls.index("COL1A1 high")
    known[:, :10] = a
    known[:, 10:] = b
    panel.seg_labels[:] = known
    gt = panel.truth_layer(create=True)
    panel.configure(draw_class="ERBB2 high")
    s = g.stride
    # a square over cells rows 2..5, cols 8..11 (centres inside), in µm world (y, x)
    y0, y1, x0, x1 = 2 * s, 6 * s, 8 * s, 12 * s
    gt.add_polygons([np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) * 1.0])
    assert gt.features["class"].iloc[0] == "ERBB2 high"
    dice = panel.dice()
    # truth: 16 cells "ERBB2 high"; prediction there: 8 cells a (cols 8, 9) and 8 cells b
    assert dice["per_class"] == {"ERBB2 high": pytest.approx(2 * 8 / (8 + 16))}
    assert dice["predicted_only"] == ["COL1A1 high"]  # predicted in the square, never annotated
    assert dice["mean_dice"] == pytest.approx(2 * 8 / 24)
    assert panel.table.rowCount() == 2
    # autosaved: the sidecar already holds the square, with no explicit save or close
    saved = load_regions(sidecar)
    assert len(saved) == 1 and saved[0].cls == "ERBB2 high"
    assert np.allclose(saved[0].exterior.min(0), [x0, y0]) and np.allclose(saved[0].exterior.max(0), [x1, y1])
    # a QuPath region with a hole, imported: the hole's cells are not truth (the square stays)
    ring = [[x0 + 20 * s, y0], [x0 + 30 * s, y0], [x0 + 30 * s, y0 + 10 * s], [x0 + 20 * s, y0 + 10 * s]]
    hole = [[x0 + 23 * s, y0 + 3 * s], [x0 + 27 * s, y0 + 3 * s], [x0 + 27 * s, y0 + 7 * s], [x0 + 23 * s, y0 + 7 * s]]
    qfile = tmp_path / "qupath.geojson"
    qfile.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": "q1",
        "properties": {"objectType": "annotation", "classification": {"name": "COL1A1 high"}},
        "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1], hole + hole[:1]]}}]}))
    assert qp.import_geojson(qfile) == 1 and len(gt.data) == 3  # the square, the ring, its hole
    assert "1 holes" in qp.status
    dice = panel.dice()
    assert dice["cells"]["COL1A1 high"] == 100 - 16 and dice["cells"]["ERBB2 high"] == 16
    assert [r.cls for r in load_regions(sidecar)] == ["ERBB2 high", "COL1A1 high"]  # autosaved
    assert len(load_regions(sidecar)[1].parts[0]) == 2
    assert qp.import_geojson(qfile) == 0 and len(gt.data) == 3  # the same objects again: nothing new
    # exported again for QuPath: the drawn square and the imported region with its hole, as drawn
    drawn = qp.export("drawn regions", tmp_path / "drawn.geojson")
    assert_qupath_objects(drawn, "annotation")
    back = load_regions(drawn)
    assert [r.cls for r in back] == ["ERBB2 high", "COL1A1 high"] and back[1].id == "q1"
    want = load_regions(qfile)[0]
    assert back[1].geometry.equals_exact(want.geometry, 1e-6)


def test_annotations_survive_a_crash(make_napari_viewer, qtbot, cohort, segmenter):
    """A second viewer (as after a crash: the first never closed or saved) restores the regions."""
    from napari_histoexpr.widgets.segmenter_panel import SegmenterPanel
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    d = cohort["demos"][2]
    sidecar_path(d.slide).unlink(missing_ok=True)

    def session():
        viewer = make_napari_viewer()
        sp = SlideSpotsWidget(viewer)
        w = sp.open(slide=str(d.slide), spots=str(d.spots))
        with qtbot.waitSignal(w.finished, timeout=60_000):
            pass
        panel = SegmenterPanel(viewer)
        panel.load_model(segmenter)
        return viewer, panel

    _, p1 = session()
    gt = p1.truth_layer(create=True)
    p1.configure(draw_class="PTPRC high")
    gt.add_polygons([np.array([[100.0, 100.0], [100.0, 300.0], [300.0, 300.0]])])
    p1.configure(draw_class="COL1A1 high")
    gt.add_polygons([np.array([[500.0, 500.0], [500.0, 700.0], [700.0, 700.0], [700.0, 500.0]])])
    before = p1.regions()
    _, p2 = session()
    gt2 = p2.truth_layer(create=True)
    after = p2.regions()
    assert [r.cls for r in after] == ["PTPRC high", "COL1A1 high"] == [r.cls for r in before]
    for a, b in zip(before, after):
        assert np.allclose(a.exterior, b.exterior)
    assert len(gt2.data) == 2


def test_drawn_regions_override_spot_classes(cohort):
    from napari_histoexpr.segment.classes import class_spec
    from napari_histoexpr.train.segmenter_trainer import SegConfig, prepare_seg_sections

    sec = cohort["sections"][0]
    square = np.array([[0.0, 0.0], [1024.0, 0.0], [1024.0, 1024.0], [0.0, 1024.0]])  # level-0 (x, y)
    cfg = SegConfig(classes=class_spec("genes", genes=["ERBB2", "COL1A1"]), windows_um=(50.0,), px=16)

    def run(regions):
        return drain(prepare_seg_sections([sec], cfg, regions=regions))[0]

    plain, drawn = run(None), run({sec.section: [(square, "drawn class")]})
    tissue = plain.labels != "background"
    inside = (plain.xy[:, 0] < 1024) & (plain.xy[:, 1] < 1024) & tissue
    assert inside.sum() > 10
    assert (drawn.labels[inside] == "drawn class").all()
    assert (drawn.labels[~inside & tissue] == plain.labels[~inside & tissue]).all()


def test_softmax_head_balances_classes_and_folds_the_standardisation():
    from napari_histoexpr.train.segmenter_trainer import balanced_accuracy, fit_softmax_head

    rng = np.random.default_rng(0)
    # features on very different scales; class 2 is rare and only separable along the small-scale axis
    n = [400, 400, 20]
    centres = np.array([[0.0, 0.0, 0.0], [300.0, 0.0, 0.0], [0.0, 0.0, 0.02]])
    scale = np.array([100.0, 100.0, 0.01])
    x = np.concatenate([c + rng.normal(size=(k, 3)) * scale for c, k in zip(centres, n)]).astype(np.float32)
    y = np.repeat(np.arange(3), n)
    ones = np.ones(3, np.float32)
    inv = (len(y) / np.bincount(y) / 3).astype(np.float32)
    w, b = fit_softmax_head(x, y, 3, inv, 1e-3)
    assert w.shape == (3, 3) and b.shape == (3,)
    bal = balanced_accuracy((x @ w.T + b).argmax(1), y, 3)
    w1, b1 = fit_softmax_head(x, y, 3, ones, 1e-3)
    bal1 = balanced_accuracy((x @ w1.T + b1).argmax(1), y, 3)
    # the weights act on raw features (standardisation folded in) and class weights lift the rare class
    recall = ((x @ w.T + b).argmax(1)[y == 2] == 2).mean()
    recall1 = ((x @ w1.T + b1).argmax(1)[y == 2] == 2).mean()
    assert bal > 0.8 and bal > bal1 and recall > recall1 + 0.1, (bal, bal1, recall, recall1)


def test_segment_train_without_encoder_trains_one_first(cohort, tmp_path):
    from napari_histoexpr.io.manifest import read_manifest
    from napari_histoexpr.models.expression import ExpressionModel
    from napari_histoexpr.models.segmenter import Segmenter
    from napari_histoexpr.segment.classes import class_spec
    from napari_histoexpr.train.segmenter_trainer import SegConfig, segmenter_steps

    cfg = SegConfig(classes=class_spec("genes", genes=["ERBB2", "COL1A1"]), device="cpu",
                    encoder_config={"epochs": 2, "px": 32, "window_um": 100.0, "n_genes": 20, "max_aux": 0,
                                    "baselines": False})
    events = []
    summary = drain(segmenter_steps(read_manifest(cohort["train"]), tmp_path / "seg", cfg), events.append)
    assert any(e.get("stage") == "encoder" for e in events)
    enc = ExpressionModel.load(tmp_path / "seg" / "encoder", "cpu")  # a normal expression model folder
    assert enc.window_um == 100.0 and enc.px == 32 and len(enc.genes) == 20
    seg = Segmenter.load(tmp_path / "seg", "cpu")
    assert seg.windows == [100.0] and seg.px == 32 and summary["features"]["source"] == "expression"
    assert seg.meta["features"]["encoder"] == str(tmp_path / "seg" / "encoder")
    assert seg.meta["features"]["head_l2"] in summary["features"]["head_val_bal_acc"]


def test_cli_exports_the_segmentation_and_drawn_regions_for_qupath(segmenter, cohort, tmp_path, capsys):
    """``export --format geojson --segmentation``: one annotation per connected class region that
    rasterises back onto the segmenter's own label map; ``--regions FILE`` adds drawn regions as they are."""
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.models.segmenter import Segmenter
    from napari_histoexpr.segment.maps import label_map, segment_region

    d = cohort["demos"][3]
    drawn = save_regions(tmp_path / "drawn.geojson",
                         [(np.array([[10.0, 10.0], [400.0, 10.0], [400.0, 300.0]]), "ERBB2 high")])
    out = tmp_path / "objects.geojson"
    assert cli(["export", "--format", "geojson", "--slide", str(d.slide), "--segmentation", str(segmenter),
                "--regions", str(drawn), "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert_qupath_objects(out, "annotation")
    objs = load_regions(out)
    assert summary["regions"] == 1 and summary["segmentation_regions"] == len(objs) - 1 >= 3
    assert np.allclose(objs[0].exterior, [[10, 10], [400, 10], [400, 300]])
    model = Segmenter.load(segmenter, "cpu")
    rp, ras = drain(segment_region(model, open_slide(str(d.slide))))
    labels = label_map(ras.data)
    g = rp.grid
    back = rasterise(objs[1:], model.classes, g.stride, g.rows, g.cols)
    agree = np.mean(back == np.where(labels > 0, labels, -1))
    assert agree > 0.99, agree
    assert {o.cls for o in objs[1:]} <= set(model.classes[1:])
    assert all(o.measurements["Area µm^2"] > 0 for o in objs[1:])
