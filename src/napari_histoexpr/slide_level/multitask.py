"""MTM-style multi-task expression: one model over slides of several tissues (or datasets), whose
shared tile features are scaled and shifted per tissue (FiLM) before the gene head; slide
expression is the mean of the tile predictions (bulk is an average over the section).

Evaluation follows MTM: on held-out patients, the **sample-level r** (per slide, across genes) and
the **gene-level r** (per gene, across a tissue's slides), each against per-tissue single-task
models of the same architecture trained on that tissue alone.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..errors import TrainingError
from ..metrics import named_values, nanmean_or_none, pearson_columns
from .bags import Bag, Projector, cross_validate, feature_meta, log_targets
from .he2rna import TileModel, fit_tile_net


class MultiTask(TileModel):
    kind = "mtm"


def train_multitask(bags: list[Bag], Y: np.ndarray, genes: list[str], tissues: list[str], epochs: int = 150,
                    lr: float = 1e-3, hidden: int = 128, n_components: int = 32, seed: int = 0, device="auto",
                    label: str = "") -> Generator[dict, None, MultiTask]:
    """Train on ``bags`` of slides from ``tissues`` (one name per slide) with raw bulk ``Y``."""
    from ..models.runtime import resolve_device

    if len(bags) < 4:
        raise TrainingError(f"multi-task training needs at least 4 slides, got {len(bags)}")
    if any(not t for t in tissues):
        raise TrainingError("every slide needs a tissue (cohort column 'tissue') for the multi-task model")
    names = sorted(set(tissues))
    dev = resolve_device(device)
    y = log_targets(Y)
    mean, std = y.mean(0), y.std(0) + 1e-6
    proj = Projector.fit([b.feats for b in bags], n_components, seed)
    meta = {"kind": MultiTask.kind, "genes": list(genes), "tissues": names, "dim": proj.dim, "hidden": hidden,
            "pooling": "mean", "target": "log1p(bulk expression)", "target_mean": mean.tolist(),
            "target_std": std.tolist(), "features": feature_meta(bags), "n_train_slides": len(bags),
            "epochs": epochs, "seed": seed}
    net = yield from fit_tile_net([proj(b.feats) for b in bags], (y - mean) / std, meta, epochs, lr, seed=seed,
                                  device=dev, tissue=np.array([names.index(t) for t in tissues]), label=label)
    return MultiTask(net, proj, meta, dev)


def sample_level_r(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per slide: Pearson r across genes."""
    return pearson_columns(np.asarray(pred).T, np.asarray(true).T)


def evaluate_multitask_steps(slides, bags: list[Bag], Y: np.ndarray, genes: list[str], k: int = 5, seed: int = 0,
                             single_task: bool = True, **train_kw) -> Generator[dict, None, dict]:
    """Patient-level k-fold over the whole cohort; MTM's sample- and gene-level r per tissue on the
    held-out slides, for the multi-task model and (``single_task``) per-tissue single-task models."""
    tissues = [s.tissue or "" for s in slides]
    if any(not t for t in tissues):
        raise TrainingError("every slide needs a tissue (cohort column 'tissue') for the multi-task model")
    names = sorted(set(tissues))
    y = log_targets(Y)
    variants = ["multi_task"] + (["single_task"] if single_task else [])
    pred = {v: np.full_like(y, np.nan) for v in variants}

    def run_fold(f, train, test):
        m = yield from train_multitask([bags[i] for i in train], Y[train], genes, [tissues[i] for i in train],
                                       seed=seed + f, label=f"multi-task fold {f + 1}/{k}", **train_kw)
        pred["multi_task"][test] = m.predict([bags[i] for i in test], [tissues[i] for i in test])
        if single_task:
            for t in names:
                tr = [i for i in train if tissues[i] == t]
                te = [i for i in test if tissues[i] == t]
                if not te:
                    continue
                if len(tr) < 4:
                    raise TrainingError(f"tissue {t!r} has {len(tr)} training slides in fold {f + 1}; "
                                        "a single-task model needs 4 (use fewer folds)")
                st = yield from train_multitask([bags[i] for i in tr], Y[tr], genes, [t] * len(tr), seed=seed + f,
                                                label=f"single-task {t} fold {f + 1}/{k}", **train_kw)
                pred["single_task"][te] = st.predict([bags[i] for i in te], [t] * len(te))
        rec = {}
        for v in variants:
            rec[f"sample_r_{v}"] = nanmean_or_none(sample_level_r(pred[v][test], y[test]))
        return rec

    folds = yield from cross_validate(slides, k, seed, run_fold)
    per_tissue = {}
    for t in names:
        idx = np.array([i for i in range(len(slides)) if tissues[i] == t])
        per_tissue[t] = {"n_slides": int(len(idx))}
        for v in variants:
            g = pearson_columns(pred[v][idx], y[idx]) if len(idx) > 2 else np.full(len(genes), np.nan)
            per_tissue[t][v] = {"sample_r_mean": nanmean_or_none(sample_level_r(pred[v][idx], y[idx])),
                                "gene_r_mean": nanmean_or_none(g), "gene_r_median": float(np.nanmedian(g)),
                                "gene_r": named_values(genes, g)}
    return {"model": "mtm", "n_slides": len(slides), "k": k, "tissues": names, "genes": genes, "folds": folds,
            "per_tissue": per_tissue,
            "predictions": {v: {slides[i].id: dict(zip(genes, map(float, pred[v][i]))) for i in range(len(slides))}
                            for v in variants}}
