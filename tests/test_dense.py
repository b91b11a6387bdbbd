"""Dense (fully-convolutional) inference: exact pooling geometry, agreement with patch mode, no seams
between tiles, spots, whole-slide output and the CLI's --mode/--device."""

import json

import numpy as np
import pytest
import torch

from napari_histoexpr.infer.dense import STRIDE, DenseBranch, box_means, dense_at_centres, dense_cells, dense_step_um
from napari_histoexpr.infer.region import Raster, RegionPredictor
from napari_histoexpr.io.slides import open_slide
from napari_histoexpr.metrics import pearson_columns


@pytest.fixture(scope="module")
def model(trained):
    from napari_histoexpr.models.expression import ExpressionModel

    return ExpressionModel.load(trained, "cpu")


@pytest.fixture(scope="module")
def unseen(cohort):
    return cohort["demos"][3]


def _raster(model, pyr, mode, stride_um=None, tile_cells=8):
    rp = RegionPredictor(model, pyr, stride_um, tile_cells=tile_cells, mode=mode)
    ras = Raster(rp.grid, model.genes)
    for t, v in rp.run(rp.view_tiles((0, 0, *pyr.level0_shape))):
        ras.put(t, v)
    return rp, ras


def test_box_means_equal_brute_force_fractional_pooling():
    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(3, 9, 11)).astype(np.float32))
    # aligned boxes: exactly avg_pool2d
    ref = torch.nn.functional.avg_pool2d(f[None], 2, 1)[0]
    got = box_means(f, np.array([0.0, 3.0]), np.array([0.0, 5.0]), 2.0)
    assert torch.allclose(got[0], ref[:, 0, 0], atol=1e-5) and torch.allclose(got[1], ref[:, 3, 5], atol=1e-5)
    # a fractional box: area-weighted mean over a fine upsampling of the piecewise-constant map
    up = np.kron(f.numpy(), np.ones((10, 10)))  # 0.1-cell sub-pixels
    y0, x0, size = 1.3, 2.6, 3.5
    brute = up[:, int(y0 * 10):int((y0 + size) * 10), int(x0 * 10):int((x0 + size) * 10)].mean((1, 2))
    assert np.allclose(box_means(f, np.array([y0]), np.array([x0]), size)[0].numpy(), brute, atol=1e-5)


def test_dense_step_is_whole_feature_cells():
    b224 = DenseBranch(None, None, px=224, window_um=150.0)  # 21.43 µm feature cells, 7 per window
    assert b224.window_cells == 7
    assert dense_step_um([b224], 75.0) == pytest.approx(3 * 150 / 7)  # 3.5 cells -> the finer 3
    assert dense_step_um([b224], 10.0) == pytest.approx(150 / 7)
    two = [DenseBranch(None, None, 64, 50.0), DenseBranch(None, None, 64, 100.0)]  # 25 and 50 µm cells
    assert dense_step_um(two, 25.0) == pytest.approx(50.0)  # a multiple of both


def test_dense_pooling_is_exact_on_a_linear_body(unseen):
    """With a body that is a plain 32x32 average (no receptive field beyond its cell), dense
    pooling must equal the patch mean exactly: the geometry (origin, step, window) is right."""
    pyr = open_slide(unseen.slide)
    body = lambda x: torch.nn.functional.avg_pool2d(x, STRIDE)  # noqa: E731
    head = lambda f: f  # noqa: E731
    br = DenseBranch(body, head, px=64, window_um=100.0)
    step = dense_step_um([br], 50.0) / pyr.world_mpp
    x0, y0 = 700.5, 650.5
    got = dense_cells(pyr, [br], x0, y0, 3, 4, step, torch.device("cpu"))
    from napari_histoexpr.data.patches import extract_patches

    centres = np.array([[x0 + j * step, y0 + i * step] for i in range(3) for j in range(4)])
    patches = extract_patches(pyr, centres, 100.0, 64).astype(np.float32) / 255
    want = patches.mean((1, 2)).reshape(3, 4, 3)
    assert np.abs(got - want).max() < 0.02  # resampling differences only (bilinear of a region vs a patch)
    spots = dense_at_centres(pyr, [br], centres + 7.3, torch.device("cpu"))  # off-grid centres
    want2 = extract_patches(pyr, centres + 7.3, 100.0, 64).astype(np.float32).mean((1, 2)) / 255
    assert np.abs(spots - want2).max() < 0.02


def test_dense_agrees_with_patch_and_keeps_planted_genes(model, unseen):
    from test_inference import _truth_class

    pyr = open_slide(unseen.slide)
    _, dense = _raster(model, pyr, "dense")
    rp, patch = _raster(model, pyr, "patch", stride_um=model.dense_step_um(model.window_um / 2))
    assert dense.data.shape == patch.data.shape
    fin = np.isfinite(dense.data[0]) & np.isfinite(patch.data[0])
    r = pearson_columns(dense.data[:, fin].T, patch.data[:, fin].T)
    # the demo model's 100 µm window spans only 2 x 2 feature cells, so a patch's zero-padded border
    # weighs far more than in a 224 px model (HER2ST: median 0.988, docs/benchmarks.md); measured here
    # 0.949 (bf16 training) to >= 0.95 (fp32) depending on the CPU's training numerics
    assert np.nanmedian(r) >= 0.93, r
    rows, cols = np.nonzero(fin)
    cls = _truth_class(unseen, np.stack([(cols + 0.5) * rp.grid.stride, (rows + 0.5) * rp.grid.stride], 1))
    for gene, c in (("ERBB2", 1), ("COL1A1", 2), ("PTPRC", 3)):
        v = dense.gene(gene)[rows, cols]
        assert np.corrcoef(v, cls == c)[0, 1] > 0.6, gene


