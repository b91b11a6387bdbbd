"""HER2ST segmenter benchmark: expression clusters (the study's per-spot labels) as classes; train on
three of C2–C5, evaluate spot-level Dice on the fourth, all four rotations; prints JSON.

    python benchmarks/her2st_segment.py [--device cuda] [--epochs 10] [--windows-um 50,100]
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
    from her2st_loso import SECTIONS, write_manifests
    from napari_histoexpr.cli import drain
    from napari_histoexpr.io.manifest import read_manifest
    from napari_histoexpr.segment.classes import class_spec
    from napari_histoexpr.segment.evaluate import evaluate_segmenter_steps
    from napari_histoexpr.train.segmenter import (
        SegConfig,
        prepare_seg_sections,
        train_segmenter_steps,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HER2ST data folder (images/, spots/, counts/, clusters/)")
    ap.add_argument("--out", default="benchmark-output/her2st_segment")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--windows-um", default="50,100")
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = {}
    for held in SECTIONS:
        tr, te = write_manifests(data, out, held)
        cfg = SegConfig(classes=class_spec("column"), windows_um=tuple(float(w) for w in args.windows_um.split(",")),
                        px=args.px, epochs=args.epochs, device=args.device)
        t0 = time.perf_counter()
        secs = drain(prepare_seg_sections(read_manifest(tr), cfg), lambda ev: None)
        summ = drain(train_segmenter_steps(secs, out / f"seg_{held}", cfg), lambda ev: None)
        rep = drain(evaluate_segmenter_steps(out / f"seg_{held}", te, out / f"report_{held}", device=args.device),
                     lambda ev: None)
        folds[held] = {"mean_dice": rep["summary"]["mean_dice"], "per_class": rep["summary"]["per_class"],
                       "mode": summ["mode"], "windows_um": summ["windows_um"], "val_bal_acc": summ["val_bal_acc"],
                       "seconds": round(time.perf_counter() - t0, 1), "device": summ["device"]}
        print(json.dumps({held: folds[held]}), file=sys.stderr, flush=True)
    res = {"benchmark": "her2st_segment", "config": vars(args), "folds": folds,
           "mean_dice_over_folds": float(np.mean([f["mean_dice"] for f in folds.values()]))}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
