"""Leave-one-section-out expression benchmark on HER2ST patient C (C2–C5); prints JSON.

For each held-out section, trains on the other three with ``histoexpr train``'s defaults (all three
fitted, fixed schedule, EMA weights; ``--holdout``: the last of them for early stopping instead) and
evaluates on the held-out one with ``histoexpr evaluate`` (model and the two baselines). Writes
every fold's model and report under ``--out``.

``--frozen-ridge`` also validates the pretrained-encoder head protocol on real spots: the fold's
trained CNN is frozen and used as an encoder, the HEST ridge head (standardise, PCA 256, ridge with
alpha by inner CV over the training sections) is fitted on its features of the training spots, and
both heads (the CNN's own and the ridge) are scored on the same held-out spots.

    python benchmarks/her2st_loso.py --data HER2ST_DIR [--device cuda] [--epochs N] [--holdout] [--stain-norm]
                                     [--frozen-ridge]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SECTIONS = ("C2", "C3", "C4", "C5")


def write_manifests(data: Path, out: Path, held: str) -> tuple[Path, Path]:
    from napari_histoexpr.io.manifest import Section, write_manifest

    def sec(s):
        return Section(section=s, patient="C", image=data / "images" / f"{s}.jpg",
                       spots=data / "spots" / f"{s}_selection.tsv", counts=data / "counts" / f"{s}.tsv.gz",
                       clusters=data / "clusters" / f"{s}-cluster-annotation.tsv.gz")

    train = [sec(s) for s in SECTIONS if s != held]
    return (write_manifest(out / f"train_{held}.csv", train), write_manifest(out / f"test_{held}.csv", [sec(held)]))


def frozen_ridge(model_dir: Path, train: Path, test: Path, device: str) -> dict:
    """The fold's CNN as a frozen encoder + the HEST ridge head, against the CNN's own head."""
    from napari_histoexpr.data.section_data import prepare_sections_steps
    from napari_histoexpr.encoders.heads import fit_ridge_head
    from napari_histoexpr.io.manifest import as_sections
    from napari_histoexpr.metrics import pearson_columns
    from napari_histoexpr.models.expression import ExpressionModel
    from napari_histoexpr.steps import drain

    m = ExpressionModel.load(model_dir, device)

    def cut(manifest):
        return drain(prepare_sections_steps(as_sections(manifest), m.window_um, m.px))[0]

    tr, (te,) = cut(train), cut(test)
    feats = [m.predict(s.patches, features=True) for s in tr]
    F = np.concatenate(feats)
    Y = np.concatenate([s.select(m.genes) for s in tr])
    Y = (Y - Y.mean(0)) / (Y.std(0) + 1e-6)
    groups = np.concatenate([[i] * len(s) for i, s in enumerate(tr)])
    t0 = time.perf_counter()
    state, info = fit_ridge_head(F, Y, groups)
    t_fit = time.perf_counter() - t0
    pred = m.predict(te.patches, features=True) @ state["weight"].numpy().T + state["bias"].numpy()
    truth = te.select(m.genes)
    r_ridge = np.nan_to_num(pearson_columns(pred, truth))
    r_cnn = np.nan_to_num(pearson_columns(m.predict(te.patches), truth))
    hvg = [m.genes.index(g) for g in m.meta.get("hvg50", []) if g in m.genes]

    def summ(r):
        return {"mean_r": float(r.mean()), "median_r": float(np.median(r)),
                "mean_r_hvg50": float(r[hvg].mean()) if hvg else None}

    return {"n_spots": len(te), "cnn_head": summ(r_cnn), "frozen_ridge": summ(r_ridge), "ridge_fit_s": round(t_fit, 2),
            "alpha": info["alpha"], "inner_cv_mean_r": info["inner_cv_mean_r"], "feature_dim": int(F.shape[1])}


def main(argv=None) -> int:
    from napari_histoexpr.cli import drain
    from napari_histoexpr.evaluation import evaluate_steps
    from napari_histoexpr.train.expression_trainer import TrainConfig, epoch_line, train_from_manifest_steps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HER2ST data folder (images/, spots/, counts/, clusters/)")
    ap.add_argument("--out", default="benchmark-output/her2st")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--epochs", type=int, default=None, help="default: histoexpr train's")
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--window-um", type=float, default=150.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--folds", default=",".join(SECTIONS))
    ap.add_argument("--holdout", action="store_true", help="early stopping on the last training section")
    ap.add_argument("--stain-norm", action="store_true", help="Macenko-normalise to the first training section")
    ap.add_argument("--frozen-ridge", action="store_true",
                    help="also fit the HEST ridge head on the fold's frozen CNN features and score both heads")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(json.dumps({"error": f"{data} not found"}))
        return 2
    out.mkdir(parents=True, exist_ok=True)
    folds = {}
    for held in args.folds.split(","):
        tr, te = write_manifests(data, out, held)
        cfg = TrainConfig(backbone=args.backbone, epochs=args.epochs or TrainConfig.epochs, px=args.px,
                          window_um=args.window_um, batch_size=args.batch_size, lr=args.lr, device=args.device,
                          patience=6, holdout=args.holdout, stain_norm=args.stain_norm)
        t0 = time.perf_counter()
        log = lambda ev: ev.get("stage") == "epoch" and print(  # noqa: E731
            f"[{held}] {epoch_line(ev)}, {ev['patches_per_s']:.0f} patches/s", file=sys.stderr, flush=True)
        summary = drain(train_from_manifest_steps(tr, out / f"model_{held}", cfg), log)
        t_train = time.perf_counter() - t0
        rep = drain(evaluate_steps(out / f"model_{held}", te, out / f"report_{held}", device=args.device),
                     lambda ev: None)
        folds[held] = {"summary": rep["summary"], "baselines": {k: v["summary"] for k, v in rep["baselines"].items()},
                       "n_spots": rep["sections"][held]["n_spots"], "train_s": round(t_train, 1),
                       "best_epoch": summary["best_epoch"], "device": summary["device"],
                       "train_patches_per_s": summary["train_patches_per_s"],
                       "raw_fwd_bwd_patches_per_s": summary["raw_fwd_bwd_patches_per_s"]}
        if args.frozen_ridge:
            folds[held]["frozen"] = frozen_ridge(out / f"model_{held}", tr, te, args.device)
        print(json.dumps({held: folds[held]}), file=sys.stderr, flush=True)

    def avg(key, which=None):
        vals = [(f["summary"] if which is None else f["baselines"][which])[key] for f in folds.values()]
        return float(np.mean(vals))

    keys = ("genes_r_pos", "genes_r_gt_0_5", "mean_r", "median_r", "mean_r_hvg50")
    result = {"benchmark": "her2st_loso", "config": vars(args), "folds": folds,
              "mean_over_folds": {"model": {k: avg(k) for k in keys},
                                  **{b: {k: avg(k, b) for k in keys} for b in ("mean", "ridge")}}}
    if args.frozen_ridge:
        result["mean_over_folds"]["frozen"] = {
            h: {k: float(np.mean([f["frozen"][h][k] for f in folds.values()])) for k in ("mean_r", "median_r")}
            for h in ("cnn_head", "frozen_ridge")}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
