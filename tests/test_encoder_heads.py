"""Heads on a pretrained encoder's frozen features: `histoexpr train --encoder` makes a normal model
folder that evaluate, predict, the spots and the live view load; the feature cache is reused and
resumes after kill -9 with identical output; a moved or changed encoder file is a named error."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import PLANTED, expression_panel_on, open_section

GENES = ["ERBB2", "KRT8", "COL1A1", "COL1A2", "PTPRC", "CD74"]


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory):
    """Random-initialised encoders in two published layouts: a torchvision ResNet-18 (Lightning
    checkpoint with ``model.`` prefixes) and a small timm ViT (safetensors)."""
    from safetensors.torch import save_file

    from napari_histoexpr.models.backbones import build_backbone
    from napari_histoexpr.models.vit import ViT, ViTSpec

    d = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    torch.save({"state_dict": {f"model.{k}": v for k, v in build_backbone("resnet18").state_dict().items()}},
               d / "resnet18.ckpt")
    vit = ViT(ViTSpec(dim=192, depth=3, heads=3, patch=16, img=224, hidden=768))
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(d / "vit_s.safetensors"))
    return {"cnn": d / "resnet18.ckpt", "vit": d / "vit_s.safetensors"}


def _cli(args):
    from napari_histoexpr.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def head_models(cohort, encoder_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    models = {}
    for name, head in (("cnn", "ridge"), ("vit", "ridge"), ("vit", "mlp")):
        m = out / f"{name}-{head}"
        assert _cli(["train", "--manifest", cohort["train"], "--out", m, "--encoder", encoder_files[name],
                     "--head", head, "--gene-list", ",".join(GENES), "--device", "cpu",
                     "--features-cache", out / "cache"]) == 0
        models[(name, head)] = m
    return models


def test_heads_predict_held_out_sections_through_evaluate(head_models, cohort, tmp_path):
    for (name, head), m in head_models.items():
        meta = json.loads((m / "model.json").read_text())
        assert meta["encoder"]["head"] == head and meta["encoder"]["sha256"] and meta["genes"] == GENES
        training = json.loads((m / "training.json").read_text())
        assert training["spots"] > 400 and training["head_fit_s"] >= 0
        rep = tmp_path / f"rep-{name}-{head}"
        assert _cli(["evaluate", "--model", m, "--manifest", cohort["test"], "--out", rep, "--device", "cpu",
                     "--no-baselines"]) == 0
        r = json.loads((rep / "report.json").read_text())["sections"]["s2"]["pearson"]
        assert min(r[g] for g in GENES) > 0.5, (name, head, r)
        if head == "ridge":
            assert meta["metrics"]["alpha"] in [float(a) for a in meta["metrics"]["inner_cv_mean_r_by_alpha"]]


def _predicted(rp, box):
    """A RegionPredictor's values over a level-0 ``box`` as a Raster."""
    from napari_histoexpr.infer.grid import Raster

    ras = Raster(rp.grid, rp.model.outputs)
    for t, v in rp.run(rp.view_tiles(box)):
        ras.put(t, v)
    return ras


def test_cnn_heads_run_dense_and_vit_heads_patch_wise(head_models, cohort):
    from napari_histoexpr.infer.region import RegionPredictor
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.models.expression import ExpressionModel

    pyr = open_slide(cohort["demos"][3].slide)
    for key, mode in ((("cnn", "ridge"), "dense"), (("vit", "ridge"), "patch")):
        model = ExpressionModel.load(head_models[key], "cpu")
        rp = RegionPredictor(model, pyr, stride_um=50.0, mode="dense")
        assert rp.mode == mode
        assert np.isfinite(_predicted(rp, (0, 0, 1024, 1024)).plane("ERBB2")).sum() > 20
    pyr.close()


