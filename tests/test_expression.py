"""Expression model: backbones, patches, training that learns planted genes, artifacts, evaluation, CLI."""

import json

import numpy as np
import pytest
import torch

from napari_histoexpr.cli import main as cli
from napari_histoexpr.datasets import PLANTED_GENES
from napari_histoexpr.errors import ModelFileError
from napari_histoexpr.steps import drain

PLANTED = [g for gs in PLANTED_GENES.values() for g in gs]
FIRST_MARKERS = [gs[0] for gs in PLANTED_GENES.values()]

# torchvision's parameter counts without the classifier (fc / classifier layers)
TORCHVISION_PARAMS = {"resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032,
                      "densenet121": 6_953_856, "efficientnet_b0": 4_007_548,
                      "efficientnet_b1": 6_513_184, "efficientnet_b2": 7_700_994,
                      "efficientnet_b3": 10_696_232, "efficientnet_b4": 17_548_616}


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_backbones_match_torchvision(name):
    from napari_histoexpr.models.backbones import build_backbone

    m = build_backbone(name)
    assert sum(p.numel() for p in m.parameters()) == TORCHVISION_PARAMS[name]
    y = m.eval()(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, m.num_features) and torch.isfinite(y).all()


def test_init_weights_load_safely(tmp_path):
    from napari_histoexpr.models.backbones import build_backbone, load_init_weights

    src = build_backbone("resnet18")
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(1000, 512)  # a classifier head is ignored
    torch.save({"state_dict": sd}, tmp_path / "w.pt")
    dst = build_backbone("resnet18")
    info = load_init_weights(dst, tmp_path / "w.pt")
    assert info["loaded"] == len(src.state_dict()) and not info["missing"]
    assert torch.equal(dst.conv1.weight, src.conv1.weight)

    class Evil:  # a pickle that would run code is refused, not executed
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError):
        load_init_weights(build_backbone("resnet18"), tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="no tensor matches"):
        torch.save({"a": torch.zeros(3)}, tmp_path / "other.pt")
        load_init_weights(build_backbone("resnet18"), tmp_path / "other.pt")


def test_block_patch_reads_equal_single_reads(demo):
    from napari_histoexpr.data.patches import extract_patches, patch_level, resize_patch
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(demo.slide)
    rng = np.random.default_rng(0)
    xy = rng.uniform(-50, 1586, size=(40, 2))  # some near/over the border
    for window_um, px in ((100.0, 64), (60.0, 120)):
        got = extract_patches(pyr, xy, window_um, px, block_tiles=1)
        lvl = patch_level(pyr, window_um, px)
        ds = pyr.downsamples[lvl]
        win = window_um / (pyr.world_mpp * ds)
        w = int(np.ceil(win))
        for k in (0, 7, 23):
            cx, cy = xy[k] / ds
            ref = pyr.read_region(int(np.floor(cy - win / 2)) * ds, int(np.floor(cx - win / 2)) * ds, w, w, lvl)
            assert np.array_equal(got[k], resize_patch(ref, px))


