from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent (a user's clone has none); CI has it")
    return SHARED


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from napari_histoexpr.datasets import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), size=1536, seed=1)


@pytest.fixture
def shared_data_or_none():
    """../shared/data when present, else None (for tests that only add checks when it exists)."""
    return SHARED if SHARED.is_dir() else None


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """Four generated sections (2048 px at 1 µm/px, ~290 spots each) and train/test manifests:
    ``train`` holds s0 and s1, s2 and s3 are unseen."""
    from napari_histoexpr.datasets import make_demo
    from napari_histoexpr.io.manifest import Section, write_manifest

    base = tmp_path_factory.mktemp("cohort")
    demos = [make_demo(base / f"s{i}", size=2048, mpp=1.0, seed=11 + i) for i in range(4)]
    secs = [Section(section=f"s{i}", patient=f"p{i}", image=d.slide, spots=d.spots) for i, d in enumerate(demos)]
    return {"demos": demos, "sections": secs,
            "train": write_manifest(base / "train.csv", secs[:2]),
            "test": write_manifest(base / "test.csv", secs[2:3]),
            "unseen": write_manifest(base / "unseen.csv", secs[3:]), "base": base}


PLANTED = ["ERBB2", "KRT8", "KRT18", "EPCAM", "CDH1", "COL1A1", "COL1A2", "COL3A1", "FN1", "DCN",
           "PTPRC", "CD74", "IGKC", "CD3E", "MS4A1"]


@pytest.fixture(scope="session")
def trained(cohort, tmp_path_factory):
    """The CLI trains a small model with the default route (s0 and s1 both fitted, fixed schedule,
    EMA weights) on the generated cohort (~60 s on CPU)."""
    from napari_histoexpr.cli import main as cli

    out = tmp_path_factory.mktemp("model") / "m"
    rc = cli(["train", "--manifest", str(cohort["train"]), "--out", str(out), "--gene-list", ",".join(PLANTED),
              "--aux-genes", "10", "--window-um", "100", "--px", "64", "--epochs", "16", "--lr", "1e-3",
              "--patience", "16", "--device", "cpu", "--seed", "0"])
    assert rc == 0
    return out


def open_section(viewer, qtbot, demo):
    """A generated section opened by the "Slide & spots" panel (returned: keep it referenced while the
    viewer is in use; its worker adds the layers)."""
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    spots = SlideSpotsWidget(viewer)
    w = spots.open(slide=str(demo.slide), spots=str(demo.spots))
    with qtbot.waitSignal(w.finished, timeout=60_000):
        pass
    return spots


def expression_panel_on(viewer, qtbot, demo, **settings):
    """A generated section opened by the "Slide & spots" panel and a docked "Predicted expression"
    panel configured with ``settings`` (no model loaded yet)."""
    from napari_histoexpr.widgets.expression_view import ExpressionPanel

    open_section(viewer, qtbot, demo)
    panel = ExpressionPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.configure(**settings)
    return panel


def assert_qupath_objects(path, object_type: str | None = None) -> list[dict]:
    """Check a GeoJSON file against the layout QuPath's *Import objects* reads (0.4+): a
    FeatureCollection of Features with an id, a Polygon/MultiPolygon of closed rings of finite numbers,
    an objectType, a classification {name, color [r, g, b]} and measurements {name: finite number}.
    Returns the features."""
    import json
    import math

    doc = json.loads(Path(path).read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    for f in doc["features"]:
        assert f["type"] == "Feature" and isinstance(f["id"], str) and f["id"]
        g = f["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        assert g["type"] in ("Polygon", "MultiPolygon") and polys
        for rings in polys:
            for ring in rings:
                assert len(ring) >= 4 and ring[0] == ring[-1]
                assert all(len(p) == 2 and all(math.isfinite(v) for v in p) for p in ring)
        p = f["properties"]
        assert p["objectType"] in ("annotation", "detection")
        assert object_type is None or p["objectType"] == object_type
        c = p.get("classification")
        if c is not None:
            assert isinstance(c["name"], str) and len(c["color"]) == 3
            assert all(isinstance(v, int) and 0 <= v <= 255 for v in c["color"])
        for k, v in (p.get("measurements") or {}).items():
            assert isinstance(k, str) and isinstance(v, (int, float)) and math.isfinite(v)
    return doc["features"]
