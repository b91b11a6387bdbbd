"""QuPath round trip: GeoJSON objects as QuPath writes them (holes, MultiPolygons, old and new
classification/measurement forms) import exactly; label maps vectorise with holes and rasterise back;
spots, grid cells and segmentations export as QuPath objects and reopen with the same values."""

import json

import numpy as np
import pytest

from conftest import assert_qupath_objects
from napari_histoexpr.errors import GeoJSONError
from napari_histoexpr.io.qupath import label_map_objects, parse_geojson, read_geojson, write_geojson
from napari_histoexpr.segment.annotations import load_regions, rasterise, save_regions


def _ring(pts):
    pts = [list(map(float, p)) for p in pts]
    return pts + [pts[0]]


def _box(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# a QuPath 0.5 export (File > Export objects as GeoJSON, "FeatureCollection"): level-0 px
TUMOUR = _ring(_box(100, 100, 900, 700))
HOLES = [_ring(_box(200, 200, 400, 400)), _ring([(600, 300), (800, 300), (700, 600)])]
PART1 = [_ring(_box(1000, 100, 1400, 500)), _ring(_box(1100, 200, 1300, 400))]
PART2 = [_ring([(1500, 600), (1900, 600), (1900, 1000), (1700, 1200), (1500, 1000)])]


def qupath_export() -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "6f1c2b1e-0000-4000-8000-000000000001",
         "geometry": {"type": "Polygon", "coordinates": [TUMOUR, *HOLES]},
         "properties": {"objectType": "annotation", "name": "tumour bed", "isLocked": False,
                        "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Area µm^2": 1.5e5}}},
        {"type": "Feature", "id": "6f1c2b1e-0000-4000-8000-000000000002",
         "geometry": {"type": "MultiPolygon", "coordinates": [PART1, PART2]},
         "properties": {"objectType": "annotation",  # QuPath <= 0.3 forms
                        "classification": {"name": "Stroma", "colorRGB": -16744448},
                        "measurements": [{"name": "Num Detections", "value": 12}]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_ring(_box(0, 0, 10, 10))]},
         "properties": {"objectType": "detection", "measurements": {"Nucleus: Area": 31.0}}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [50, 50]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_ring(_box(2000, 0, 2100, 100))]},
         "properties": {"objectType": "annotation"}},  # unclassified
    ]}


def _closed(a):
    a = np.asarray(a, float)
    return np.vstack([a, a[:1]])


def test_qupath_export_with_holes_and_multipolygons_imports_exactly(tmp_path):
    src = tmp_path / "slide.geojson"
    src.write_text(json.dumps(qupath_export()))
    regions = load_regions(src)
    assert [r.cls for r in regions] == ["Tumor", "Stroma", "unclassified"]
    t, s, u = regions
    # every ring, vertex for vertex
    assert len(t.parts) == 1 and [_closed(r).tolist() for r in t.parts[0]] == [TUMOUR, *HOLES]
    assert [[_closed(r).tolist() for r in p] for p in s.parts] == [PART1, PART2]
    assert t.name == "tumour bed" and t.color == (200, 0, 0) and t.id.endswith("0001")
    assert s.color == (0, 128, 0) and s.measurements == {"Num Detections": 12.0}
    assert t.measurements == {"Area µm^2": 1.5e5}
    # written and read again: the same geometry, exactly, and the same classes and ids
    back = load_regions(save_regions(tmp_path / "again.geojson", regions))
    assert_qupath_objects(tmp_path / "again.geojson", "annotation")
    assert all(a.geometry.equals_exact(b.geometry, 0.0) for a, b in zip(regions, back))
    assert [(b.cls, b.id, b.color) for b in back[:2]] == [(a.cls, a.id, a.color) for a in regions[:2]]
    assert back[2].cls == "unclassified" and back[2].id  # an object without an id gets one
    # the other objects are counted, not imported as regions
    _, skipped = read_geojson(src, ("annotation",))
    assert skipped == {"detection": 1, "LineString geometry": 1}


