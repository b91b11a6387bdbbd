"""Reports of the slide-level models: ``report.json`` (atomic) and their PNG figures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes, atomic_write_json
from ..metrics import kaplan_meier, logrank_test


def _figure(w=9.0, h=4.0, n=2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(w, h))
    return plt, fig, np.atleast_1d(axes)


def _save(plt, fig, path: Path) -> str:
    import io


    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _write(report: dict, out: str | os.PathLike, figures: list[str]) -> Path:
    report = dict(report, figures=figures)
    atomic_write_json(Path(out) / "report.json", report)
    return Path(out) / "report.json"


def write_bulk_report(report: dict, out: str | os.PathLike, bulk_log1p: dict[str, dict[str, float]]) -> Path:
    """HE2RNA: per-gene r over folds (best 30) and predicted vs measured for the best gene."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per = {g: v for g, v in report["per_gene_mean_r"].items() if v is not None}
    plt, fig, (a, b) = _figure()
    top = sorted(per, key=per.get, reverse=True)[:30]
    a.barh(range(len(top))[::-1], [per[g] for g in top], color="#3b75af")
    a.set_yticks(range(len(top))[::-1], top, fontsize=7)
    a.set_xlabel("Pearson r across held-out slides (mean over folds)")
    a.set_title(f"HE2RNA, {report['k']}-fold by patient, {report['n_slides']} slides")
    if top:
        g = top[0]
        ids = list(report["predictions"])
        p = np.array([report["predictions"][i][g] for i in ids])
        t = np.array([bulk_log1p[i][g] for i in ids])
        b.scatter(t, p, s=18, color="#d1495b")
        lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
        b.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        b.set_xlabel(f"measured log1p {g}")
        b.set_ylabel(f"predicted (out of fold) log1p {g}")
        b.set_title(f"{g}: pooled r = {report['pooled_pearson'][g]:.2f}")
    return _write(report, out, [_save(plt, fig, out / "bulk_pearson.png")])


def risk_groups(risk: np.ndarray) -> np.ndarray:
    """High (True) / low risk split at the median predicted risk."""
    return np.asarray(risk) > np.median(risk)


def write_survival_report(report: dict, out: str | os.PathLike) -> Path:
    """G-HANet: Kaplan-Meier of the out-of-fold high/low risk groups (log-rank p) and the per-fold
    C-index with and without the reconstruction branch."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    risk = np.array(list(report["risk"].values()))
    time, event = np.array(report["time"]), np.array(report["event"], bool)
    high = risk_groups(risk)
    chi2, p = logrank_test(time[high], event[high], time[~high], event[~high])
    report = dict(report, km={"groups": "split at the median out-of-fold risk", "n_high": int(high.sum()),
                              "n_low": int((~high).sum()), "logrank_chi2": chi2, "logrank_p": p})
    plt, fig, (a, b) = _figure()
    for mask, name, colour in ((~high, "low risk", "#3b75af"), (high, "high risk", "#d1495b")):
        ts, s = kaplan_meier(time[mask], event[mask])
        a.step(ts, s, where="post", color=colour, label=f"{name} (n={mask.sum()})")
        cens = mask & ~event
        a.plot(time[cens], np.interp(time[cens], ts, s, left=1.0), "|", color=colour, ms=8)
    a.set_ylim(0, 1.05)
    a.set_xlabel("time")
    a.set_ylabel("survival")
    a.set_title(f"G-HANet risk groups (held out), log-rank p = {p:.2g}")
    a.legend(loc="lower left")
    folds = report["folds"]
    x = np.arange(len(folds))
    b.bar(x - 0.2, [f["c_index"] for f in folds], 0.4, label="G-HANet", color="#3b75af")
    if folds and "c_index_no_reconstruction" in folds[0]:
        b.bar(x + 0.2, [f["c_index_no_reconstruction"] for f in folds], 0.4, label="without reconstruction",
              color="0.65")
    b.axhline(0.5, color="0.3", lw=0.8, ls=":")
    b.set_xticks(x, [f"fold {i + 1}" for i in x])
    b.set_ylim(0, 1)
    b.set_ylabel("censored C-index (held-out patients)")
    b.legend(loc="lower right")
    return _write(report, out, [_save(plt, fig, out / "km.png")])


def write_multitask_report(report: dict, out: str | os.PathLike) -> Path:
    """MTM: sample-level and gene-level r per tissue, multi-task vs single-task."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt, fig, axes = _figure()
    tissues = report["tissues"]
    x = np.arange(len(tissues))
    for ax, key, title in ((axes[0], "sample_r_mean", "sample-level r (across genes)"),
                           (axes[1], "gene_r_mean", "gene-level r (across slides)")):
        for off, v, colour in ((-0.2, "multi_task", "#3b75af"), (0.2, "single_task", "0.65")):
            vals = [report["per_tissue"][t].get(v, {}).get(key) for t in tissues]
            if any(val is not None for val in vals):
                ax.bar(x + off, [np.nan if val is None else val for val in vals], 0.4,
                       label=v.replace("_", "-"), color=colour)
        ax.set_xticks(x, [f"{t} (n={report['per_tissue'][t]['n_slides']})" for t in tissues])
        ax.set_title(title)
        ax.legend(loc="lower right")
    return _write(report, out, [_save(plt, fig, out / "multitask.png")])
