"""Training and evaluating expression models on section manifests (the CLI and the panel call these).

``evaluate_steps`` writes ``REPORT_DIR/report.json`` exactly as in ../shared/DESIGN.md (plus the
baselines' numbers under ``"baselines"``), ``report.md`` and PNG plots.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np

from .io.manifest import Section, load_section, read_manifest
from .io.spots import shared_genes
from .metrics import pearson_columns, summarise_pearson


def _sections(manifest) -> list[Section]:
    if isinstance(manifest, (list, tuple)):
        return list(manifest)
    return read_manifest(manifest)


def prepare_sections_steps(sections: list[Section], window_um: float, px: int, min_tissue: float = 0.3,
                           stain_norm: bool = False) -> Generator[dict, None, tuple]:
    """Open every section and cut its spot patches; returns ``(list[SectionData], stain_target)``.

    Genes are restricted to those all sections share (in the first section's order).
    """
    from .train.expression import prepare_section

    opened = []
    for i, sec in enumerate(sections):
        yield {"stage": "open", "msg": f"opening {sec.section} ({i + 1}/{len(sections)})"}
        opened.append((sec, *load_section(sec)))
    shared = list(map(str, opened[0][2].var_names))
    for _, _, ad in opened[1:]:
        shared = shared_genes(shared, ad)
    target, transform = None, None
    out = []
    for i, (sec, pyr, ad) in enumerate(opened):
        if stain_norm and transform is None:
            from .data.patches import extract_patches, macenko_fit, macenko_normaliser

            sample = extract_patches(pyr, np.asarray(ad.obsm["spatial"])[:64], window_um, px)
            target = macenko_fit(sample.reshape(-1, px, 3))
            transform = macenko_normaliser(target)
        yield {"stage": "patches", "msg": f"cutting {ad.n_obs} patches of {sec.section}"}
        out.append(prepare_section(sec.section, pyr, ad, window_um, px, genes=shared,
                                   min_tissue=min_tissue, transform=transform))
        pyr.close()
    return out, target


def train_from_manifest_steps(manifest, out_dir, cfg, resume: bool = False) -> Generator[dict, None, dict]:
    """Open the sections of ``manifest`` (a CSV path or Sections), then train (events as in train_steps)."""
    from .train.expression import train_steps

    data, target = yield from prepare_sections_steps(_sections(manifest), cfg.window_um, cfg.px,
                                                     cfg.min_tissue, cfg.stain_norm)
    if target is not None:
        cfg.extra["stain_target"] = target
    return (yield from train_steps(data, out_dir, cfg, resume=resume))


def evaluate_steps(model_dir, manifest, out_dir, device: str = "auto",
                   baselines: bool = True, plots: bool = True) -> Generator[dict, None, dict]:
    """Per-gene Pearson across the spots of every section of ``manifest``; writes the report."""
    from .models.artifact import atomic_write_json
    from .models.expression import ExpressionModel
    from .train.baselines import Baselines
    from .train.expression import prepare_section

    model = ExpressionModel.load(model_dir, device)
    genes, hvg50 = model.genes, model.meta.get("hvg50", [])
    base = Baselines(model_dir, model.device) if baselines and Baselines.available(model_dir) else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = model.patch_transform()
    per = {"model": {}, "ridge": {}, "mean": {}}
    sections_out, scatter = {}, {}
    for i, sec in enumerate(_sections(manifest)):
        yield {"stage": "open", "msg": f"evaluating {sec.section} ({i + 1})"}
        pyr, ad = load_section(sec)
        have = shared_genes(genes, ad)
        if not have:
            from .errors import UnknownGeneError

            raise UnknownGeneError(genes[0], [])
        sd = prepare_section(sec.section, pyr, ad, model.window_um, model.px, genes=have,
                             min_tissue=model.meta["training"]["config"].get("min_tissue", 0.3),
                             transform=transform)
        pyr.close()
        gi = [genes.index(g) for g in have]
        pred = model.predict(sd.patches)[:, gi]
        r = pearson_columns(pred, sd.expr)
        per["model"][sec.section] = {g: _f(v) for g, v in zip(have, r)}
        sections_out[sec.section] = {"n_spots": int(len(sd.patches)), "pearson": per["model"][sec.section]}
        scatter[sec.section] = (have, pred, sd.expr)
        if base is not None:
            bp = base.predict(sd.patches)
            per["ridge"][sec.section] = {g: _f(v) for g, v in zip(have, pearson_columns(bp["ridge"][:, gi], sd.expr))}
            per["mean"][sec.section] = {g: 0.0 for g in have}  # constant prediction: r undefined -> 0
            mse = {k: float(((bp[k][:, gi] - sd.expr) ** 2).mean()) for k in ("mean", "ridge")}
            mse["model"] = float(((pred - sd.expr) ** 2).mean())
            sections_out[sec.section]["mse"] = mse
        yield {"stage": "section", "section": sec.section, "n_spots": int(len(sd.patches)),
               "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")}
    summary, med = summarise_pearson(per["model"], genes, hvg50)
    report = {"sections": sections_out, "summary": summary,
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


def _f(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


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
    lines += ["", "| section | spots | mean r |", "|---|---|---|"]
    for name, sec in report["sections"].items():
        vals = [v for v in sec["pearson"].values() if v is not None]
        lines.append(f"| {name} | {sec['n_spots']} | {_fmt(np.mean(vals) if vals else float('nan'))} |")
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
