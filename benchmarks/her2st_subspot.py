"""Sub-spot vs spot-level models judged at real single spots (HER2ST patient C); prints JSON.

For each held-out section of C2–C5: both models are trained with ``--pool K`` on the other three
(pseudo-spots of K x K neighbouring spots, expression averaged, footprint their union), then
evaluated by ``histoexpr evaluate`` at the real single spots of the held-out section. The spot-level
model sees a window covering the pooled footprint (``--spot-window-um``); the sub-spot model
(``--subspot-um``) its cells over the footprint plus a cell of context, and is judged by the mean of
its cells inside each single spot. Neither ever saw a single spot.

    python benchmarks/her2st_subspot.py --data HER2ST_DIR [--pool 2] [--subspot-um 50] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

KEYS = ("genes_r_pos", "genes_r_gt_0_5", "mean_r", "median_r", "mean_r_hvg50")


def main(argv=None) -> int:
    from her2st_loso import SECTIONS, write_manifests
    from napari_histoexpr.cli import drain
    from napari_histoexpr.evaluation import evaluate_steps
    from napari_histoexpr.train.expression_trainer import TrainConfig, epoch_line, train_from_manifest_steps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HER2ST data folder (images/, spots/, counts/, clusters/)")
    ap.add_argument("--out", default="benchmark-output/her2st_subspot")
    ap.add_argument("--pool", type=int, default=2)
    ap.add_argument("--subspot-um", type=float, default=50.0)
    ap.add_argument("--spot-window-um", type=float, default=300.0)
    ap.add_argument("--spot-px", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--folds", default=",".join(SECTIONS))
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(json.dumps({"error": f"{data} not found"}))
        return 2
    out.mkdir(parents=True, exist_ok=True)
    kinds = {"subspot": dict(subspot_um=args.subspot_um),
             "spot": dict(window_um=args.spot_window_um, px=args.spot_px)}
    folds: dict = {}
    for held in args.folds.split(","):
        tr, te = write_manifests(data, out, held)
        folds[held] = {}
        for kind, extra in kinds.items():
            cfg = TrainConfig(epochs=args.epochs, lr=args.lr, device=args.device, pool=args.pool,
                              baselines=False, **extra)
            model = out / f"{kind}_{held}"
            t0 = time.perf_counter()
            log = lambda ev, k=kind: ev.get("stage") == "epoch" and print(  # noqa: E731
                f"[{held} {k}] {epoch_line(ev)}, {ev['patches_per_s']:.1f} patches/s", file=sys.stderr, flush=True)
            summary = drain(train_from_manifest_steps(tr, model, cfg), log)
            t_train = time.perf_counter() - t0
            rep = drain(evaluate_steps(model, te, out / f"report_{kind}_{held}", device=args.device,
                                       baselines=False, plots=False), lambda ev: None)
            meta = json.loads((model / "model.json").read_text())
            folds[held][kind] = {"summary": rep["summary"], "n_spots": rep["sections"][held]["n_spots"],
                                 "n_pseudo_spots": meta["training"]["n_train"], "train_s": round(t_train, 1),
                                 "window_um": meta["window_um"], "input_px": meta["input_px"],
                                 "train_patches_per_s": summary["train_patches_per_s"]}
            print(json.dumps({held: {kind: folds[held][kind]}}), file=sys.stderr, flush=True)

    def avg(kind, key):
        return float(np.mean([f[kind]["summary"][key] for f in folds.values()]))

    result = {"benchmark": "her2st_subspot", "config": vars(args), "folds": folds,
              "mean_over_folds": {k: {key: avg(k, key) for key in KEYS} for k in kinds}}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
