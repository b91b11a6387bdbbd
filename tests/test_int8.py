"""int8 dense inference on the CPU: agreement with the float maps, the same calibration every time (the
live view and whole-slide predict give the same maps), named errors and fallbacks, the CLI and the
backbones it traces."""

import json

import numpy as np
import pytest
import torch

from napari_histoexpr.errors import HistoExprError
from napari_histoexpr.infer.grid import Raster
from napari_histoexpr.infer.region import RegionPredictor
from napari_histoexpr.io.slides import open_slide
from napari_histoexpr.metrics import pearson_columns
from napari_histoexpr.models.quantize import int8_engine

needs_int8 = pytest.mark.skipif(int8_engine() is None, reason="int8 needs an x86 CPU and torch's quantised kernels")


def _load(trained):
    from napari_histoexpr.models.expression import ExpressionModel

    return ExpressionModel.load(trained, "cpu")


def _view_raster(model, pyr, precision, tile_cells=8):
    """The whole slide as the live view computes it (dense jobs)."""
    rp = RegionPredictor(model, pyr, None, tile_cells=tile_cells, precision=precision)
    ras = Raster(rp.grid, model.genes)
    for t, v in rp.run(rp.view_tiles((0, 0, *pyr.level0_shape))):
        ras.put(t, v)
    return rp, ras


@needs_int8
def test_int8_maps_agree_with_float_and_keep_planted_genes(trained, cohort):
    from test_inference import _truth_class

    unseen = cohort["demos"][3]
    pyr = open_slide(unseen.slide)
    _, flt = _view_raster(_load(trained), pyr, "auto")
    rp, q = _view_raster(_load(trained), pyr, "int8")
    assert rp.precision == "int8" and rp.mode == "dense"
    fin = np.isfinite(flt.data[0]) & np.isfinite(q.data[0])
    assert fin.sum() > 500 and (fin == np.isfinite(flt.data[0])).all()
    r = pearson_columns(flt.data[:, fin].T, q.data[:, fin].T)
    assert np.nanmedian(r) >= 0.98 and np.nanmin(r) >= 0.9, r
    assert not np.allclose(flt.data[:, fin], q.data[:, fin])  # int8 really ran
    rows, cols = np.nonzero(fin)
    cls = _truth_class(unseen, np.stack([(cols + 0.5) * rp.grid.stride, (rows + 0.5) * rp.grid.stride], 1))
    for gene, c in (("ERBB2", 1), ("COL1A1", 2), ("PTPRC", 3)):
        assert np.corrcoef(q.plane(gene)[rows, cols], cls == c)[0, 1] > 0.6, gene


@needs_int8
def test_int8_calibration_is_per_slide_and_the_same_every_time(trained, cohort):
    """Two model objects calibrate alike on a slide, so whole-slide ``predict``'s per-tile regions and
    the live view's job give the same maps (up to the margin rule's seams); another slide gets its own
    calibration."""
    from napari_histoexpr.models.quantize import calibration_windows

    pyr = open_slide(cohort["demos"][3].slide)
    a, b = calibration_windows(pyr, 0.64), calibration_windows(pyr, 0.64)
    assert len(a) == 6 and all(x.shape == (320, 320, 3) and (x == y).all() for x, y in zip(a, b))
    m1 = _load(trained)
    rp = RegionPredictor(m1, pyr, None, tile_cells=4, precision="int8")
    small = Raster(rp.grid, m1.genes)
    for t in rp.view_tiles((0, 0, *pyr.level0_shape)):
        ((_, v),) = rp.predict_band([t])
        small.put(t, v)
    _, big = _view_raster(_load(trained), pyr, "int8", tile_cells=32)
    fin = np.isfinite(small.data[0]) & np.isfinite(big.data[0])
    diff = np.abs(small.data[:, fin] - big.data[:, fin])
    spread = np.nanstd(big.data[:, fin])
    assert fin.sum() > 100 and np.nanmax(diff) < 0.25 * spread and np.nanmean(diff) < 0.02 * spread
    # one model, two slides: each its own int8 body, the first kept when the second comes
    other = open_slide(cohort["demos"][2].slide)
    body1 = m1.branches_for(pyr)[0].body
    body2 = m1.branches_for(other)[0].body
    assert body1 is not body2 and m1.branches_for(pyr)[0].body is body1
    m1.set_precision("auto")  # back to float: the plain body
    assert not hasattr(m1.branches_for(pyr)[0].body, "quantized")


def test_precision_errors_and_fallbacks(trained, cohort):
    from napari_histoexpr.models.quantize import check_precision

    cpu = torch.device("cpu")
    with pytest.raises(HistoExprError, match="unknown precision 'fp16'"):
        check_precision("fp16", cpu)
    with pytest.raises(HistoExprError, match="CPU only"):
        check_precision("int8", torch.device("cuda"))
    with pytest.raises(HistoExprError, match="dense-mode option"):
        check_precision("int8", cpu, "patch")
    model = _load(trained)
    pyr = open_slide(cohort["demos"][3].slide)
    rp = RegionPredictor(model, pyr, None, tile_cells=8, mode="patch", precision="int8")
    assert rp.mode == "patch" and rp.precision == "auto" and rp.requested_precision == "int8"
    with pytest.raises(HistoExprError, match="unknown precision"):
        RegionPredictor(model, pyr, None, tile_cells=8, precision="fp16")