def test_tissue_mask_and_augmentation(demo):
    import pandas as pd

    from napari_histoexpr.data.patches import (
        augment_batch,
        tissue_fraction_at,
        tissue_mask,
    )
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(demo.slide)
    mask, ds = tissue_mask(pyr)
    truth = pd.read_csv(demo.truth / "spots.csv", index_col=0)
    frac = tissue_fraction_at(mask, ds, truth[["x", "y"]].to_numpy(), 50)
    agree = (frac > 0.5) == (truth["frac_background"] < 0.5)
    assert agree.mean() > 0.95
    x = torch.rand(6, 3, 32, 32)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    # flips/rotations keep the pixel multiset when colour jitter is off
    b = augment_batch(x, torch.Generator().manual_seed(1), hed_sigma=0, brightness=0)
    assert torch.allclose(b.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_macenko_moves_stain_towards_target(demo):
    from napari_histoexpr.data.patches import (
        extract_patches,
        macenko_fit,
        macenko_normaliser,
    )
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(demo.slide)
    p = extract_patches(pyr, np.array([[768.0, 768.0]]), 200, 128)[0]
    shifted = np.clip(p.astype(int) * [0.85, 1.0, 0.8] + [0, -10, 0], 0, 255).astype(np.uint8)
    norm = macenko_normaliser(macenko_fit(p))(shifted)
    before = np.abs(shifted.astype(int) - p).mean()
    after = np.abs(norm.astype(int) - p).mean()
    assert after < 0.6 * before


def test_pearson_matches_scipy():
    from scipy.stats import pearsonr

    from napari_histoexpr.metrics import pearson_columns, summarise_pearson

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    b[:, 1] += a[:, 1]
    b[:, 3] = 1.0  # constant: undefined
    r = pearson_columns(a, b)
    for j in range(3):
        assert r[j] == pytest.approx(pearsonr(a[:, j], b[:, j])[0])
    assert np.isnan(r[3])
    s, med = summarise_pearson({"A": {"g1": 0.6, "g2": -0.1}, "B": {"g1": 0.4, "g2": 0.2}}, ["g1", "g2"], ["g1"])
    assert med == {"g1": pytest.approx(0.5), "g2": pytest.approx(0.05)}
    assert s["genes_r_pos"] == 2 and s["genes_r_gt_0_5"] == 0 and s["mean_r_hvg50"] == pytest.approx(0.5)


def test_training_learns_planted_genes_on_unseen_section(trained, cohort, tmp_path):
    meta = json.loads((trained / "model.json").read_text())
    assert meta["genes"] == PLANTED and len(meta["aux_genes"]) == 10
    assert meta["window_um"] == 100 and meta["input_px"] == 64 and meta["format_version"] == 1
    rep_dir = tmp_path / "report"
    assert cli(["evaluate", "--model", str(trained), "--manifest", str(cohort["test"]),
                "--out", str(rep_dir), "--device", "cpu"]) == 0
    rep = json.loads((rep_dir / "report.json").read_text())
    assert set(rep["summary"]) == {"genes", "genes_r_pos", "genes_r_gt_0_5", "mean_r", "median_r",
                                   "mean_r_hvg50", "trust"}
    assert set(rep["summary"]["trust"]) == {"ood_score", "ood_percentile", "uncertainty_error_spearman"}
    sec = rep["sections"]["s2"]
    assert sec["n_spots"] > 250 and set(sec["pearson"]) == set(PLANTED)
    for g in FIRST_MARKERS:  # the strongest planted marker of each class
        assert sec["pearson"][g] > 0.8, (g, sec["pearson"])
    assert min(sec["pearson"].values()) > 0.75
    assert rep["summary"]["mean_r"] > 0.82 and rep["summary"]["genes_r_gt_0_5"] == len(PLANTED)
    assert rep["summary"]["mean_r"] > rep["baselines"]["mean"]["summary"]["mean_r"]
    assert rep["summary"]["mean_r"] > rep["baselines"]["ridge"]["summary"]["mean_r"]
    assert sec["mse"]["model"] < sec["mse"]["mean"]
    for f in ("report.md", "pearson_hist.png", "genes_best_worst.png", "scatter.png"):
        assert (rep_dir / f).stat().st_size > 500


def test_artifact_round_trip_and_corruption(trained, tmp_path, capsys):
    import shutil

    from napari_histoexpr.models.expression import ExpressionModel

    m = ExpressionModel.load(trained, "cpu")
    x = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    y1 = m.predict(x)
    y2 = ExpressionModel.load(trained, "cpu").predict(x)
    assert y1.shape == (3, len(PLANTED)) and np.allclose(y1, y2)

    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    w = bytearray((bad / "model.safetensors").read_bytes())
    w[len(w) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(w))
    with pytest.raises(ModelFileError, match="corrupt"):
        ExpressionModel.load(bad)
    assert cli(["evaluate", "--model", str(bad), "--manifest", "x.csv", "--out", str(tmp_path / "r")]) == 2
    assert "histoexpr: error:" in capsys.readouterr().err

    shutil.copy(trained / "model.safetensors", bad / "model.safetensors")
    meta = json.loads((trained / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(ModelFileError, match="version"):
        ExpressionModel.load(bad)
    (bad / "model.json").write_text(json.dumps(dict(meta, genes=meta["genes"][:3])))
    with pytest.raises(ModelFileError, match="do not fit"):
        ExpressionModel.load(bad)
    for field, value in (("window_um", "text"), ("input_px", None), ("genes", 5), ("backbone", ["x"])):
        (bad / "model.json").write_text(json.dumps(dict(meta, **{field: value})))
        with pytest.raises(ModelFileError, match="missing or malformed field|lacks a needed field|do not fit"):
            ExpressionModel.load(bad)
    (bad / "model.json").write_text("{trunc")
    with pytest.raises(ModelFileError, match="JSON"):
        ExpressionModel.load(bad)
    with pytest.raises(ModelFileError, match="not a model folder"):
        ExpressionModel.load(tmp_path / "nothing")


def test_resume_continues_and_checkpoint_is_plain_tensors(cohort, tmp_path):
    from napari_histoexpr.train.expression_trainer import TrainConfig, train_from_manifest_steps

    def run(epochs, resume):
        cfg = TrainConfig(genes=FIRST_MARKERS, max_aux=0, window_um=100, px=32, epochs=epochs,
                          batch_size=64, device="cpu", baselines=False, patience=99)
        events = []
        return events, drain(train_from_manifest_steps(cohort["train"], tmp_path / "m", cfg, resume=resume),
                             events.append)

    ev1, s1 = run(2, False)
    ck = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    assert int(ck["epoch"]) == 1
    ev2, s2 = run(4, True)
    assert any(e["stage"] == "resume" for e in ev2)
    assert [e["epoch"] for e in ev2 if e["stage"] == "epoch"] == [2, 3]
    assert len(s2["history"]) == 4 and s2["history"][:2] == s1["history"][:2]
    # the augmentation generator's state travels in the checkpoint too
    assert "aug_rng" in torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)


def test_default_fits_every_section_and_saves_the_weight_average(cohort, tmp_path):
    """Without a held-out set: both sections fit, no validation, and the saved model is the EMA of
    the weights (not the last weights); ``--holdout`` / ``--val-section`` restore early stopping."""
    from safetensors.torch import load_file

    from napari_histoexpr.train.expression_trainer import TrainConfig, train_from_manifest_steps

    cfg = TrainConfig(genes=FIRST_MARKERS, max_aux=0, window_um=100, px=32, epochs=3, batch_size=64,
                      device="cpu", baselines=True)
    events = []
    summary = drain(train_from_manifest_steps(cohort["train"], tmp_path / "m", cfg), events.append)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["training"]["sections"] == ["s0", "s1"] and meta["training"]["validation"] is None
    assert summary["best_val_mean_r"] is None and len(summary["history"]) == 3
    assert all("val_mean_r" not in e for e in events if e["stage"] == "epoch")
    ck = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    steps = sum(1 for e in events if e["stage"] == "step")
    assert int(ck["ema"]["n_averaged"]) == steps
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    ema = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    for k, v in saved.items():
        assert torch.equal(v, ema[k].to(v.dtype)), k
    assert any(not torch.equal(v, ck["model"][k]) for k, v in saved.items() if v.is_floating_point())
    base = json.loads((tmp_path / "m" / "baselines.json").read_text())
    assert base["alpha"] in (0.1, 1.0, 10.0, 100.0, 1000.0)  # chosen on s1, refitted on both

    for args, val in ((["--holdout"], "s1"), (["--val-section", "s0"], "s0")):
        out = tmp_path / f"h{val}"
        assert cli(["train", "--manifest", str(cohort["train"]), "--out", str(out), "--gene-list", "ERBB2",
                    "--aux-genes", "0", "--window-um", "100", "--px", "32", "--epochs", "1", "--no-baselines",
                    "--device", "cpu", *args]) == 0
        meta = json.loads((out / "model.json").read_text())
        assert meta["training"]["validation"] == val and "val_mean_r" in meta["metrics"]


def test_train_errors_are_named(cohort, tmp_path, capsys):
    assert cli(["train", "--manifest", str(cohort["train"]), "--out", str(tmp_path / "m"),
                "--gene-list", "ERBB2,NOTAGENE", "--epochs", "1", "--px", "32", "--window-um", "100"]) == 2
    assert "NOTAGENE" in capsys.readouterr().err
    assert cli(["train", "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m")]) == 2
    assert cli(["train", "--manifest", str(cohort["train"]), "--out", str(tmp_path / "m"),
                "--backbone", "vgg99", "--epochs", "1", "--px", "32", "--window-um", "100"]) == 2
