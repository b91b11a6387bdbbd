"""Foundations of the slide-level models: the generated cohort, the cohort manifest and patient
folds, the resumable tile-feature cache, and the censored C-index checked against lifelines."""

import numpy as np
import pandas as pd
import pytest

from napari_histoexpr.metrics import concordance_index


def test_concordance_index_matches_lifelines():
    lifelines = pytest.importorskip("lifelines.utils", reason="lifelines is a test dependency")
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.exponential(100, 60)
        risk = -np.log(t) + rng.normal(0, 1, 60)
        risk[:10] = np.round(risk[:10])  # some tied risks
        e = rng.random(60) < 0.6
        ours = concordance_index(t, risk, e)
        ref = lifelines.concordance_index(t, -risk, e)  # lifelines: higher score = longer survival
        assert ours == pytest.approx(ref, abs=1e-12)
    assert concordance_index([1, 2, 3], [3, 2, 1], [1, 1, 1]) == 1.0
    assert concordance_index([1, 2, 3], [1, 2, 3], [1, 1, 1]) == 0.0


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    from napari_histoexpr.datasets import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), n_slides=9, size=512, seed=2)


def test_generated_cohort_and_folds(small_cohort):
    from napari_histoexpr.slide_level.cohort import (
        bulk_matrix,
        patient_folds,
        read_cohort,
    )

    slides = read_cohort(small_cohort)
    assert len(slides) == 9 and len({s.patient for s in slides}) < 9  # some patients have two slides
    B = bulk_matrix(slides)
    truth = pd.read_csv(small_cohort.parent / "truth.csv", index_col=0).loc[B.index]
    # planted: bulk markers follow the class fractions; hazard follows the tumour fraction
    assert np.corrcoef(np.log1p(B["ERBB2"]), truth["frac_tumour"])[0, 1] > 0.8
    assert np.corrcoef(np.log1p(B["COL1A1"]), truth["frac_stroma"])[0, 1] > 0.8
    folds = patient_folds(slides, k=3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(9))
    for f in folds:  # no patient is split across folds
        pats = {slides[i].patient for i in f}
        others = {slides[i].patient for g in folds if g is not f for i in g}
        assert not pats & others


def test_cohort_manifest_errors(tmp_path):
    from napari_histoexpr.errors import ManifestError
    from napari_histoexpr.slide_level.cohort import read_cohort

    (tmp_path / "c.csv").write_text("id,slide,patient\nA,missing.tif,P1\n")
    with pytest.raises(ManifestError, match="slide not found"):
        read_cohort(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("id,patient\nA,P1\n")
    with pytest.raises(ManifestError, match="'slide' column"):
        read_cohort(tmp_path / "d.csv")


def test_tile_features_are_cached_and_resumable(small_cohort, tmp_path):
    import zarr

    from napari_histoexpr.errors import HistoExprError
    from napari_histoexpr.slide_level.cohort import read_cohort
    from napari_histoexpr.slide_level.features import (
        Encoder,
        extract_features_steps,
        load_features,
    )

    s = read_cohort(small_cohort)[0]
    enc = Encoder("resnet18", "cpu", seed=0)
    out = tmp_path / "f.zarr"
    list(extract_features_steps(enc, s.slide, out, tile_um=32, px=32, chunk=16))
    feats, coords, attrs = load_features(out)
    assert feats.shape == (attrs["n_tiles"], 512) and coords.shape == (attrs["n_tiles"], 2)
    assert attrs["n_tiles"] > 50 and np.isfinite(feats).all()
    # an interrupted run: forget the last chunks, resume, get the same features back
    g = zarr.open_group(str(out), mode="a")
    g["done"][attrs["n_tiles"] // 2:] = 0
    g["features"][attrs["n_tiles"] // 2:] = 0
    g.attrs["histoexpr_features"] = dict(attrs, complete=False)
    with pytest.raises(HistoExprError, match="no complete"):
        load_features(out)
    steps = list(extract_features_steps(enc, s.slide, out, tile_um=32, px=32, chunk=16))
    assert 0 < len(steps) < int(np.ceil(attrs["n_tiles"] / 16))
    again, _, _ = load_features(out)
    assert np.allclose(again, feats, atol=1e-5)
    # another encoder into the same folder is refused
    with pytest.raises(HistoExprError, match="another encoder"):
        list(extract_features_steps(Encoder("resnet18", "cpu", seed=1), s.slide, out, tile_um=32, px=32))


def test_cohort_features_on_a_dask_cluster_equal_in_process(small_cohort, tmp_path):
    """`histoexpr features --cluster` (a LocalCluster) writes the same features as one process."""
    from napari_histoexpr.cli import main as cli
    from napari_histoexpr.slide_level.cohort import read_cohort, write_cohort
    from napari_histoexpr.slide_level.features import load_features

    sub = write_cohort(small_cohort.parent / "three.csv", read_cohort(small_cohort)[:3])
    args = ["features", "--cohort", str(sub), "--encoder", "resnet18", "--tile-um", "32", "--px", "32",
            "--device", "cpu"]
    assert cli([*args, "--out", str(tmp_path / "local")]) == 0
    assert cli([*args, "--out", str(tmp_path / "dask"), "--cluster"]) == 0
    for s in read_cohort(sub):
        a, ca, _ = load_features(tmp_path / "local" / f"{s.id}.zarr")
        b, cb, attrs = load_features(tmp_path / "dask" / f"{s.id}.zarr")
        assert attrs["encoder"].startswith("resnet18 (random init, seed 0)")
        assert np.array_equal(ca, cb) and np.allclose(a, b, atol=1e-5)


def test_features_of_a_real_aperio_slide(shared_data, tmp_path):
    """The default tiling (224 px at 0.5 µm/px) on CMU-1-Small-Region.svs; a broken slide in a
    cohort is a named error and exit code 2."""
    from napari_histoexpr.cli import main as cli
    from napari_histoexpr.slide_level.bags import bag_from_features, tile_raster

    wsi = shared_data / "wsi"
    (tmp_path / "cohort.csv").write_text(f"id,slide,patient\nCMU1,{wsi / 'cmu-1-small-region.svs'},P1\n")
    assert cli(["features", "--cohort", str(tmp_path / "cohort.csv"), "--encoder", "resnet18",
                "--out", str(tmp_path / "f"), "--device", "cpu"]) == 0
    bag = bag_from_features(tmp_path / "f" / "CMU1.zarr")
    assert bag.tile_um == 112.0 and bag.attrs["px"] == 224 and bag.world_mpp == pytest.approx(0.499, abs=1e-3)
    # 2220 x 2967 px at 0.499 µm/px: at most 9 x 13 tiles of 112 µm, tissue only
    assert 20 < len(bag.feats) < 9 * 13 and np.isfinite(bag.feats).all()
    assert (bag.coords[:, 0] < 2220).all() and (bag.coords[:, 1] < 2967).all()
    img, geo = tile_raster(bag, np.arange(len(bag.feats), dtype=float))
    assert img.shape[0] <= 13 and img.shape[1] <= 9 and np.isfinite(img).sum() == len(bag.feats)
    assert geo["scale"][0] == pytest.approx(112.0, rel=1e-6)
    (tmp_path / "bad.csv").write_text(f"id,slide,patient\nB,{wsi / 'broken.svs'},P1\n")
    assert cli(["features", "--cohort", str(tmp_path / "bad.csv"), "--encoder", "resnet18",
                "--out", str(tmp_path / "g"), "--device", "cpu"]) == 2