def test_rasterised_regions_leave_holes_out_as_an_even_odd_fill_does():
    """Against an independent rasteriser: matplotlib's path test per ring, a cell inside when it is in
    an odd number of its region's rings."""
    from matplotlib.path import Path as MPath

    regions, _ = parse_geojson(qupath_export(), ("annotation",))
    stride, rows, cols = 17.0, 80, 130  # no cell centre on an edge
    got = rasterise(regions, ["bg", "Tumor", "Stroma"], stride, rows, cols)
    jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
    pts = np.stack([(jj.ravel() + 0.5) * stride, (ii.ravel() + 0.5) * stride], 1)
    want = np.full(rows * cols, -1)
    for k, r in zip((1, 2), regions[:2]):
        for part in r.parts:
            odd = np.sum([MPath(ring).contains_points(pts) for ring in part], axis=0) % 2 == 1
            want[odd] = k
    assert (got.ravel() == want).all()
    assert (got == 1).sum() > 100 and (got == 2).sum() > 100
    assert got[int(300 / stride), int(300 / stride)] == -1  # in the tumour's square hole
    assert got[int(300 / stride), int(1200 / stride)] == -1  # in the stroma's first part's hole


def test_documents_qupath_writes_and_named_errors(tmp_path):
    feats = qupath_export()["features"]
    assert len(parse_geojson(feats[0])[0]) == 1  # a single Feature
    assert len(parse_geojson(feats)[0]) == 4  # a bare list (the line is skipped)
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(GeoJSONError, match="bad.geojson"):
        read_geojson(bad)
    bad.write_text(json.dumps({"type": "Topology"}))
    with pytest.raises(GeoJSONError, match="FeatureCollection"):
        read_geojson(bad)
    bad.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}))
    with pytest.raises(GeoJSONError, match="malformed geometry"):
        read_geojson(bad)


def planted_label_map():
    """Classes 1 (a frame with a hole holding a class-2 island) and 2 (also a separate blob); 0 is
    background, -1 never predicted."""
    lab = np.zeros((40, 50), np.int32)
    lab[:, 45:] = -1
    lab[3:30, 4:30] = 1
    lab[10:20, 10:20] = 0  # hole of class 1 ...
    lab[13:17, 13:17] = 2  # ... holding an island of class 2
    lab[32:38, 33:43] = 2
    lab[33:35, 35:37] = 0  # hole of the blob
    return lab


def test_label_map_vectorises_with_holes_and_rasterises_back(tmp_path):
    lab = planted_label_map()
    classes = ["background", "tumour", "stroma"]
    stride, origin = 16.0, (0.0, 0.0)
    objs = label_map_objects(lab, classes, stride, origin, skip=(0,), mpp=0.5)
    assert sorted(o.cls for o in objs) == ["stroma", "stroma", "tumour"]
    tumour = next(o for o in objs if o.cls == "tumour")
    assert len(tumour.parts) == 1 and len(tumour.parts[0]) == 2  # outer ring + the hole
    assert tumour.measurements["Cells"] == (lab == 1).sum()
    assert tumour.measurements["Area µm^2"] == pytest.approx((lab == 1).sum() * (stride * 0.5) ** 2, rel=0.05)
    # through a file, rasterised at the cell centres: the label map again (background and unpredicted: -1)
    path = write_geojson(tmp_path / "seg.geojson", objs)
    assert_qupath_objects(path, "annotation")
    back = rasterise(load_regions(path), classes, stride, *lab.shape)
    assert (back == np.where(lab > 0, lab, -1)).all()


@pytest.fixture(scope="module")
def predicted(trained, cohort, tmp_path_factory):
    """``histoexpr predict --spots`` on the unseen section s3 (its grid and its spots)."""
    from napari_histoexpr.cli import main as cli

    d = cohort["demos"][3]
    out = tmp_path_factory.mktemp("pred") / "s3"
    assert cli(["predict", "--model", str(trained), "--slide", str(d.slide), "--spots", str(d.spots), "--out",
                str(out), "--device", "cpu", "--stride-um", "50"]) == 0
    return d, out