@needs_int8
def test_cli_predict_int8(trained, cohort, tmp_path, capsys, monkeypatch):
    from napari_histoexpr.cli import main as cli
    from napari_histoexpr.models import quantize

    calibrations = []
    real = quantize.quantize_body
    monkeypatch.setattr(quantize, "quantize_body", lambda body, windows: calibrations.append(1) or real(body, windows))
    demo = cohort["demos"][3]
    base = ["predict", "--model", str(trained), "--slide", str(demo.slide), "--device", "cpu"]
    assert cli(base + ["--out", str(tmp_path / "q"), "--spots", str(demo.spots), "--precision", "int8"]) == 0
    assert len(calibrations) == 1  # the slide's tiles and its spots: one model, calibrated once
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    spots = json.loads((tmp_path / "q" / "spots_report.json").read_text())
    assert summary["precision"] == "int8" and summary["mode"] == "dense"
    assert spots["precision"] == "int8" and spots["summary"]["mean_r"] > 0.75
    capsys.readouterr()
    # an int8 output is not resumed in float, and int8 is refused in patch mode, by name
    assert cli(base + ["--out", str(tmp_path / "q")]) == 2
    assert "precision" in capsys.readouterr().err
    assert cli(base + ["--out", str(tmp_path / "p"), "--mode", "patch", "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "dense-mode option" in err and err.count("\n") == 1 and not (tmp_path / "p").exists()
    # evaluate: the spots of a held-out section in int8
    ev = ["evaluate", "--model", str(trained), "--manifest", str(cohort["unseen"]), "--device", "cpu",
          "--no-baselines", "--precision", "int8"]
    assert cli(ev + ["--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["precision"] == "int8" and rep["mode"] == "dense" and rep["summary"]["mean_r"] > 0.75
    capsys.readouterr()
    assert cli(ev + ["--out", str(tmp_path / "rep_p"), "--mode", "patch"]) == 2
    assert "dense-mode option" in capsys.readouterr().err


@needs_int8
def test_calibration_does_not_load_torchs_compiler():
    """Quantising a body records no stack trace per graph node: symbolising them imported torch's
    compiler stack (~1200 modules, seconds holding the GIL: the viewer froze in bursts). In a fresh
    process, so that nothing else imported it first; FX's setting is restored afterwards."""
    import subprocess
    import sys

    code = """
import sys, numpy as np, torch, torch.fx.config as cfg
from napari_histoexpr.models.backbones import build_backbone
from napari_histoexpr.models.quantize import NormalisedBody, quantize_body
from napari_histoexpr.models.runtime import for_inference
body = NormalisedBody(for_inference(build_backbone("resnet18"), torch.device("cpu")), torch.zeros(3), torch.ones(3))
before = "torch._dynamo" in sys.modules
quantize_body(body, [np.zeros((64, 64, 3), np.uint8)])
print(before, "torch._dynamo" in sys.modules, "torch._inductor" in sys.modules, cfg.do_not_emit_stack_traces)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False", "False"], out.stdout


@needs_int8
def test_a_dropped_int8_body_leaves_nothing_behind():
    """Each calibration's traced, observed and converted graphs go with the int8 body (torch caches
    every module FX quantisation asks for its device; a session that swapped models 9 times kept
    ~100 MB per swap)."""
    import gc
    import weakref

    from napari_histoexpr.models.backbones import build_backbone
    from napari_histoexpr.models.quantize import NormalisedBody, quantize_body
    from napari_histoexpr.models.runtime import for_inference

    def graphs():
        gc.collect()
        return sum(isinstance(o, torch.fx.GraphModule) for o in gc.get_objects())

    body = NormalisedBody(for_inference(build_backbone("resnet18"), torch.device("cpu")), torch.zeros(3), torch.ones(3))
    before = graphs()
    refs = [weakref.ref(quantize_body(body, [np.zeros((64, 64, 3), np.uint8)])) for _ in range(2)]
    assert graphs() == before and all(r() is None for r in refs)


@needs_int8
@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0"])
def test_other_backbones_quantise(name):
    """DenseNet (concatenations) and EfficientNet (squeeze-excite products) trace and run in int8."""
    from napari_histoexpr.models.backbones import build_backbone
    from napari_histoexpr.models.quantize import NormalisedBody, quantize_body
    from napari_histoexpr.models.runtime import for_inference, to_tensor

    torch.manual_seed(0)
    body = NormalisedBody(for_inference(build_backbone(name), torch.device("cpu")), torch.full((3,), 0.5),
                          torch.full((3,), 0.25))
    imgs = [np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8) for i in range(2)]
    q = quantize_body(body, imgs)
    x = to_tensor(imgs[0][None], channels_last=True)
    with torch.inference_mode():
        a, b = body(x), q(x)
    assert a.shape == b.shape and torch.isfinite(b).all()


def test_view_precision_default_follows_the_cpu(monkeypatch):
    from napari_histoexpr.models import catalog

    monkeypatch.setattr(catalog, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(catalog.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("HISTOEXPR_CPU_BF16", raising=False)
    assert catalog.view_precision_default() == "int8"
    monkeypatch.setattr(catalog, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert catalog.view_precision_default() == "auto"  # bf16 autocast is as fast, and float
    monkeypatch.setattr(catalog, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("HISTOEXPR_CPU_BF16", "1")
    assert catalog.view_precision_default() == "auto"
    monkeypatch.setattr(catalog.platform, "machine", lambda: "arm64")
    monkeypatch.setenv("HISTOEXPR_CPU_BF16", "0")
    assert catalog.view_precision_default() == "auto"


def test_calibration_windows_of_a_slide_without_tissue():
    from napari_histoexpr.io.slides.pyramid import pyramid_from_array
    from napari_histoexpr.models.quantize import calibration_windows

    pyr = pyramid_from_array(np.full((600, 800, 3), 245, np.uint8), mpp=1.0)
    (w,) = calibration_windows(pyr, 0.5)  # no tissue: one window at the slide's middle
    assert w.shape == (320, 320, 3) and (w[100:220, 100:220] == 245).all()