def test_whole_slide_predict_with_an_encoder_head(head_models, cohort, tmp_path):
    out = tmp_path / "pred"
    assert _cli(["predict", "--model", head_models[("vit", "ridge")], "--slide", cohort["demos"][2].slide,
                 "--out", out, "--device", "cpu", "--spots", cohort["demos"][2].spots]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "patch" and summary["patches"] > 50


def test_feature_cache_is_reused_and_resumes_after_kill(cohort, encoder_files, tmp_path):
    from napari_histoexpr.data.section_data import prepare_section
    from napari_histoexpr.infer.feature_cache import CHUNK, spot_features_steps, store_path
    from napari_histoexpr.io.sections import load_section
    from napari_histoexpr.models.encoder_files import load_encoder
    from napari_histoexpr.steps import drain

    enc = load_encoder(encoder_files["vit"])
    pyr, ad = load_section(cohort["sections"][0])
    sec = prepare_section("s0", pyr, ad, enc.kind.window_um, enc.kind.px)
    assert len(sec) > 2 * CHUNK
    np.save(tmp_path / "patches.npy", sec.patches)
    np.save(tmp_path / "xy.npy", sec.xy)
    # a run killed (SIGKILL, no cleanup) after its second chunk
    script = (
        "import os, signal, numpy as np\n"
        "from napari_histoexpr.infer.feature_cache import spot_features_steps\n"
        "from napari_histoexpr.models.encoder_files import load_encoder\n"
        f"enc = load_encoder({str(encoder_files['vit'])!r})\n"
        f"p, xy = np.load({str(tmp_path / 'patches.npy')!r}), np.load({str(tmp_path / 'xy.npy')!r})\n"
        f"for i, ev in enumerate(spot_features_steps(enc, 's0', p, xy, {str(tmp_path / 'cache')!r}, 'cpu')):\n"
        "    if i == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    import zarr

    g = zarr.open_group(str(store_path(tmp_path / "cache", enc, "s0", sec.xy)), mode="r")
    assert np.asarray(g["done"][:]).tolist()[:2] == [1, 1] and not np.asarray(g["done"][:]).all()
    events = []
    gen = spot_features_steps(enc, "s0", sec.patches, sec.xy, tmp_path / "cache", torch.device("cpu"))
    resumed = drain(gen, events.append)
    assert len([e for e in events if e.get("total")]) == g["done"].shape[0] - 2  # only the missing chunks
    fresh = drain(spot_features_steps(enc, "s0", sec.patches, sec.xy, tmp_path / "other", torch.device("cpu")))
    np.testing.assert_array_equal(resumed, fresh)
    again = []
    np.testing.assert_array_equal(drain(spot_features_steps(enc, "s0", sec.patches, sec.xy, tmp_path / "cache",
                                                            torch.device("cpu")), again.append), fresh)
    assert "from the cache" in again[-1]["msg"]
    pyr.close()


def test_moved_or_changed_encoder_is_named_and_relink_fixes_it(head_models, encoder_files, cohort, tmp_path, capsys):
    import shutil

    from napari_histoexpr.errors import ModelFileError
    from napari_histoexpr.models.expression import ExpressionModel

    model = tmp_path / "model"
    shutil.copytree(head_models[("vit", "ridge")], model)
    moved = tmp_path / "elsewhere" / "vit.safetensors"
    moved.parent.mkdir()
    meta = json.loads((model / "model.json").read_text())
    meta["encoder"]["path"] = str(tmp_path / "gone.safetensors")
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="histoexpr relink --model"):
        ExpressionModel.load(model, "cpu")
    capsys.readouterr()
    assert _cli(["predict", "--model", model, "--slide", cohort["demos"][2].slide, "--out", tmp_path / "p",
                 "--device", "cpu"]) == 2
    assert "is not there any more" in capsys.readouterr().err
    shutil.copy(encoder_files["vit"], moved)
    assert _cli(["relink", "--model", model, "--encoder", moved]) == 0
    assert ExpressionModel.load(model, "cpu").genes == GENES
    changed = tmp_path / "changed.safetensors"
    blob = bytearray(moved.read_bytes())
    blob[-1] ^= 1
    changed.write_bytes(bytes(blob))
    assert _cli(["relink", "--model", model, "--encoder", changed]) == 2
    assert "not the encoder this head was fitted on" in capsys.readouterr().err
    moved.write_bytes(bytes(blob))  # the file itself changed where the model points
    with pytest.raises(ModelFileError, match="changed since the head was fitted"):
        ExpressionModel.load(model, "cpu")


def test_expression_panel_loads_an_encoder_head(make_napari_viewer, qtbot, cohort, head_models):
    panel = expression_panel_on(make_napari_viewer(show=True), qtbot, cohort["demos"][3], device="cpu",
                                stride_um=50.0)
    panel.load_model(head_models[("vit", "ridge")], genes=["ERBB2"])
    qtbot.waitUntil(lambda: panel.predictor is not None and not panel.busy, timeout=120_000)
    assert panel.predictor.mode == "patch" and panel.last_request_tiles
    assert np.isfinite(panel.gene_layer("ERBB2").data).any()
    assert set(GENES) <= set(PLANTED)


def test_train_panel_fits_a_head_on_a_chosen_encoder(make_napari_viewer, qtbot, cohort, encoder_files, tmp_path):
    from napari_histoexpr.widgets.train_expression import SOURCES, TrainExpressionWidget

    viewer = make_napari_viewer()
    panel = TrainExpressionWidget(viewer)
    viewer.window.add_dock_widget(panel)
    panel.configure(source=SOURCES[1], manifest=cohort["train"], genes=",".join(GENES), device="cpu",
                    encoder=encoder_files["cnn"], head="mlp", out=tmp_path / "m")
    worker = panel.start()
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["encoder"]["name"] == "resnet18-ssl" and meta["encoder"]["head"] == "mlp"
    assert panel.summary["head"] == "mlp" and "mlp head on resnet18-ssl fitted in" in panel.status
    assert panel.actions() == {"Train": True, "Cancel": False}
    panel.configure(encoder=encoder_files["vit"], head="ridge", subspot_tokens=True, finetune_epochs=2)
    hc = panel.head_config()
    assert hc.encoder == str(encoder_files["vit"]) and hc.subspot and hc.finetune_epochs == 2


def test_segmenter_on_pretrained_encoder_features(cohort, encoder_files, head_models, tmp_path):
    """`segment train --encoder` takes an encoder file (ViT, patch-wise maps) or a head folder on one
    (ResNet-18, dense maps): only the class head is saved, the unseen section is segmented with
    Dice well above chance, and a moved encoder is named."""
    import shutil

    from napari_histoexpr.errors import ModelFileError
    from napari_histoexpr.models.segmenter import Segmenter

    vit = shutil.copy(encoder_files["vit"], tmp_path / "vit.safetensors")
    for name, enc in (("vit", vit), ("cnn", head_models[("cnn", "ridge")])):
        m = tmp_path / f"seg-{name}"
        assert _cli(["segment", "train", "--manifest", cohort["train"], "--classes", "genes:ERBB2,COL1A1,PTPRC",
                     "--out", m, "--encoder", enc, "--device", "cpu", "--features-cache", tmp_path / "cache"]) == 0
        meta = json.loads((m / "model.json").read_text())
        assert meta["encoder"]["name"] in ("vit", "resnet18-ssl") and meta["features"]["source"] == "pretrained"
        assert (m / "model.safetensors").stat().st_size < 100_000  # the class head only
        seg = Segmenter.load(m, "cpu")
        (branch,) = seg.dense_branches()
        assert branch.fully_convolutional is (name == "cnn")
        assert _cli(["segment", "evaluate", "--model", m, "--manifest", cohort["unseen"], "--out", tmp_path / name,
                     "--device", "cpu"]) == 0
        rep = json.loads((tmp_path / name / "report.json").read_text())
        assert rep["summary"]["mean_dice"] > 0.6, (name, rep["summary"])
    moved = shutil.move(vit, tmp_path / "moved.safetensors")
    with pytest.raises(ModelFileError, match="histoexpr relink"):
        Segmenter.load(tmp_path / "seg-vit", "cpu")
    assert _cli(["relink", "--model", tmp_path / "seg-vit", "--encoder", moved]) == 0
    assert Segmenter.load(tmp_path / "seg-vit", "cpu").classes[0] == "background"


def test_drawn_region_retrains_the_class_head_from_cached_features(cohort, encoder_files, tmp_path):
    """The convpaint loop: after the first training has cached the encoder's features, a drawn region
    relabels spots and the head refits without computing a feature; fine-tuning a pretrained encoder
    is refused by name."""
    from napari_histoexpr.errors import TrainingError
    from napari_histoexpr.io.manifest import read_manifest
    from napari_histoexpr.io.spots import read_spots
    from napari_histoexpr.segment.classes import class_spec
    from napari_histoexpr.steps import drain
    from napari_histoexpr.train.segmenter_trainer import SegConfig, segmenter_steps

    secs = read_manifest(cohort["train"])
    cfg = SegConfig(classes=class_spec("genes", genes=["ERBB2", "COL1A1"]), encoder=str(encoder_files["vit"]),
                    device="cpu", features_cache=str(tmp_path / "cache"))
    first = []
    drain(segmenter_steps(secs, tmp_path / "a", cfg), first.append)
    assert any(e.get("stage") == "features" and "done" in e for e in first)
    xy = np.asarray(read_spots(cohort["demos"][0].spots).obsm["spatial"], float)
    lo, hi = np.percentile(xy, 20, 0), np.percentile(xy, 45, 0)
    square = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    again = []
    summary = drain(segmenter_steps(secs, tmp_path / "b", cfg, regions={"s0": [(square, "drawn")]}), again.append)
    assert not any(e.get("stage") == "features" and "done" in e for e in again)  # every feature from the cache
    assert "drawn" in summary["classes"] and summary["features"]["head_fit_s"] > 0
    with pytest.raises(TrainingError, match="pretrained encoder"):
        drain(segmenter_steps(secs, tmp_path / "c", SegConfig(classes=cfg.classes, encoder=cfg.encoder, finetune=True,
                                                              device="cpu")))


def test_segmenter_panel_trains_on_a_pretrained_encoder(make_napari_viewer, qtbot, cohort, encoder_files, tmp_path):
    """The Segmenter panel's "pretrained encoder" field: the open section's classes, a class head on
    the encoder's cached features, the segmenter loaded and the slide segmented."""
    from napari_histoexpr.widgets.segmenter_panel import SegmenterPanel

    viewer = make_napari_viewer()
    spots = open_section(viewer, qtbot, cohort["demos"][0])  # noqa: F841 (kept while the viewer is used)
    panel = SegmenterPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.configure(device="cpu", genes="ERBB2,COL1A1", pretrained=encoder_files["cnn"], out=tmp_path / "seg")
    w = panel.train()
    with qtbot.waitSignal(w.finished, timeout=180_000):
        pass
    assert panel.model is not None and panel.model.meta["encoder"]["name"] == "resnet18-ssl"
    w = panel.segment(view=False)
    with qtbot.waitSignal(w.finished, timeout=120_000):
        pass
    seg = [ly for ly in viewer.layers if ly.name == "segmentation"][0]
    assert len(np.unique(seg.data)) >= 3  # background and both gene classes


def test_cohort_features_with_a_pretrained_encoder(encoder_files, tmp_path):
    """`histoexpr features --encoder FILE` tiles every slide at the encoder's own window and size and
    stores its embeddings (zarr per slide); on a dask cluster the same features come out."""
    from napari_histoexpr.datasets import make_cohort
    from napari_histoexpr.slide_level.features import load_features

    csv = make_cohort(tmp_path / "cohort", n_slides=2, size=896, seed=5)
    args = ["features", "--cohort", csv, "--encoder", encoder_files["vit"], "--device", "cpu"]
    assert _cli([*args, "--out", tmp_path / "local"]) == 0
    assert _cli([*args, "--out", tmp_path / "dask", "--cluster"]) == 0
    for zarr_dir in sorted((tmp_path / "local").glob("*.zarr")):
        a, ca, attrs = load_features(zarr_dir)
        b, cb, _ = load_features(tmp_path / "dask" / zarr_dir.name)
        assert attrs["encoder"].startswith("pretrained encoder vit (vit_s.safetensors, SHA-256 ")
        assert attrs["tile_um"] == 112.0 and attrs["px"] == 224 and a.shape == (len(ca), 192) and len(a) > 10
        assert np.array_equal(ca, cb) and np.allclose(a, b, atol=1e-4)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    assert _cli(["features", "--cohort", csv, "--encoder", bad, "--out", tmp_path / "x", "--device", "cpu"]) == 2


def test_subspot_heads_on_patch_tokens(cohort, encoder_files, tmp_path):
    """`train --encoder VIT --subspot-tokens`: the head is fitted on the mean of the patch tokens inside
    each spot; spots are predicted that way (held-out r), maps have one value per token, read from
    tiles fixed on the slide, and equal the head applied to the tile's own tokens."""
    import torch

    from napari_histoexpr.infer.region import RegionPredictor
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.models.expression import ExpressionModel
    from napari_histoexpr.models.runtime import to_tensor

    m = tmp_path / "vit-tokens"
    assert _cli(["train", "--manifest", cohort["train"], "--out", m, "--encoder", encoder_files["vit"],
                 "--subspot-tokens", "--gene-list", ",".join(GENES), "--device", "cpu",
                 "--features-cache", tmp_path / "cache"]) == 0
    meta = json.loads((m / "model.json").read_text())
    assert meta["subspot"]["cells"] == 14 and meta["subspot"]["cell_um"] == pytest.approx(8.0)
    assert meta["encoder"]["tokens"] == "patch tokens" and meta["encoder"]["dim"] == 192
    assert _cli(["evaluate", "--model", m, "--manifest", cohort["test"], "--out", tmp_path / "rep", "--device", "cpu",
                 "--no-baselines"]) == 0
    r = json.loads((tmp_path / "rep" / "report.json").read_text())["sections"]["s2"]["pearson"]
    assert min(r[g] for g in GENES) > 0.5, r

    model = ExpressionModel.load(m, "cpu")
    assert model.token_tiles and model.default_step_um == pytest.approx(8.0)
    pyr = open_slide(cohort["demos"][2].slide)
    tile = model.window_um / pyr.world_mpp  # 112 level-0 px at 1 µm/px
    # the 14 x 14 token centres of the tile at (3, 4), shuffled
    i, j = np.meshgrid(np.arange(14), np.arange(14), indexing="ij")
    centres = np.stack([4 * tile + (j.ravel() + 0.5) * 8.0, 3 * tile + (i.ravel() + 0.5) * 8.0], 1)
    order = np.random.default_rng(0).permutation(len(centres))
    got = model.predict_centres(pyr, centres[order])
    assert len(model.read_centres(pyr, centres[order])[0]) == 1  # one tile read for all 196 cells
    patch = model.read_patches(pyr, np.array([[4.5 * tile, 3.5 * tile]]))
    with torch.no_grad():
        tok = model.net.cell_map(to_tensor(patch))[0].permute(1, 2, 0)  # (14, 14, C)
        want = model.net.head(tok).numpy().reshape(196, -1) * model.std + model.mean
    # equal up to the bf16 autocast maps use where the CPU has it
    np.testing.assert_allclose(got, want[order], atol=0.02 * float(np.ptp(want)))
    assert min(np.corrcoef(got[:, k], want[order, k])[0, 1] for k in range(len(GENES))) > 0.99
    assert len(np.unique(np.round(got[:, 0], 4))) > 50  # one value per token, not per tile
    rp = RegionPredictor(model, pyr, mode="dense")
    assert rp.mode == "patch" and rp.stride_um == pytest.approx(8.0) and rp.grid.tile_cells == 14  # one tile
    assert np.isfinite(_predicted(rp, (0, 0, 512, 512)).plane("ERBB2")).sum() > 1000
    pyr.close()


def test_subspot_head_on_a_cnn_encoder_runs_densely(cohort, encoder_files, tmp_path):
    """With a CNN encoder, `--subspot-tokens` uses its last feature map (32 px cells) and maps run in
    dense mode, one value per cell, agreeing with patch mode."""
    from napari_histoexpr.infer.region import RegionPredictor
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.models.expression import ExpressionModel

    m = tmp_path / "cnn-cells"
    assert _cli(["train", "--manifest", cohort["train"], "--out", m, "--encoder", encoder_files["cnn"],
                 "--subspot-tokens", "--gene-list", ",".join(GENES), "--device", "cpu"]) == 0
    model = ExpressionModel.load(m, "cpu")
    assert model.subspot["cells"] == 7 and model.subspot["cells_from"] == "feature map" and not model.token_tiles
    pyr = open_slide(cohort["demos"][2].slide)
    planes = {}
    for mode in ("dense", "patch"):
        rp = RegionPredictor(model, pyr, mode=mode)
        assert rp.mode == mode and rp.stride_um == pytest.approx(16.0)
        planes[mode] = _predicted(rp, (600, 600, 1000, 1000)).plane("ERBB2")
    both = np.isfinite(planes["dense"]) & np.isfinite(planes["patch"])
    assert both.sum() > 100 and np.corrcoef(planes["dense"][both], planes["patch"][both])[0, 1] > 0.95
    pyr.close()


def test_finetuning_writes_the_encoder_into_the_model_folder(cohort, encoder_files, tmp_path):
    """`train --encoder FILE --finetune-epochs 2`: the encoder is trained with the ridge head, the best
    held-out epoch (frozen start included) kept; the fine-tuned encoder is written into the folder in
    its published layout and named relative to it, so the whole folder can move; predictions follow
    the fine-tuned weights, not the original file's."""
    import shutil

    from napari_histoexpr.models.encoder_files import load_encoder
    from napari_histoexpr.models.expression import ExpressionModel

    m = tmp_path / "ft"
    assert _cli(["train", "--manifest", cohort["train"], "--out", m, "--encoder", encoder_files["vit"],
                 "--gene-list", ",".join(GENES), "--device", "cpu", "--finetune-epochs", "2",
                 "--features-cache", tmp_path / "cache"]) == 0
    meta = json.loads((m / "model.json").read_text())
    enc = meta["encoder"]
    assert enc["path"] == "encoder.safetensors" and enc["finetuned_from"]["name"] == "vit"
    info = meta["metrics"]
    assert info["finetune_best_epoch"] in (0, 1, 2) and info["held_out_spots"] > 200
    assert load_encoder(m / "encoder.safetensors").kind.layout == "timm-vit"  # its own published layout
    moved = shutil.move(m, tmp_path / "elsewhere")
    assert _cli(["evaluate", "--model", moved, "--manifest", cohort["test"], "--out", tmp_path / "rep",
                 "--device", "cpu", "--no-baselines"]) == 0
    r = json.loads((tmp_path / "rep" / "report.json").read_text())["sections"]["s2"]["pearson"]
    assert min(r[g] for g in GENES) > 0.5, r
    # the folder holds the best epoch's weights: they give the held-out score it was chosen by
    model = ExpressionModel.load(moved, "cpu")
    held = prepare_held_out(cohort, model)
    pred = (model.predict(held.patches) - model.mean) / model.std
    truth = held.select(model.genes)
    r_held = np.mean([np.corrcoef(pred[:, k], truth[:, k])[0, 1] for k in range(len(GENES))])
    assert r_held == pytest.approx(info["finetune_held_out_mean_r"], abs=0.01)
    tuned = model.net.backbone.state_dict()["blocks.0.attn.qkv.weight"]
    orig = load_encoder(encoder_files["vit"]).net.state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.equal(tuned, orig) is (info["finetune_best_epoch"] == 0)


def prepare_held_out(cohort, model):
    """The training manifest's last section (fine-tuning's held-out one) cut at the model's window."""
    from napari_histoexpr.data.section_data import prepare_section
    from napari_histoexpr.io.manifest import read_manifest
    from napari_histoexpr.io.sections import load_section

    sec = read_manifest(cohort["train"])[-1]
    pyr, ad = load_section(sec)
    held = prepare_section(sec.section, pyr, ad, model.window_um, model.px)
    pyr.close()
    return held


def test_finetuning_is_refused_where_it_has_no_start():
    from napari_histoexpr.encoders.head_training import HeadConfig, train_head_steps
    from napari_histoexpr.errors import TrainingError

    for cfg in (HeadConfig(encoder="x", head="mlp", finetune_epochs=1),
                HeadConfig(encoder="x", subspot=True, finetune_epochs=1)):
        with pytest.raises(TrainingError, match="fine-tuning starts from the ridge head"):
            next(train_head_steps("m.csv", "out", cfg))
