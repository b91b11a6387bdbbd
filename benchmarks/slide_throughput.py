"""Whole-slide prediction throughput, dense vs patch mode vs a naive per-patch loader vs the raw
model; prints JSON.

All in the same run, same model, the same grid cells (the dense grid step, a whole number of feature
cells, is used for every mode), same batch size:
- ``raw``: model forward only, on patches already in memory (the ceiling of patch-wise inference);
- ``dense``: ``infer.slide.predict_slide_steps(mode="dense")`` (one backbone pass per tile region,
  feature map pooled per cell; reads in a thread pool; zarr writes);
- ``patch``: the same with ``mode="patch"`` (block reads of native tiles, patches cut from memory,
  batched inference);
- ``dense_int8`` (on a CPU with quantised kernels): ``dense`` with ``precision="int8"`` (the body in
  int8, calibrated on the slide; ``*_outside_tiles_seconds``: the run's wall time outside its tile loop,
  i.e. opening, tissue mask, int8 calibration, display levels and the .h5ad, once per slide);
- ``naive``: one ``OpenSlide.read_region`` per patch at level 0, resized, batched inference.
Throughputs are cells (predictions) per second; ``dense_vs_patch`` is their ratio. The dense and
patch rasters are also compared (per-gene Pearson over cells, median).

    python benchmarks/slide_throughput.py [--size 8192] [--backbone resnet18] [--device auto]

The model is an untrained network of the chosen backbone with 250 genes (speed does not depend on
the weights); the slide is generated once (fast texture renderer of pan_large_slide.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_model(out: Path, backbone: str, px: int, window_um: float, n_genes: int = 250) -> Path:
    from napari_histoexpr.models.artifact import save_artifact
    from napari_histoexpr.models.expression import KIND, ExpressionNet

    net = ExpressionNet(backbone, n_genes, 0)
    genes = [f"G{i}" for i in range(n_genes)]
    meta = {"kind": KIND, "backbone": backbone, "genes": genes, "aux_genes": [], "hvg50": genes[:50],
            "target": {"mean": [0.0] * n_genes, "std": [1.0] * n_genes}, "window_um": window_um,
            "input_px": px, "input": {"mean": [0.5] * 3, "std": [0.25] * 3},
            "training": {"sections": [], "validation": None, "config": {}}}
    return save_artifact(out, net.state_dict(), meta)


def naive(model, slide_path: str, centres: np.ndarray, batch: int) -> tuple[float, int]:
    import openslide
    from PIL import Image

    s = openslide.OpenSlide(slide_path)
    mpp = float(s.properties.get(openslide.PROPERTY_NAME_MPP_X, 0.5))
    win = int(round(model.window_um / mpp))
    t0 = time.perf_counter()
    buf = []
    n = 0
    for x, y in centres:
        im = s.read_region((int(x - win / 2), int(y - win / 2)), 0, (win, win)).convert("RGB")
        buf.append(np.asarray(im.resize((model.px, model.px), Image.Resampling.BILINEAR)))
        if len(buf) == batch:
            model.predict(np.stack(buf), batch_size=batch)
            n += len(buf)
            buf = []
    if buf:
        model.predict(np.stack(buf), batch_size=batch)
        n += len(buf)
    return time.perf_counter() - t0, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--window-um", type=float, default=150.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="reader threads (default: the pipeline's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--naive-patches", type=int, default=512, help="patches timed for the naive loader")
    ap.add_argument("--stride-um", type=float, default=None,
                    help="grid step asked for (default half the window; snapped to whole feature cells)")
    ap.add_argument("--out", default="benchmark-output/throughput")
    args = ap.parse_args(argv)
    import torch

    from napari_histoexpr.infer.slide import predict_slide_steps
    from napari_histoexpr.models.expression import ExpressionModel
    from napari_histoexpr.steps import drain
    from pan_large_slide import make_slide

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide = out / f"slide_{args.size}.tif"
    if not slide.exists():
        make_slide(slide, args.size, args.mpp)
    model_dir = make_model(out / f"model_{args.backbone}_{args.px}", args.backbone, args.px, args.window_um)
    model = ExpressionModel.load(model_dir, args.device)
    dev = model.device

    # raw: in-memory patches, forward only, same batch size (after warm-up)
    x = np.random.default_rng(0).integers(0, 255, (args.batch_size * 4, args.px, args.px, 3), dtype=np.uint8)
    model.predict(x[: args.batch_size], batch_size=args.batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    reps = 3 if dev.type == "cpu" else 20
    t0 = time.perf_counter()
    for _ in range(reps):
        model.predict(x, batch_size=args.batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    raw = reps * len(x) / (time.perf_counter() - t0)

    # the two pipelines on the same grid (the dense step)
    import shutil

    from napari_histoexpr.infer.region import int8_runs

    step = model.dense_step_um(args.stride_um or args.window_um / 2)
    runs, walls = {}, {}
    settings = [("dense", "dense", "auto"), ("patch", "patch", "auto")]
    settings += [("dense_int8", "dense", "int8")] if int8_runs(model) else []
    for name, mode, precision in settings:
        shutil.rmtree(out / f"pred_{name}", ignore_errors=True)
        t0 = time.perf_counter()
        runs[name] = drain(predict_slide_steps(model, slide, out / f"pred_{name}", stride_um=step, workers=args.workers,
                                               batch_size=args.batch_size, resume=False, mode=mode,
                                               precision=precision))
        walls[name] = time.perf_counter() - t0
    rate = {m: r["patches"] / r["seconds"] for m, r in runs.items()}

    # agreement of the two rasters
    import zarr

    from napari_histoexpr.metrics import pearson_columns

    def agreement(m1, m2):
        a, b = (np.asarray(zarr.open_group(str(out / f"pred_{m}" / "prediction.zarr"), mode="r")["0"])
                for m in (m1, m2))
        fin = np.isfinite(a[0]) & np.isfinite(b[0])
        return pearson_columns(a[:, fin].T, b[:, fin].T)

    r = agreement("dense", "patch")
    int8 = {}
    if "dense_int8" in runs:
        r8 = agreement("dense_int8", "dense")
        int8 = {"dense_int8_cells_per_s": round(rate["dense_int8"], 1),
                "dense_int8_seconds": round(runs["dense_int8"]["seconds"], 2),
                "dense_int8_outside_tiles_seconds": round(walls["dense_int8"] - runs["dense_int8"]["seconds"], 2),
                "dense_int8_vs_dense": round(rate["dense_int8"] / rate["dense"], 2),
                "dense_int8_vs_patch": round(rate["dense_int8"] / rate["patch"], 2),
                "dense_int8_vs_dense_median_r_untrained_weights": round(float(np.nanmedian(r8)), 4)}

    # naive, on the same cell centres (a random subset)
    import anndata as ad

    cells = ad.read_h5ad(out / "pred_patch" / "prediction.h5ad").obsm["spatial"]
    rng = np.random.default_rng(1)
    sub = cells[rng.choice(len(cells), min(args.naive_patches, len(cells)), replace=False)]
    t_naive, n_naive = naive(model, str(slide), sub, args.batch_size)
    nv = n_naive / t_naive
    res = {"benchmark": "slide_throughput", "device": str(dev), "torch_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
           "backbone": args.backbone, "px": args.px, "window_um": args.window_um, "grid_step_um": round(step, 3),
           "batch_size": args.batch_size, "slide_px": [args.size, args.size], "cells": runs["dense"]["cells"],
           "tiles": runs["dense"]["tiles"],
           "raw_model_patches_per_s": round(raw, 1),
           "dense_cells_per_s": round(rate["dense"], 1), "dense_seconds": round(runs["dense"]["seconds"], 2),
           "dense_outside_tiles_seconds": round(walls["dense"] - runs["dense"]["seconds"], 2),
           "patch_cells_per_s": round(rate["patch"], 1), "patch_seconds": round(runs["patch"]["seconds"], 2),
           "naive_read_region_cells_per_s": round(nv, 1),
           "dense_vs_patch": round(rate["dense"] / rate["patch"], 2),
           "dense_vs_raw_patchwise": round(rate["dense"] / raw, 2),
           "patch_vs_raw": round(rate["patch"] / raw, 3), "patch_vs_naive": round(rate["patch"] / nv, 2),
           "dense_vs_naive": round(rate["dense"] / nv, 2),
           "dense_patch_agreement_median_r": round(float(np.nanmedian(r)), 4),
           "dense_patch_agreement_min_r": round(float(np.nanmin(r)), 4), **int8}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