def test_cli_exports_one_detection_per_spot_and_the_file_reopens_with_the_same_values(predicted, tmp_path):
    import anndata as ad

    from napari_histoexpr._reader import get_reader
    from napari_histoexpr.cli import main as cli
    from napari_histoexpr.data.gene_values import log1p_normalised
    from napari_histoexpr.io.spots import read_spots

    d, pred = predicted
    out = d.slide.parent / "s3-objects.geojson"  # next to the slide: the reader finds its scale there
    assert cli(["export", "--format", "geojson", "--slide", str(d.slide), "--spots", str(d.spots),
                "--prediction", str(pred), "--out", str(out), "--overwrite"]) == 0
    spots = read_spots(str(d.spots))
    sp = ad.read_h5ad(pred / "spots_prediction.h5ad")
    assert_qupath_objects(out, "detection")
    objs, _ = read_geojson(out)
    # one detection per measured spot, named by barcode, in level-0 px, the spot's diameter
    assert [o.name for o in objs] == list(spots.obs_names) and {o.object_type for o in objs} == {"detection"}
    cx = np.array([[o.geometry.centroid.x, o.geometry.centroid.y] for o in objs])
    assert np.abs(cx - spots.obsm["spatial"]).max() < 0.5
    diam = 2 * np.sqrt(objs[0].geometry.area / np.pi)
    assert diam == pytest.approx(spots.uns["histoexpr"]["spot_diameter_px"], rel=0.02)
    genes = list(sp.var_names)
    names = set().union(*(o.measurements for o in objs))
    assert names == {f"{k}: {g}" for k in ("measured", "predicted", "uncertainty") for g in genes}
    meas = log1p_normalised(spots, genes)
    got = np.array([[o.measurements[f"measured: {g}"] for g in genes] for o in objs])
    assert np.allclose(got, meas, atol=1e-6)
    row = {n: i for i, n in enumerate(spots.obs_names)}
    have = [o for o in objs if "predicted: ERBB2" in o.measurements]
    assert len(have) == sp.n_obs  # spots without a prediction (off tissue) have the measurement left out
    got = np.array([[o.measurements[f"predicted: {g}"] for g in genes] for o in have])
    assert np.allclose(got, sp[[o.name for o in have]].X, atol=1e-6)
    assert all(o.name in row for o in have)
    # reopened in the plugin: a Points layer whose features hold the same values
    layers = get_reader(str(out))(str(out))
    data, kw, kind = layers[0]
    assert kind == "points" and len(data) == spots.n_obs
    f = kw["features"].set_index("name")
    assert np.allclose(f.loc[sp.obs_names, "predicted: ERBB2"], sp[:, "ERBB2"].X.ravel(), atol=1e-6)
    assert np.allclose(data[:, ::-1] / spots.uns["histoexpr"]["mpp"], cx, atol=1e-6)


