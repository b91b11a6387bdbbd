"""Dense vs patch mode on a real model: train (or reuse) an expression model on HER2ST sections and
compare the two modes on a held-out section; prints JSON.

- grid agreement: per-gene Pearson between the dense and patch maps over the tissue cells of the
  held-out section's grid (the dense grid step; median and 10th percentile over genes);
- spot agreement: ``histoexpr predict --spots`` mean r (across genes, per-gene Pearson of predicted
  vs measured over the section's spots) in dense mode and in patch mode;
- timings of both whole-section predictions;
- with ``--int8``, dense mode also with the int8 body (``--precision int8``): its grid agreement with the
  float dense map and with patch mode, its spot mean r and its timing.

    python benchmarks/dense_agreement.py --data HER2ST_DIR [--held C2] [--epochs 8] [--px 224]
        [--model MODEL_DIR]    # an existing model trained without the held-out section
        [--int8] [--resume]    # --resume: keep finished predictions in OUT (e.g. add --int8 to a run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HER2ST data folder (images/, spots/, counts/, clusters/)")
    ap.add_argument("--held", default="C2")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--window-um", type=float, default=150.0)
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmark-output/dense-agreement")
    ap.add_argument("--model", default=None, help="use this model instead of training one")
    ap.add_argument("--int8", action="store_true", help="also dense mode with the int8 body (CPU)")
    ap.add_argument("--resume", action="store_true", help="keep the finished predictions of an earlier run in --out")
    args = ap.parse_args(argv)

    import zarr

    from her2st_loso import write_manifests
    from napari_histoexpr.cli import drain
    from napari_histoexpr.infer.distributed import predict_many
    from napari_histoexpr.metrics import pearson_columns
    from napari_histoexpr.train.expression_trainer import TrainConfig, train_from_manifest_steps

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_csv, _ = write_manifests(Path(args.data), out, args.held)
    model_dir = Path(args.model) if args.model else out / f"model_{args.held}_{args.px}_{args.epochs}"
    t0 = time.perf_counter()
    if not (model_dir / "model.json").exists():
        cfg = TrainConfig(n_genes=args.genes, epochs=args.epochs, px=args.px, window_um=args.window_um,
                          device=args.device, baselines=False, patience=args.epochs)
        drain(train_from_manifest_steps(train_csv, model_dir, cfg), lambda ev: None)
    t_train = time.perf_counter() - t0
    data = Path(args.data)
    slide = data / "images" / f"{args.held}.jpg"
    spots = data / "spots" / f"{args.held}_selection.tsv"
    res, rasters, secs = {}, {}, {}
    from napari_histoexpr.models.expression import ExpressionModel

    step = ExpressionModel.load(model_dir, "cpu").dense_step_um(args.window_um / 2)
    runs = [("dense", "dense", "auto"), ("patch", "patch", "auto")] + ([("int8", "dense", "int8")] if args.int8 else [])
    for name, mode, precision in runs:
        t0 = time.perf_counter()
        r = predict_many(model_dir, [str(slide)], out / f"pred_{name}", device=args.device, spots=str(spots),
                         mode=mode, stride_um=step, resume=args.resume, precision=precision)
        secs[name] = time.perf_counter() - t0
        res[name] = r[str(slide)]["spots"]
        rasters[name] = np.asarray(zarr.open_group(str(out / f"pred_{name}" / "prediction.zarr"), mode="r")["0"])

    def agreement(a, b):
        fin = np.isfinite(a[0]) & np.isfinite(b[0])
        return pearson_columns(a[:, fin].T, b[:, fin].T), int(fin.sum())

    rg, n_cells = agreement(rasters["dense"], rasters["patch"])
    extra = {}
    if args.int8:
        r_float, _ = agreement(rasters["int8"], rasters["dense"])
        r_patch, _ = agreement(rasters["int8"], rasters["patch"])
        extra = {"int8_vs_dense_median_r": round(float(np.nanmedian(r_float)), 4),
                 "int8_vs_dense_min_r": round(float(np.nanmin(r_float)), 4),
                 "int8_vs_patch_median_r": round(float(np.nanmedian(r_patch)), 4),
                 "int8_vs_patch_p10_r": round(float(np.nanpercentile(r_patch, 10)), 4),
                 "spots_mean_r_int8": round(res["int8"]["mean_r"], 4),
                 "spots_hvg50_int8": round(res["int8"]["mean_r_hvg50"], 4),
                 "predict_seconds_int8": round(secs["int8"], 1)}
    print(json.dumps({
        "benchmark": "dense_agreement", "held_out": args.held, "px": args.px, "window_um": args.window_um,
        "model": str(model_dir), "epochs": args.epochs if not args.model else None,
        "train_seconds": round(t_train, 1), "grid_step_um": round(step, 3),
        "grid_cells": n_cells, "genes": int(rasters["dense"].shape[0]),
        "grid_agreement_median_r": round(float(np.nanmedian(rg)), 4),
        "grid_agreement_p10_r": round(float(np.nanpercentile(rg, 10)), 4),
        "spots_mean_r_dense": round(res["dense"]["mean_r"], 4), "spots_mean_r_patch": round(res["patch"]["mean_r"], 4),
        "spots_hvg50_dense": round(res["dense"]["mean_r_hvg50"], 4),
        "spots_hvg50_patch": round(res["patch"]["mean_r_hvg50"], 4),
        "predict_seconds_dense": round(secs["dense"], 1), "predict_seconds_patch": round(secs["patch"], 1),
        **extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
