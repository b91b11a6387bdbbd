"""Dense (fully-convolutional) inference: exact pooling geometry, agreement with patch mode, no seams
between tiles, spots, whole-slide output and the CLI's --mode/--device."""

import json

import numpy as np
import pytest
import torch

from napari_histoexpr.infer.grid import Raster
from napari_histoexpr.infer.region import RegionPredictor
from napari_histoexpr.io.slides import open_slide
from napari_histoexpr.metrics import pearson_columns
from napari_histoexpr.models.dense import (
    STRIDE,
    DenseBranch,
    DenseJob,
    box_means,
    cover_blocks,
    dense_at_centres,
    dense_cells,
    dense_step_um,
    feature_blocks,
    plan_blocks,
)


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
        v = dense.plane(gene)[rows, cols]
        assert np.corrcoef(v, cls == c)[0, 1] > 0.6, gene


def test_adjacent_dense_tiles_have_no_seams(model, unseen):
    """The same cells computed as small tiles each on its own (as whole-slide ``predict`` does) and
    in one live-view job agree: every region and block uses the same margin rule."""
    pyr = open_slide(unseen.slide)
    rp = RegionPredictor(model, pyr, None, tile_cells=4, mode="dense")
    small = Raster(rp.grid, model.genes)
    for t in rp.view_tiles((0, 0, *pyr.level0_shape)):
        ((_, v),) = rp.predict_band([t])
        small.put(t, v)
    _, big = _raster(model, pyr, "dense", tile_cells=32)
    fin = np.isfinite(small.data[0]) & np.isfinite(big.data[0])
    assert fin.sum() > 100
    diff = np.abs(small.data[:, fin] - big.data[:, fin])
    spread = np.nanstd(big.data[:, fin])
    assert np.nanmax(diff) < 0.25 * spread and np.nanmean(diff) < 0.02 * spread


def test_spots_dense_close_to_patch(model, cohort):
    from napari_histoexpr.infer.spot_prediction import predict_at_spots
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


def test_block_plan_covers_each_needed_feature_cell_once_centre_first():
    need = np.zeros((40, 53), bool)
    need[3:37, 2:50] = True
    need[10:20, 30:40] = False  # e.g. cached tiles inside the rectangle
    first = (15, 25, 12, 22)
    blocks = plan_blocks(40, 53, first, block_feats=12, needed=need)
    assert blocks[0] == first
    count = np.zeros((40, 53), int)
    for y0, y1, x0, x1 in blocks:
        assert y1 - y0 <= 12 and x1 - x0 <= 12 and need[y0:y1, x0:x1].any()
        count[y0:y1, x0:x1] += 1
    assert count.max() == 1 and (count[need] == 1).all()  # every feature cell computed once
    d = [abs((b[0] + b[1]) / 2 - 20) + abs((b[2] + b[3]) / 2 - 17) for b in blocks[1:]]
    assert d[0] < np.median(d)  # nearest to the first block first


def test_large_blocks_are_halved_where_that_skips_enough_background():
    """An int8 body's 50-cell blocks: whole where all of it is needed, halves (down to 25 cells) where
    that costs less with each block's margin, each needed cell computed once, and the feature map the
    same as computing everything (a linear body: exact)."""
    blocks = [(0, 50, 0, 50), (0, 50, 50, 100), (50, 100, 0, 50), (50, 100, 50, 100)]
    need = np.zeros((100, 100), bool)
    need[0:50, 0:50] = True  # all needed: one block, fewer margins than four
    need[0:20, 60:70] = True  # one corner: a 25-cell quarter, not the whole block
    need[50:100, 0:50] = True
    need[50:75, 25:50] = False  # 3 of 4 quarters: 3 x 29^2 < 54^2
    need[55:60, 55:60] = True
    need[95:100, 95:100] = True  # two far corners: two quarters
    got = cover_blocks(blocks, need, margin=2, fine=25)
    assert got[0] == (0, 50, 0, 50) and (0, 25, 50, 75) in got and (0, 25, 75, 100) not in got
    assert [b for b in got if b[0] >= 50 and b[2] < 50] == [(50, 75, 0, 25), (75, 100, 0, 25), (75, 100, 25, 50)]
    assert (50, 75, 50, 75) in got and (75, 100, 75, 100) in got and len(got) == 7
    count = np.zeros((100, 100), int)
    for y0, y1, x0, x1 in got:
        count[y0:y1, x0:x1] += 1
    assert count.max() == 1 and (count[need] == 1).all()
    assert sum((b[1] - b[0] + 4) * (b[3] - b[2] + 4) for b in got) < 4 * 54 * 54
    assert cover_blocks(blocks, None) == blocks and cover_blocks(blocks, np.zeros((100, 100), bool)) == []

    body = lambda x: torch.nn.functional.avg_pool2d(x, STRIDE)  # noqa: E731
    img = np.random.default_rng(0).integers(0, 255, (100 * STRIDE + 128, 100 * STRIDE + 128, 3), dtype=np.uint8)
    full = feature_blocks(body, img, torch.device("cpu"), 64, 50)
    part = feature_blocks(body, img, torch.device("cpu"), 64, 50, need)
    assert torch.equal(part[:, torch.from_numpy(need)], full[:, torch.from_numpy(need)])


