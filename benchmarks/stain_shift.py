"""A shifted validation for choosing training defaults: held-out sections re-stained as other labs stain; prints JSON.

The project's users apply models to new patients, scanned and stained elsewhere. No other patient's
expression is at hand here, but other labs' H&E is: each held-out section is evaluated as it is and
after Macenko stain transfer to the stains of each ``--stain`` slide (the tissue and the expression
stay the same, only the stain moves). A schedule that holds up better under the shift is the one
expected to transfer better. For every model folder given: mean r over genes at the held-out spots
and the section's OOD score (a calibrated model) for the original and each re-stained version.

    python benchmarks/stain_shift.py --model NAME=MODEL_DIR:TEST_MANIFEST ... --stain SLIDE[:MPP] ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def stain_target(path: str, mpp: float | None) -> dict:
    """Macenko stain vectors of a slide's tissue (a thumbnail of about 2,000 px)."""
    from napari_histoexpr.data.patches import macenko_fit
    from napari_histoexpr.io.slides import open_slide

    pyr = open_slide(path, mpp=mpp)
    img, _ = pyr.thumbnail(2048)
    return macenko_fit(np.asarray(img)[..., :3])


def score(model, section, target) -> dict:
    from napari_histoexpr.infer.slide_trust import slide_ood
    from napari_histoexpr.infer.spot_prediction import predict_at_spots
    from napari_histoexpr.io.sections import load_section

    # every patch and dense region this model reads is re-stained to ``target`` (None: as scanned)
    model.meta = dict(model.meta, stain_norm=target)
    model._stain_transform = None
    pyr, ad = load_section(section)
    sp = predict_at_spots(model, pyr, ad, section.section)
    out = {"mean_r": float(np.nanmean(sp.pearson()))}
    if model.trust is not None:
        out["ood_score"] = slide_ood(model, pyr)["ood_score"]
        out["uncertainty_error_spearman"] = sp.uncertainty_error_spearman()
    pyr.close()
    return out


def main(argv=None) -> int:
    from napari_histoexpr.io.manifest import as_sections
    from napari_histoexpr.models.expression import ExpressionModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR:TEST_MANIFEST (repeatable)")
    ap.add_argument("--stain", action="append", default=[], help="SLIDE[:MPP] whose stains are transferred")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    targets = {}
    for spec in args.stain:
        path, _, mpp = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        targets[Path(path).stem] = stain_target(path, float(mpp) if mpp else None)
    res = {}
    for spec in args.model:
        name, _, rest = spec.partition("=")
        mdir, _, manifest = rest.rpartition(":")
        model = ExpressionModel.load(mdir, args.device)
        if model.trust is not None:
            model.set_uncertainty(True)
        sec = as_sections(manifest)[0]
        row = {"section": sec.section, "original": score(model, sec, None)}
        for t, target in targets.items():
            row[t] = score(model, sec, target)
        row["mean_r_shifted"] = float(np.mean([row[t]["mean_r"] for t in targets])) if targets else None
        res[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "stain_shift", "config": vars(args), "models": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
