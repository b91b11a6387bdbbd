"""Evaluating models on held-out sections of a manifest: expression models (``evaluate_steps``, Pearson r
at the measured spots) and segmenters (``evaluate_segmenter_steps``, spot-level Dice).

``evaluate_steps`` writes ``REPORT_DIR/report.json`` exactly as in docs/formats.md (plus the
baselines' numbers under ``"baselines"``), ``report.md`` and PNG plots; ``evaluate_segmenter_steps``
writes ``report.json`` (``summary.mean_dice``, ``per_class``) and a PNG map per section.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np

from .errors import HistoExprError
from .files import atomic_write_h5ad, atomic_write_json
from .infer.slide_trust import slide_ood
from .infer.spot_prediction import SpotPrediction, predict_at_spots
from .io.manifest import as_sections
from .io.sections import load_section
from .metrics import named_values, nanmean_or_none, pearson_columns, risk_coverage, summarise_pearson
from .segment.classes import spot_classes
from .segment.maps import dice_scores, label_map, save_map, segment_region, spot_majority
from .train.baselines import Baselines


def evaluate_steps(model_dir, manifest, out_dir, device: str = "auto", baselines: bool = True, plots: bool = True,
                   mode: str = "dense", precision: str = "auto") -> Generator[dict, None, dict]:
    """Per-gene Pearson across the spots of every section of ``manifest``; writes the report.
    ``mode``: how the model predicts at the spots (dense feature map, or patch by patch);
    ``precision``: of dense mode (``auto`` or ``int8``, :mod:`.models.quantize`)."""
    from .models.expression import ExpressionModel

    model = ExpressionModel.load(model_dir, device)
    model.set_precision(precision, mode)
    if model.trust is not None:
        model.set_uncertainty(True)
    genes, hvg50 = model.genes, model.meta.get("hvg50", [])
    base = Baselines(model_dir, model.device) if baselines and Baselines.available(model_dir) else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per = {"model": {}, "ridge": {}, "mean": {}}
    used = set()
    sections_out, scatter = {}, {}
    for i, sec in enumerate(as_sections(manifest)):
        yield {"stage": "open", "msg": f"evaluating {sec.section} ({i + 1})"}
        pyr, ad = load_section(sec)
        sp = predict_at_spots(model, pyr, ad, sec.section, mode=mode, keep_patches=base is not None)
        used.add(sp.mode)
        trust = section_trust(model, pyr, sp, out)
        pyr.close()
        r = sp.pearson()
        per["model"][sec.section] = named_values(sp.genes, r)
        sections_out[sec.section] = {"n_spots": len(sp.spot_ids), "scale": sp.scale,
                                     "pearson": per["model"][sec.section], "trust": trust}
        if trust is not None and trust["outside"]:
            yield {"stage": "warning", "section": sec.section, "msg": f"{sec.section}: {trust['message']}"}
        scatter[sec.section] = (sp.genes, sp.pred, sp.meas)
        if base is not None:
            gi = [genes.index(g) for g in sp.genes]
            bp = base.predict(sp.patches)
            per["ridge"][sec.section] = named_values(sp.genes, pearson_columns(bp["ridge"][:, gi], sp.meas))
            per["mean"][sec.section] = {g: 0.0 for g in sp.genes}  # constant prediction: r undefined -> 0
            mse = {k: float(((bp[k][:, gi] - sp.meas) ** 2).mean()) for k in ("mean", "ridge")}
            mse["model"] = float(((sp.pred - sp.meas) ** 2).mean())
            sections_out[sec.section]["mse"] = mse
        yield {"stage": "section", "section": sec.section, "n_spots": len(sp.spot_ids),
               "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")}
    summary, med = summarise_pearson(per["model"], genes, hvg50)
    trusts = [v["trust"] for v in sections_out.values() if v["trust"] is not None]
    if trusts:
        summary["trust"] = {k: nanmean_or_none([t[k] for t in trusts])
                            for k in ("ood_score", "ood_percentile", "uncertainty_error_spearman")}
    report = {"sections": sections_out, "summary": summary,
              "mode": "/".join(sorted(used)) or mode, "precision": precision if "dense" in used else "auto",
              "model": {"dir": str(model_dir), "backbone": model.meta["backbone"],
                        "trained_on": model.meta["training"]["sections"],
                        "validation": model.meta["training"]["validation"]}}
    if base is not None:
        report["baselines"] = {
            "mean": {"summary": summarise_pearson(per["mean"], genes, hvg50)[0],
                     "note": "predicts the training mean: Pearson r undefined, counted as 0"},
            "ridge": {"summary": summarise_pearson(per["ridge"], genes, hvg50)[0],
                      "encoder": base.meta["encoder"], "pca_components": base.meta["pca_components"],
                      "alpha": base.meta["alpha"]},
        }
    atomic_write_json(out / "report.json", _json_safe(report))
    if plots:
        _plots(out, med, per, scatter, summary)
    (out / "report.md").write_text(_markdown(report, med))
    yield {"stage": "done", "msg": f"report written to {out}"}
    return report


def section_trust(model, pyr, sp: SpotPrediction, out: Path) -> dict | None:
    """The report's ``trust`` block of a section (``None`` for a model never calibrated): the slide's
    out-of-distribution score, Spearman's rho of the spots' uncertainty with their absolute error, the
    risk-coverage curve; the spots' predictions, measurements and uncertainties go to
    ``out/spots/<section>.h5ad``."""
    if sp.uncertainty is None:
        return None
    import anndata
    import pandas as pd

    ood = slide_ood(model, pyr)
    order = np.argsort(sp.uncertainty.mean(1), kind="stable")
    table = anndata.AnnData(X=sp.pred.astype(np.float32),
                            obs=pd.DataFrame({"distance": sp.distance.astype(np.float32),
                                              "mean_uncertainty": sp.uncertainty.mean(1).astype(np.float32)},
                                             index=sp.spot_ids),
                            var=pd.DataFrame(index=sp.genes),
                            layers={"measured": sp.meas.astype(np.float32),
                                    "uncertainty": sp.uncertainty.astype(np.float32)})
    table.obsm["spatial"] = np.asarray(sp.xy, float)
    (out / "spots").mkdir(exist_ok=True)
    atomic_write_h5ad(out / "spots" / f"{sp.section}.h5ad", table)
    return {"ood_score": ood["ood_score"], "ood_percentile": ood["ood_percentile"],
            "uncertainty_error_spearman": sp.uncertainty_error_spearman(), "outside": ood["outside"],
            "message": ood["message"], "risk_coverage": risk_coverage(order, sp.pred, sp.meas)}


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _markdown(report: dict, med: dict) -> str:
    s = report["summary"]
    lines = ["# Expression model evaluation", "",
             f"Model `{report['model']['dir']}` ({report['model']['backbone']}), trained on "
             f"{', '.join(report['model']['trained_on'])}.", "",
             "| method | genes | r > 0 | r > 0.5 | mean r | median r | mean r (HVG 50) |",
             "|---|---|---|---|---|---|---|"]

    def row(name, x):
        return (f"| {name} | {x['genes']} | {x['genes_r_pos']} | {x['genes_r_gt_0_5']} | "
                f"{_fmt(x['mean_r'])} | {_fmt(x['median_r'])} | {_fmt(x['mean_r_hvg50'])} |")

    lines.append(row("model", s))
    for k, v in report.get("baselines", {}).items():
        lines.append(row(f"baseline: {k}", v["summary"]))
    lines += ["", "| section | spots | mean r | OOD score | uncertainty-error Spearman | |",
              "|---|---|---|---|---|---|"]
    for name, sec in report["sections"].items():
        vals = [v for v in sec["pearson"].values() if v is not None]
        t = sec.get("trust") or {}
        lines.append(f"| {name} | {sec['n_spots']} | {_fmt(np.mean(vals) if vals else float('nan'))} | "
                     f"{_fmt(t.get('ood_score'))} | {_fmt(t.get('uncertainty_error_spearman'))} | "
                     f"{'**out of distribution**' if t.get('outside') else ''} |")
    ranked = sorted(((v, g) for g, v in med.items() if np.isfinite(v)), reverse=True)
    lines += ["", "Best genes: " + ", ".join(f"{g} ({v:.2f})" for v, g in ranked[:10]),
              "", "Worst genes: " + ", ".join(f"{g} ({v:.2f})" for v, g in ranked[-10:]), "",
              "![r histogram](pearson_hist.png) ![best and worst](genes_best_worst.png) "
              "![scatter](scatter.png)", ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _plots(out: Path, med: dict, per: dict, scatter: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def medians(d):
        genes = set().union(*[set(s) for s in d.values()]) if d else set()
        res = []
        for g in genes:
            vals = [s[g] for s in d.values() if s.get(g) is not None]
            if vals:
                res.append(float(np.median(vals)))
        return np.array(res)

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    bins = np.linspace(-1, 1, 41)
    ax.hist(medians(per["model"]), bins=bins, alpha=0.8, label="model")
    if per["ridge"]:
        ax.hist(medians(per["ridge"]), bins=bins, alpha=0.5, label="ridge baseline")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Pearson r per gene (median over sections)")
    ax.set_ylabel("genes")
    ax.set_title(f"mean r {summary['mean_r']:.3f}, {summary['genes_r_pos']}/{summary['genes']} genes r > 0")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pearson_hist.png")
    plt.close(fig)

    ranked = sorted(((v, g) for g, v in med.items() if np.isfinite(v)), reverse=True)
    sel = ranked[:10] + ranked[-10:] if len(ranked) > 20 else ranked
    fig, ax = plt.subplots(figsize=(5, 0.22 * len(sel) + 1), dpi=110)
    ax.barh([g for _, g in sel][::-1], [v for v, _ in sel][::-1],
            color=["tab:green" if v > 0 else "tab:red" for v, _ in sel][::-1])
    ax.set_xlabel("Pearson r")
    ax.set_title("best and worst genes")
    fig.tight_layout()
    fig.savefig(out / "genes_best_worst.png")
    plt.close(fig)

    best = [g for _, g in ranked[:4]]
    fig, axes = plt.subplots(1, max(1, len(best)), figsize=(3.2 * max(1, len(best)), 3.2), dpi=110, squeeze=False)
    for ax, g in zip(axes[0], best):
        for name, (genes, pred, true) in scatter.items():
            if g in genes:
                j = genes.index(g)
                ax.scatter(true[:, j], pred[:, j], s=6, alpha=0.6, label=name)
        ax.set_title(f"{g} (r {med[g]:.2f})")
        ax.set_xlabel("measured log1p")
        ax.set_ylabel("predicted")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scatter.png")
    plt.close(fig)


def evaluate_segmenter_steps(model_dir, manifest, out_dir, device="auto", stride_um=None,
                             mode: str = "dense", precision: str = "auto") -> Generator[dict, None, dict]:
    """Spot-level Dice of a segmenter on every section of ``manifest``; writes report.json + PNG maps
    (``precision``: of dense mode, ``auto`` or ``int8``)."""
    from .models.segmenter import Segmenter

    model = Segmenter.load(model_dir, device)
    model.set_precision(precision, mode)  # a named error before any section is read
    spec = model.meta["class_spec"]
    if spec["source"] == "clusters":
        raise HistoExprError("this segmenter's classes are clusters of its training spots; evaluate it "
                             "on sections with cluster labels in the manifest (--classes clusters) or gene rules")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    secs = as_sections(manifest)
    cidx = {c: i for i, c in enumerate(model.classes)}
    all_p, all_t, sections = [], [], {}
    for sec in secs:
        yield {"stage": "open", "msg": f"segmenting {sec.section}"}
        pyr, adata = load_section(sec)
        truth = spot_classes(adata, spec).to_numpy()
        rp, ras = yield from progress_only(segment_region(model, pyr, stride_um, mode=mode, precision=precision))
        labels = label_map(ras.data)
        xy = np.asarray(adata.obsm["spatial"], float)
        radius = float(adata.uns["histoexpr"].get("spot_diameter_px") or 55.0 / pyr.world_mpp) / 2
        pred = spot_majority(labels, rp.grid.stride, xy, radius, len(model.classes))
        t = np.array([cidx.get(str(v), -1) for v in truth])
        ok = t >= 0
        d = dice_scores(pred[ok], t[ok], model.classes, skip=(0,))
        sections[sec.section] = dict(d, n_spots=int(ok.sum()), unknown_labels=int((~ok).sum()))
        all_p.append(pred[ok])
        all_t.append(t[ok])
        save_map(out / f"{sec.section}_segmentation.png", pyr, labels, model.classes, rp.grid.stride)
        pyr.close()
    summary = dice_scores(np.concatenate(all_p), np.concatenate(all_t), model.classes, skip=(0,))
    report = {"summary": summary, "sections": sections, "mode": mode, "precision": rp.precision,
              "model": {"dir": str(model_dir), "classes": model.classes, "windows_um": model.windows,
                        "mode": model.meta["mode"]},
              "note": "spot-level Dice: each spot's predicted class is the majority of the predicted "
                      "map inside its disk; pooled over all spots of all sections"}
    atomic_write_json(out / "report.json", report)
    yield {"stage": "done", "msg": f"mean Dice {summary['mean_dice']:.3f}"}
    return report


def progress_only(gen: Generator[dict, None, tuple]) -> Generator[dict, None, tuple]:
    """Re-yield ``gen``'s progress without its arrays (for the CLI); return its value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        yield {k: v for k, v in ev.items() if k in ("stage", "done", "total", "msg")}
