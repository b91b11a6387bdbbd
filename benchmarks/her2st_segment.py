"""HER2ST segmenter benchmark: expression clusters (the study's per-spot labels) as classes; train on
three of C2–C5, evaluate spot-level Dice on the fourth, all four rotations; prints JSON.

    python benchmarks/her2st_segment.py --data DIR [--features expression|scratch] [--device cuda]
        [--encoder-epochs N] [--encoder-pattern 'DIR/model_{held}'] [--finetune] [--epochs 10]
        [--windows-um 50,100] [--px 64] [--folds C2,C3]

``--features expression`` (the default route of ``histoexpr segment train``): without
``--encoder-pattern`` each fold first trains an expression model on its three sections (as a user
without an encoder would), whose held-out expression r is reported too; ``scratch`` trains patch
classifiers on the clusters alone. ``--encoder-pattern`` may also name a pretrained encoder's weights
file (the same for every fold): its features are cached and only a class head is fitted; ``--retrain``
then trains each fold a second time from the warm cache, as after a drawn region in the panel, and
reports that time (``retrain_s``: open the sections, cut the patches, read the features, fit the head).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def smoothing_sweep(seg_dir, manifest, values_um, device) -> dict:
    """Spot-level Dice of one segmenter's map on ``manifest`` for several smoothing widths (µm), from one
    unsmoothed dense map (the same steps as ``histoexpr segment evaluate``)."""
    from napari_histoexpr.io.manifest import as_sections
    from napari_histoexpr.io.sections import load_section
    from napari_histoexpr.models.segmenter import Segmenter
    from napari_histoexpr.segment.classes import spot_classes
    from napari_histoexpr.segment.maps import (
        dice_scores,
        label_map,
        segment_region,
        smooth_probabilities,
        spot_majority,
    )
    from napari_histoexpr.steps import drain

    model = Segmenter.load(seg_dir, device)
    model.meta["smooth_um"] = 0.0  # the raw map; widths applied below
    cidx = {c: i for i, c in enumerate(model.classes)}
    preds, truths = {v: [] for v in values_um}, []
    for sec in as_sections(manifest):
        pyr, adata = load_section(sec)
        rp, ras = drain(segment_region(model, pyr), lambda ev: None)
        t = np.array([cidx.get(str(v), -1) for v in spot_classes(adata, model.meta["class_spec"]).to_numpy()])
        xy = np.asarray(adata.obsm["spatial"], float)[t >= 0]
        radius = float(adata.uns["histoexpr"].get("spot_diameter_px") or 55.0 / pyr.world_mpp) / 2
        truths.append(t[t >= 0])
        step_um = rp.grid.stride * pyr.world_mpp
        for v in values_um:
            model.meta["smooth_um"] = v
            probs = smooth_probabilities(ras.data, model.smooth_cells(step_um))
            preds[v].append(spot_majority(label_map(probs), rp.grid.stride, xy, radius, len(model.classes)))
        model.meta["smooth_um"] = 0.0
    t = np.concatenate(truths)
    return {f"{v:g}": dice_scores(np.concatenate(p), t, model.classes, skip=(0,))["mean_dice"]
            for v, p in preds.items()}


def main(argv=None) -> int:
    from her2st_loso import SECTIONS, write_manifests
    from napari_histoexpr.cli import drain
    from napari_histoexpr.evaluation import evaluate_segmenter_steps, evaluate_steps
    from napari_histoexpr.io.manifest import read_manifest
    from napari_histoexpr.segment.classes import class_spec
    from napari_histoexpr.train.segmenter_trainer import SegConfig, segmenter_steps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HER2ST data folder (images/, spots/, counts/, clusters/)")
    ap.add_argument("--out", default="benchmark-output/her2st_segment")
    ap.add_argument("--features", default="expression", choices=("expression", "scratch"))
    ap.add_argument("--encoder-pattern", default=None, help="existing encoders, e.g. 'DIR/model_{held}'")
    ap.add_argument("--encoder-epochs", type=int, default=None, help="default: histoexpr train's")
    ap.add_argument("--finetune", action="store_true")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--windows-um", default="50,100")
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--folds", default=",".join(SECTIONS))
    ap.add_argument("--smooth-um", type=float, default=None, help="default: segment train's")
    ap.add_argument("--sweep-smooth-um", default="0,200,320,450", help="smoothing widths also scored (µm)")
    ap.add_argument("--retrain", action="store_true", help="train each fold again (warm feature cache), timed")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = {}
    for held in args.folds.split(","):
        tr, te = write_manifests(data, out, held)
        cfg = SegConfig(classes=class_spec("column"), features=args.features, finetune=args.finetune,
                        encoder=args.encoder_pattern.format(held=held) if args.encoder_pattern else None,
                        encoder_config={} if args.encoder_epochs is None else {"epochs": args.encoder_epochs},
                        windows_um=tuple(float(w) for w in args.windows_um.split(",")), px=args.px,
                        epochs=args.epochs, device=args.device)
        if args.smooth_um is not None:
            cfg.smooth_um = args.smooth_um
        seg_dir = out / f"seg_{held}"
        t0, times = time.perf_counter(), {}

        def log(ev, held=held):
            if ev.get("stage") == "encoder":
                times["encoder_start"] = time.perf_counter()
            elif ev.get("stage") == "baselines":  # the encoder's last stage
                times["encoder_baselines"] = True
            elif "encoder_baselines" in times and "encoder_s" not in times:  # the segmenter's first event
                times["encoder_s"] = time.perf_counter() - times["encoder_start"]
            if ev.get("stage") in ("epoch", "head", "encoder"):
                print(f"[{held}] {ev.get('msg') or {k: ev.get(k) for k in ('epoch', 'val_mean_r', 'val_bal_acc')}}",
                      file=sys.stderr, flush=True)

        summ = drain(segmenter_steps(read_manifest(tr), seg_dir, cfg), log)
        t_train = time.perf_counter() - t0
        rep = drain(evaluate_segmenter_steps(seg_dir, te, out / f"report_{held}", device=args.device),
                    lambda ev: None)
        folds[held] = {"mean_dice": rep["summary"]["mean_dice"], "per_class": rep["summary"]["per_class"],
                       "mode": summ["mode"], "windows_um": summ["windows_um"], "val_bal_acc": summ["val_bal_acc"],
                       "features": {k: v for k, v in summ["features"].items() if k != "stain_norm"},
                       "train_s": round(t_train, 1), "device": summ["device"]}
        if args.retrain:
            t1 = time.perf_counter()
            again = drain(segmenter_steps(read_manifest(tr), out / f"seg_{held}_again", cfg), lambda ev: None)
            folds[held].update(retrain_s=round(time.perf_counter() - t1, 2),
                               retrain_head_fit_s=again["features"].get("head_fit_s"))
        if args.sweep_smooth_um:
            folds[held]["smoothing_sweep"] = smoothing_sweep(seg_dir, te, [float(v) for v in
                                                                          args.sweep_smooth_um.split(",")], args.device)
        if "encoder_s" in times:
            folds[held]["encoder_train_s"] = round(times["encoder_s"], 1)
        if args.features == "expression" and not args.encoder_pattern:  # the encoder's own held-out r
            er = drain(evaluate_steps(seg_dir / "encoder", te, out / f"expr_report_{held}", device=args.device),
                       lambda ev: None)
            folds[held]["expression"] = er["summary"]
        print(json.dumps({held: folds[held]}, default=str), file=sys.stderr, flush=True)
    res = {"benchmark": "her2st_segment", "config": vars(args), "folds": folds,
           "mean_dice_over_folds": float(np.mean([f["mean_dice"] for f in folds.values()]))}
    if all("smoothing_sweep" in f for f in folds.values()):
        res["smoothing_sweep_mean_dice"] = {k: float(np.mean([f["smoothing_sweep"][k] for f in folds.values()]))
                                            for k in next(iter(folds.values()))["smoothing_sweep"]}
    if all("expression" in f for f in folds.values()):
        keys = ("genes_r_pos", "genes_r_gt_0_5", "mean_r", "median_r", "mean_r_hvg50")
        res["expression_mean_over_folds"] = {k: float(np.mean([f["expression"][k] for f in folds.values()]))
                                             for k in keys}
    (out / "result.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
