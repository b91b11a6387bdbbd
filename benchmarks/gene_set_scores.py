"""Gene-set scores on held-out HER2ST sections: r of predicted vs measured scores at the spots; prints JSON.

Uses the fold models of ``her2st_loso.py`` (``--models``: its ``--out`` folder, with ``model_<S>`` and
``test_<S>.csv``). For each held-out section, the fold's model predicts every spot (dense mode, as
``evaluate``); each built-in set (and ``--set NAME=G1,G2``) is prepared against the model's mean
training target (its controls, :mod:`napari_histoexpr.data.gene_sets`) and scored on the predicted and
the measured spots alike. Reported per set: the genes the model has, the number of controls, r of the
scores, and the mean r of the set's genes on their own — whether a program is predicted better than
its genes are.

    python benchmarks/gene_set_scores.py --models benchmark-output/her2st_frozen
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def fold(model_dir: Path, test_manifest: Path, sets, device: str) -> dict:
    from napari_histoexpr.data.gene_sets import prepare
    from napari_histoexpr.errors import GeneSetError
    from napari_histoexpr.infer.set_scores import reference_means
    from napari_histoexpr.infer.spot_prediction import predict_at_spots
    from napari_histoexpr.io.manifest import read_manifest
    from napari_histoexpr.io.sections import load_section
    from napari_histoexpr.metrics import pearson_columns
    from napari_histoexpr.models.expression import ExpressionModel

    model = ExpressionModel.load(model_dir, device)
    sec = read_manifest(test_manifest)[0]
    pyr, adata = load_section(sec)
    t0 = time.perf_counter()
    sp = predict_at_spots(model, pyr, adata, sec.section, mode="dense")
    out = {"section": sec.section, "n_spots": len(sp.spot_ids), "predict_s": round(time.perf_counter() - t0, 1),
           "sets": {}}
    r_gene = dict(zip(sp.genes, pearson_columns(sp.pred, sp.meas)))
    for s in sets:
        try:
            ss = prepare(s, reference_means(model))
        except GeneSetError as e:
            out["sets"][s.name] = {"error": str(e)}
            continue
        use = ss.within(sp.genes)
        p, m = use.of(sp.pred, sp.genes), use.of(sp.meas, sp.genes)
        out["sets"][s.name] = {
            "genes": use.genes, "n_controls": len(use.controls),
            "r_score": float(np.corrcoef(p, m)[0, 1]),
            "mean_r_of_its_genes": float(np.nanmean([r_gene[g] for g in use.genes])),
        }
    return out


def main(argv=None) -> int:
    from napari_histoexpr.data.gene_sets import BUILTIN, parse_set_arg

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="her2st_loso.py's --out folder")
    ap.add_argument("--set", action="append", default=[], help="extra sets: NAME=G1,G2 or a GMT file")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    sets = list(BUILTIN.values()) + [s for a in args.set for s in parse_set_arg(a)]
    root = Path(args.models)
    folds = sorted(p.name[len("model_"):] for p in root.glob("model_*") if (root / f"test_{p.name[6:]}.csv").exists())
    res = {"folds": [fold(root / f"model_{f}", root / f"test_{f}.csv", sets, args.device) for f in folds]}
    summary = {}
    for s in sets:
        rs = [f["sets"][s.name] for f in res["folds"] if "r_score" in f["sets"].get(s.name, {})]
        if rs:
            summary[s.name] = {"mean_r_score": float(np.mean([r["r_score"] for r in rs])),
                               "mean_r_of_its_genes": float(np.mean([r["mean_r_of_its_genes"] for r in rs])),
                               "folds": len(rs), "genes_in_model": rs[0]["genes"]}
    res["summary"] = summary
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