def test_adjacent_dense_tiles_have_no_seams(model, unseen):
    """The same cells computed inside one big region and as small tiles agree: every block and tile
    uses the same margin rule."""
    pyr = open_slide(unseen.slide)
    _, small = _raster(model, pyr, "dense", tile_cells=4)
    _, big = _raster(model, pyr, "dense", tile_cells=32)
    fin = np.isfinite(small.data[0]) & np.isfinite(big.data[0])
    assert fin.sum() > 100
    diff = np.abs(small.data[:, fin] - big.data[:, fin])
    spread = np.nanstd(big.data[:, fin])
    assert np.nanmax(diff) < 0.25 * spread and np.nanmean(diff) < 0.02 * spread


def test_spots_dense_close_to_patch(model, cohort):
    from napari_histoexpr.infer.spots import predict_at_spots
    from napari_histoexpr.io.sections import load_section

    pyr, adata = load_section(cohort["sections"][3])
    d = predict_at_spots(model, pyr, adata, mode="dense")
    p = predict_at_spots(model, pyr, adata, mode="patch")
    assert d.spot_ids == p.spot_ids and d.patches is None and p.patches is not None
    # a 2-feature-cell window (64 px) is mostly border: the neighbouring tissue dense mode sees moves
    # its r by a few hundredths (HER2ST's 7-cell windows: docs/benchmarks.md)
    assert abs(np.nanmean(d.pearson()) - np.nanmean(p.pearson())) < 0.05
    assert np.nanmean(d.pearson()) > 0.75


def test_cli_predict_modes_and_devices(trained, cohort, tmp_path, capsys):
    from napari_histoexpr.cli import main as cli

    demo = cohort["demos"][3]
    base = ["predict", "--model", str(trained), "--slide", str(demo.slide), "--device", "cpu"]
    assert cli(base + ["--out", str(tmp_path / "d"), "--spots", str(demo.spots)]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    spots = json.loads((tmp_path / "d" / "spots_report.json").read_text())
    assert summary["mode"] == "dense" and spots["mode"] == "dense" and spots["summary"]["mean_r"] > 0.75
    assert cli(base + ["--out", str(tmp_path / "p"), "--mode", "patch"]) == 0
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["mode"] == "patch"
    # resuming a dense output in patch mode is refused by name
    assert cli(base + ["--out", str(tmp_path / "d"), "--mode", "patch"]) == 2
    capsys.readouterr()
    for dev in ("cuda", "mps"):
        if (dev == "cuda" and torch.cuda.is_available()) or (dev == "mps" and torch.backends.mps.is_available()):
            continue
        rc = cli(["predict", "--model", str(trained), "--slide", str(demo.slide), "--out", str(tmp_path / dev),
                  "--device", dev])
        err = capsys.readouterr().err
        assert rc == 2 and f"device '{dev}' requested" in err and err.count("\n") == 1


def test_view_bands_start_at_the_centre_and_cover_every_tile_once(model, unseen):
    pyr = open_slide(unseen.slide)
    rp = RegionPredictor(model, pyr, None, tile_cells=2, mode="dense")
    tiles = rp.grid.tiles_in_box(0, 0, *pyr.level0_shape)
    bands = rp.bands(tiles)
    assert sorted(t for b in bands for t in b) == sorted(tiles)
    assert tiles[0] in bands[0] and len(bands[0]) <= 9  # a small square around the view centre first
    assert all(len({t[0] for t in b}) <= 4 for b in bands[1:])  # then bands of <= 8 cells (4 tile rows)
    done = dict(rp.run(tiles[:12]))  # computed in bands, cached per tile
    assert set(done) == set(tiles[:12]) and all(t in rp.cache for t in tiles[:12])
    assert rp.bands(tiles[:12]) == [[t] for t in tiles[:12]]  # all cached now: nothing to compute


def test_cpu_bf16_follows_the_cpu_flags_with_an_override(monkeypatch):
    from napari_histoexpr.models.runtime import cpu_bf16_faster, inference_amp, uses_amp

    cpu = torch.device("cpu")
    monkeypatch.setenv("HISTOEXPR_CPU_BF16", "0")
    assert not inference_amp(cpu)
    monkeypatch.setenv("HISTOEXPR_CPU_BF16", "1")
    assert inference_amp(cpu)
    monkeypatch.delenv("HISTOEXPR_CPU_BF16")
    assert inference_amp(cpu) == cpu_bf16_faster() and cpu_bf16_faster() in (True, False)
    assert uses_amp(cpu) == inference_amp(cpu)  # training: bf16 autocast where the CPU has it natively
    monkeypatch.setenv("HISTOEXPR_CPU_BF16", "0")
    assert not uses_amp(cpu) and uses_amp(torch.device("cuda"))
