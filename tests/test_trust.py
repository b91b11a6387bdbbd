"""Uncertainty and out-of-distribution score of expression models (models/trust.py, train/calibration.py,
infer/slide_trust.py): calibrated by training, written by predict and evaluate, refused when damaged."""

import json
import shutil

import numpy as np
import pytest

from napari_histoexpr.errors import ModelFileError


@pytest.fixture(scope="module")
def model(trained):
    from napari_histoexpr.models.expression import ExpressionModel

    m = ExpressionModel.load(trained, "cpu")
    m.set_uncertainty(True)
    return m


def noisy_copy(src, dst, boxes, seed=0):
    """``src`` slide rewritten as a pyramidal TIFF with uniform RGB noise in ``boxes`` (level-0
    ``(x0, y0, x1, y1)``): the planted noisy regions."""
    from napari_histoexpr.datasets.writers import write_pyramidal_tiff
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(src)
    h, w = pyr.level0_shape[:2]
    img = np.asarray(pyr.read_region(0, 0, h, w))[..., :3].copy()
    rng = np.random.default_rng(seed)
    for x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)

    def render(y, x, hh, ww, ds):
        k = int(ds)
        return np.ascontiguousarray(img[y * k:(y + hh) * k:k, x * k:(x + ww) * k:k])

    return write_pyramidal_tiff(dst, render, h, w, pyr.mpp)


def test_training_calibrates_and_outputs_follow(trained, model):
    from napari_histoexpr.models.trust import DISTANCE, trust_info, uncertainty_channel

    info = trust_info(trained)
    assert info["sections"] == ["s0", "s1"] and info["n_groups"] == 2
    assert all(0.5 < s < 2 for s in info["section_scores"])
    g = model.genes
    assert model.outputs == g + [uncertainty_channel(x) for x in g] + [DISTANCE]
    model.set_uncertainty(False)
    assert model.outputs == g
    model.set_uncertainty(True)


def test_uncertainty_leaves_predictions_unchanged(cohort, model):
    """The trust head reads the features beside the gene head: the predictions are the same with it on;
    the spots of an unseen section of the training kind lie as far from the training spots as the
    training sections lie from each other (distance near 1)."""
    from napari_histoexpr.io.sections import load_section

    pyr, ad = load_section(cohort["sections"][2])
    xy = np.asarray(ad.obsm["spatial"], float)[:60]
    on = model.predict_centres_dense(pyr, xy)
    model.set_uncertainty(False)
    off = model.predict_centres_dense(pyr, xy)
    model.set_uncertainty(True)
    n = len(model.genes)
    assert on.shape == (60, 2 * n + 1) and off.shape == (60, n)
    np.testing.assert_allclose(on[:, :n], off, atol=1e-4)
    assert np.all(on[:, n:] > 0)  # uncertainties and distances are positive
    assert 0.5 < np.median(on[:, -1]) < 1.5


def test_planted_noisy_regions_get_higher_uncertainty(cohort, model, tmp_path):
    """Noise planted on the tissue of an unseen section: its windows are uncertain and far from the
    training spots; the clean tissue around them is not."""
    from napari_histoexpr.infer.slide_trust import tissue_windows
    from napari_histoexpr.io.slides import open_slide

    demo = cohort["demos"][3]
    src = open_slide(demo.slide)
    w = tissue_windows(src, model.window_um, n=400, min_tissue=0.8)
    step = model.window_um / src.world_mpp
    picks = w[np.random.default_rng(1).choice(len(w), 3, replace=False)]
    boxes = [tuple(int(v) for v in (x - 1.5 * step, y - 1.5 * step, x + 1.5 * step, y + 1.5 * step)) for x, y in picks]
    noisy = open_slide(noisy_copy(demo.slide, tmp_path / "noisy.tif", boxes))
    inside = np.array([any(b[0] + step / 2 <= x <= b[2] - step / 2 and b[1] + step / 2 <= y <= b[3] - step / 2
                           for b in boxes) for x, y in w])
    clean = np.array([all(x < b[0] - step or x > b[2] + step or y < b[1] - step or y > b[3] + step for b in boxes)
                      for x, y in w])
    assert inside.sum() >= 3 and clean.sum() >= 20
    out = model.predict_centres_dense(noisy, w[inside | clean])
    n = len(model.genes)
    unc, dist = out[:, n:2 * n].mean(1), out[:, -1]
    sel = inside[inside | clean]
    assert unc[sel].min() > np.median(unc[~sel]) and unc[sel].mean() > 1.5 * unc[~sel].mean()
    assert dist[sel].min() > np.quantile(dist[~sel], 0.95)


