"""Validating the uncertainty and the out-of-distribution score on HER2ST patient C (C2–C5); prints JSON.

Uses the fold models of ``her2st_loso.py`` (``--models``: its ``--out`` folder, with ``model_<S>``,
``train_<S>.csv`` and ``test_<S>.csv``). For each held-out section: the fold's model is calibrated on its
three training sections (``histoexpr calibrate``), evaluated on the held-out one (``histoexpr evaluate``:
uncertainty-error Spearman, risk-coverage, OOD score), and the same spots are ranked by two alternatives
to the error head (k-NN distance in feature space; the spread of a bootstrap ensemble of 8 ridge heads
on the model's features). Every fold's model also scores slides from elsewhere (``--other SLIDE[:MPP]``,
repeatable), and the live view's cost with the uncertainty on is timed on the held-out slide.

    python benchmarks/trust_loso.py --models benchmark-output/her2st_frozen --other ../data/wsi/x.svs --other y.jpg:3.4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def alternatives(model, sp, train_manifest) -> dict:
    """Spearman of two other uncertainty candidates with the held-out spots' absolute error."""
    from sklearn.linear_model import Ridge

    from napari_histoexpr.data.section_data import prepare_sections_steps
    from napari_histoexpr.io.manifest import as_sections
    from napari_histoexpr.metrics import spearman_mean
    from napari_histoexpr.models.trust import DISTANCE_COMPONENTS, knn_distance, whitened_pca
    from napari_histoexpr.steps import drain

    tr = drain(prepare_sections_steps(as_sections(train_manifest), model.window_um, model.px))[0]
    F = np.concatenate([model.predict(s.patches, features=True) for s in tr])
    Y = np.concatenate([s.select(model.genes) for s in tr])
    Ft = model.predict(sp.patches, features=True)
    mu, proj = whitened_pca(F, DISTANCE_COMPONENTS)
    z, zt = (F - mu) @ proj, (Ft - mu) @ proj
    err = np.abs(sp.pred - sp.meas)
    gi = [model.genes.index(g) for g in sp.genes]
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(z), len(z)) for _ in range(8)]
    boot = [Ridge(100.0).fit(z[i], Y[:, gi][i]).predict(zt) for i in draws]
    return {"knn_distance": spearman_mean(np.repeat(knn_distance(zt, z)[:, None], len(gi), 1), err),
            "bootstrap_ridge_std": spearman_mean(np.std(boot, 0), err)}


def view_cost(model, slide, repeats: int = 3) -> dict:
    """Seconds to predict a ~1 mm view from a cold cache as the panel does (dense, tiles of 2 cells),
    uncertainty off and on, alternating (median of ``repeats`` each)."""
    from napari_histoexpr.infer.region import RegionPredictor
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(slide)
    side = 1000 / pyr.world_mpp
    h, w = pyr.level0_shape[:2]
    box = (w / 2 - side / 2, h / 2 - side / 2, w / 2 + side / 2, h / 2 + side / 2)
    out = {}
    for on in [False, True] * repeats:
        model.set_uncertainty(on)
        rp = RegionPredictor(model, pyr, tile_cells=2)
        tiles = rp.view_tiles(box)
        t0 = time.perf_counter()
        for _ in rp.run(tiles):
            pass
        out.setdefault("on" if on else "off", []).append(time.perf_counter() - t0)
    model.set_uncertainty(False)
    res = {k: float(np.median(v)) for k, v in out.items()}
    return {"view_s_off": res["off"], "view_s_on": res["on"], "ratio": res["on"] / res["off"], "tiles": len(tiles)}


def main(argv=None) -> int:
    from napari_histoexpr.evaluation import evaluate_steps
    from napari_histoexpr.infer.slide_trust import slide_ood
    from napari_histoexpr.infer.spot_prediction import predict_at_spots
    from napari_histoexpr.io.manifest import as_sections
    from napari_histoexpr.io.sections import load_section
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.models.expression import ExpressionModel
    from napari_histoexpr.steps import drain
    from napari_histoexpr.train.calibration import calibrate_from_manifest_steps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="her2st_loso.py's output folder")
    ap.add_argument("--folds", default="C2,C3,C4,C5")
    ap.add_argument("--other", action="append", default=[], help="SLIDE[:MPP] from elsewhere (repeatable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmark-output/trust")
    ap.add_argument("--view-repeats", type=int, default=3, help="live-view timings, each way (0: none)")
    ap.add_argument("--view-only", action="store_true",
                    help="only the live-view timing, with the last fold's (calibrated) model on its held-out slide")
    args = ap.parse_args(argv)
    root, out = Path(args.models), Path(args.out)
    if args.view_only:
        held = args.folds.split(",")[-1]
        model = ExpressionModel.load(root / f"model_{held}", args.device)
        res = {"benchmark": "trust_loso", "config": vars(args),
               "live_view": view_cost(model, as_sections(root / f"test_{held}.csv")[0].image, args.view_repeats)}
        print(json.dumps(res, indent=2))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    others = {}
    for spec in args.other:
        path, _, mpp = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        others[Path(path).stem] = (path, float(mpp) if mpp else None)
    folds = {}
    for held in args.folds.split(","):
        mdir, tr, te = root / f"model_{held}", root / f"train_{held}.csv", root / f"test_{held}.csv"
        t0 = time.perf_counter()
        info = drain(calibrate_from_manifest_steps(mdir, tr, args.device))
        t_cal = time.perf_counter() - t0
        rep = drain(evaluate_steps(mdir, te, out / f"report_{held}", device=args.device, baselines=False,
                                   plots=False))
        trust = rep["sections"][held]["trust"]
        model = ExpressionModel.load(mdir, args.device)
        model.set_uncertainty(True)
        pyr, ad = load_section(as_sections(te)[0])
        sp = predict_at_spots(model, pyr, ad, held, keep_patches=True)
        fold = {"mean_r": rep["summary"]["mean_r"], "calibrate_s": round(t_cal, 1),
                "section_scores": info["section_scores"], "held_out": trust,
                "alternatives": alternatives(model, sp, tr), "other_slides": {}}
        for name, (path, mpp) in others.items():
            o = slide_ood(model, open_slide(path, mpp=mpp))
            fold["other_slides"][name] = {k: o[k] for k in ("ood_score", "ood_percentile", "outside", "n_locations")}
        if held == args.folds.split(",")[-1] and args.view_repeats:
            model.set_uncertainty(False)
            fold["live_view"] = view_cost(model, pyr.path, args.view_repeats)
        folds[held] = fold
        print(json.dumps({held: fold}), file=sys.stderr, flush=True)
    rho = [f["held_out"]["uncertainty_error_spearman"] for f in folds.values()]
    result = {"benchmark": "trust_loso", "config": vars(args), "folds": folds,
              "summary": {"uncertainty_error_spearman": rho, "min_spearman": min(rho),
                          "held_out_ood": [f["held_out"]["ood_score"] for f in folds.values()],
                          "held_out_outside": [f["held_out"]["outside"] for f in folds.values()],
                          "other_min_ood": {k: min(f["other_slides"][k]["ood_score"] for f in folds.values())
                                            for k in others},
                          "other_all_outside": {k: all(f["other_slides"][k]["outside"] for f in folds.values())
                                                for k in others}}}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