def test_dense_job_pools_windows_across_blocks_exactly(unseen):
    """A job cut into blocks smaller than a window gives the same cells as one region (linear body:
    exact up to resampling), releases the first cells after the first block, and each cell once."""
    pyr = open_slide(unseen.slide)
    body = lambda x: torch.nn.functional.avg_pool2d(x, STRIDE)  # noqa: E731
    br = DenseBranch(body, lambda f: f, px=96, window_um=150.0)  # 3 x 3 feature cells a window
    step = dense_step_um([br], 50.0) / pyr.world_mpp
    x0, y0 = 900.5, 820.5
    want = dense_cells(pyr, [br], x0, y0, 5, 6, step, torch.device("cpu"))
    cells = np.ones((5, 6), bool)
    cells[0, 0] = False  # not wanted: never released
    job = DenseJob(pyr, [br], x0, y0, 5, 6, step, torch.device("cpu"), cells, first=(2, 3, 2, 4), block_feats=2)
    got = np.full((5, 6, 3), np.nan, np.float32)
    released = np.zeros((5, 6), int)
    for n, item in enumerate(job.items):
        new, out = job.compute(item, job.read(item))
        if n == 0:
            assert not new.any()  # 2 x 2 feature cells: less than one window
        if out is not None:
            got[new] = out
        released += new
    assert len(job.items) > 10 and (released == cells).all()
    assert np.nanmax(np.abs(got - want)[cells]) < 0.02 and np.isnan(got[0, 0]).all()
    # with a first block the size of the first cells' windows, they are out after one block
    job = DenseJob(pyr, [br], x0, y0, 5, 6, step, torch.device("cpu"), cells, first=(2, 3, 2, 4))
    new, _ = job.compute(job.items[0], job.read(job.items[0]))
    assert np.argwhere(new).tolist() == [[2, 2], [2, 3]]


def test_view_tiles_come_centre_first_each_once_and_cached(model, unseen):
    pyr = open_slide(unseen.slide)
    rp = RegionPredictor(model, pyr, None, tile_cells=2, mode="dense")
    tiles = rp.grid.tiles_in_box(0, 0, *pyr.level0_shape)
    order = [t for t, _ in rp.run(tiles[:12])]  # one job for the view, cached per tile
    assert sorted(order) == sorted(tiles[:12]) and len(order) == 12 and order[0] == tiles[0]
    assert all(t in rp.cache for t in tiles[:12])
    hits = rp.cache.hits
    assert [t for t, _ in rp.run(tiles[:12])] == tiles[:12] and rp.cache.hits == hits + 12  # all cached now
    # a zoomed-out view: bands of tile rows, each within the feature-map bound, the centre's first
    groups = rp.job_groups(tiles, max_feats=40 * 40)
    assert len(groups) > 1 and tiles[0] in groups[0]
    assert sorted(t for g in groups for t in g) == sorted(tiles)
    span = rp.grid.tile_cells * model.dense_step_um(75.0) / (32 * model.window_um / model.px)
    width = (max(t[1] for t in tiles) - min(t[1] for t in tiles) + 1) * span
    assert all((max(t[0] for t in g) - min(t[0] for t in g) + 1) * span * width <= 40 * 40 for g in groups)


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