def test_cli_exports_grid_cells_with_their_predictions(predicted, tmp_path, capsys):
    import anndata as ad

    from napari_histoexpr.cli import main as cli

    _, pred = predicted
    out = tmp_path / "grid.geojson"
    assert cli(["export", "--format", "geojson", "--prediction", str(pred), "--level", "grid", "--genes",
                "erbb2,COL1A1", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    t = ad.read_h5ad(pred / "prediction.h5ad")
    assert_qupath_objects(out, "detection")
    objs, _ = read_geojson(out)
    assert report["grid_detections"] == len(objs) == t.n_obs
    stride = t.uns["histoexpr"]["stride_px"]
    assert objs[0].geometry.area == pytest.approx(stride ** 2)
    got = np.array([o.measurements["predicted: COL1A1"] for o in objs])
    assert np.allclose(got, t[:, "COL1A1"].X.ravel(), atol=1e-6)
    assert "uncertainty: ERBB2" in objs[0].measurements and "distance" in objs[0].measurements
    assert cli(["export", "--format", "geojson", "--prediction", str(pred), "--level", "grid", "--genes", "NOPE",
                "--out", str(tmp_path / "x.geojson")]) == 2  # a named error: the gene is unknown
    assert "NOPE" in capsys.readouterr().err
    assert cli(["export", "--format", "geojson", "--prediction", str(pred), "--level", "grid",
                "--out", str(out)]) == 2  # exists: --overwrite


def test_reader_opens_a_qupath_export_next_to_its_slide_as_drawn_regions(make_napari_viewer, qtbot, cohort,
                                                                          tmp_path):
    """File > Open on a .geojson beside a slide: its annotations become the (autosaved) ground truth,
    merged into the slide's sidecar; a second file joins the open ground-truth layer; an unrelated
    folder gets a named error and the viewer keeps working."""
    import shutil

    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.layerdata import slide_layer_data
    from napari_histoexpr.segment.annotations import sidecar_path
    from napari_histoexpr.widgets.qupath_panel import QuPathPanel

    d = cohort["demos"][1]
    folder = tmp_path / "slides"
    folder.mkdir()
    slide = folder / "case7.tif"
    shutil.copy(d.slide, slide)
    src = folder / "case7.geojson"
    src.write_text(json.dumps(qupath_export()))
    viewer = make_napari_viewer()
    panel = QuPathPanel(viewer)  # noqa: F841 (a panel's session autosaves the ground truth)
    # the slide is open at 0.5 µm/px (e.g. a JPEG scaled by its spots), not the file's 1.0: the regions follow it
    data, kw, kind = slide_layer_data(open_slide(str(slide), mpp=0.5))
    viewer.add_image(data, **kw)
    viewer.open(str(src), plugin="napari-histoexpr")
    truth = [ly for ly in viewer.layers if ly.metadata.get("histoexpr", {}).get("key") == "seg:truth"]
    assert len(truth) == 1 and len(truth[0].data) == 7  # 3 regions: 1 + 2 + (2 + 1) + 1 rings
    assert int(truth[0].features["hole"].sum()) == 3
    np.testing.assert_allclose(truth[0].data[0][:, ::-1] / 0.5, np.asarray(TUMOUR[:-1]))
    side = sidecar_path(slide)
    saved = load_regions(side)
    want = load_regions(src)
    assert len(saved) == 3 and [r.id for r in saved[:2]] == [r.id for r in want[:2]]  # the third had no id
    assert all(a.geometry.equals_exact(b.geometry, 1e-6) for a, b in zip(saved, want))
    # an edit is autosaved; a second export joins the same layer
    truth[0].add_polygons([np.array([[10.0, 10.0], [10.0, 90.0], [90.0, 90.0]])])
    assert len(load_regions(side)) == 4
    more = folder / "case7_more.geojson"
    more.write_text(json.dumps({"type": "Feature", "id": "x2", "properties": {"classification": {"name": "Necrosis"}},
                                "geometry": {"type": "Polygon", "coordinates": [_ring(_box(5, 5, 60, 60))]}}))
    viewer.open(str(more), plugin="napari-histoexpr")
    assert len([ly for ly in viewer.layers if ly.metadata.get("histoexpr", {}).get("key") == "seg:truth"]) == 1
    assert [r.cls for r in load_regions(side)][-1] == "Necrosis" and len(load_regions(side)) == 5
    lonely = tmp_path / "lonely.geojson"
    lonely.write_text(json.dumps(qupath_export()))
    with pytest.raises(Exception, match="no slide next to lonely.geojson"):
        viewer.open(str(lonely), plugin="napari-histoexpr")
    # the export's one detection: a Points layer with its measurement
    dets = [ly for ly in viewer.layers if ly.metadata.get("histoexpr", {}).get("kind") == "qupath-detections"]
    assert len(viewer.layers) == 3 and len(dets) == 1 and dets[0].features["Nucleus: Area"].tolist() == [31.0]
    np.testing.assert_allclose(dets[0].data[0][::-1] / 0.5, [5.0, 5.0])  # the detection's centroid
