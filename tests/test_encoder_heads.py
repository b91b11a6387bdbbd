"""Heads on a pretrained encoder's frozen features: `histoexpr train --encoder` makes a normal model
folder that evaluate, predict, the spots and the live view load; the feature cache is reused and
resumes after kill -9 with identical output; a moved or changed encoder file is a named error."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import PLANTED, expression_panel_on

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


def test_cnn_heads_run_dense_and_vit_heads_patch_wise(head_models, cohort):
    from napari_histoexpr.infer.grid import Raster
    from napari_histoexpr.infer.region import RegionPredictor
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.models.expression import ExpressionModel

    pyr = open_slide(cohort["demos"][3].slide)
    for key, mode in ((("cnn", "ridge"), "dense"), (("vit", "ridge"), "patch")):
        model = ExpressionModel.load(head_models[key], "cpu")
        rp = RegionPredictor(model, pyr, stride_um=50.0, mode="dense")
        assert rp.mode == mode
        ras = Raster(rp.grid, model.outputs)
        for t, v in rp.run(rp.view_tiles((0, 0, 1024, 1024))):
            ras.put(t, v)
        assert np.isfinite(ras.plane("ERBB2")).sum() > 20
    pyr.close()


def test_whole_slide_predict_with_an_encoder_head(head_models, cohort, tmp_path):
    out = tmp_path / "pred"
    assert _cli(["predict", "--model", head_models[("vit", "ridge")], "--slide", cohort["demos"][2].slide,
                 "--out", out, "--device", "cpu", "--spots", cohort["demos"][2].spots]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "patch" and summary["patches"] > 50


def test_feature_cache_is_reused_and_resumes_after_kill(cohort, encoder_files, tmp_path):
    from napari_histoexpr.data.section_data import prepare_section
    from napari_histoexpr.encoders.feature_cache import CHUNK, spot_features_steps, store_path
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
        "from napari_histoexpr.encoders.feature_cache import spot_features_steps\n"
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