def test_unrelated_tissue_scores_out_of_distribution(cohort, model, shared_data):
    """A held-out generated section of the training kind scores like the training sections; real H&E of
    other tissues (a skin-region Aperio slide, a mouse olfactory bulb) score out of distribution."""
    from napari_histoexpr.infer.slide_trust import slide_ood
    from napari_histoexpr.io.slides import open_slide

    held = slide_ood(model, open_slide(cohort["demos"][2].slide))
    assert not held["outside"] and held["ood_score"] < 1.5
    for path, mpp in ((shared_data / "wsi" / "cmu-1-small-region.svs", None),
                      (shared_data / "stain-refs" / "stutility-MOB1.jpg", 3.4)):
        other = slide_ood(model, open_slide(path, mpp=mpp))
        assert other["outside"] and other["ood_score"] > 1.5 * held["ood_score"], (path.name, other)
        assert other["ood_percentile"] == 100.0 and "unreliable" in other["message"]


def test_evaluate_reports_trust(trained, cohort, tmp_path):
    import anndata

    from napari_histoexpr.cli import main as cli
    from napari_histoexpr.metrics import spearman_mean

    rc = cli(["evaluate", "--model", str(trained), "--manifest", str(cohort["test"]), "--out", str(tmp_path),
              "--no-baselines", "--device", "cpu"])
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    t = rep["sections"]["s2"]["trust"]
    assert set(t) >= {"ood_score", "ood_percentile", "uncertainty_error_spearman", "outside", "risk_coverage"}
    assert 0 <= t["ood_percentile"] <= 100 and not t["outside"]
    spots = anndata.read_h5ad(tmp_path / "spots" / "s2.h5ad")
    assert spots.n_obs == rep["sections"]["s2"]["n_spots"] and "uncertainty" in spots.layers
    rho = spearman_mean(spots.layers["uncertainty"], np.abs(spots.X - spots.layers["measured"]))
    assert rho == pytest.approx(t["uncertainty_error_spearman"], abs=1e-6)
    rc_ = t["risk_coverage"]
    assert rc_["coverage"][-1] == 1.0 and len(rc_["mean_r"]) == len(rc_["mae"]) == len(rc_["coverage"])
    assert rep["summary"]["trust"]["ood_score"] == pytest.approx(t["ood_score"])
    assert "OOD score" in (tmp_path / "report.md").read_text()


def test_predict_writes_uncertainty_and_ood(model, cohort, tmp_path):
    import anndata
    import zarr

    from napari_histoexpr.infer.slide import predict_slide_steps
    from napari_histoexpr.models.trust import ood_summary
    from napari_histoexpr.steps import drain

    slide = cohort["demos"][2].slide
    summary = drain(predict_slide_steps(model, slide, tmp_path / "on"))
    g = zarr.open_group(str(tmp_path / "on" / "prediction.zarr"), mode="r")
    assert g["uncertainty"].shape == g["0"].shape and g["distance"].shape == g["0"].shape[1:]
    on_tissue = np.isfinite(g["0"][0])
    assert np.array_equal(on_tissue, np.isfinite(g["distance"][:]))
    table = anndata.read_h5ad(tmp_path / "on" / "prediction.h5ad")
    assert table.layers["uncertainty"].shape == table.shape and np.all(table.obs["distance"] > 0)
    ood = ood_summary(table.obs["distance"].to_numpy(), model.trust.info)
    assert summary["ood_score"] == pytest.approx(ood["ood_score"]) and summary["outside"] is False
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["ood_percentile"] == ood["ood_percentile"]
    off = drain(predict_slide_steps(model, slide, tmp_path / "off", uncertainty=False))
    assert "ood_score" not in off and "uncertainty" not in zarr.open_group(str(tmp_path / "off" / "prediction.zarr"))
    assert model.uncertainty  # the caller's model is left as it was


def test_calibrate_cli_and_damaged_calibration(trained, cohort, tmp_path, capsys):
    from napari_histoexpr.cli import main as cli
    from napari_histoexpr.models.expression import ExpressionModel

    m = tmp_path / "m"
    shutil.copytree(trained, m)
    for f in ("trust.json", "trust.safetensors"):
        (m / f).unlink()
    bare = ExpressionModel.load(m, "cpu")
    assert bare.trust is None and bare.outputs == bare.genes
    with pytest.raises(ModelFileError, match="histoexpr calibrate"):
        bare.set_uncertainty(True)
    capsys.readouterr()
    assert cli(["calibrate", "--model", str(m), "--manifest", str(cohort["train"]), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sections"] == ["s0", "s1"]
    assert ExpressionModel.load(m, "cpu").trust is not None
    blob = bytearray((m / "trust.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (m / "trust.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="does not match"):
        ExpressionModel.load(m, "cpu")
