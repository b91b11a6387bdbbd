"""Training the transcriptome-supervised morphology segmenter: patch classifiers (one per patch size,
:class:`~napari_histoexpr.models.segmenter.PatchClassifier`), trained from scratch on spot classes;
dense prediction (:mod:`napari_histoexpr.segment.evaluate`) gives class-probability maps.

Like the seed study, several patch sizes are trained; the model keeps the best by validation
balanced accuracy, or the ensemble (mean of probabilities) when that is better.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TrainingError


@dataclass
class SegConfig:
    classes: dict = field(default_factory=lambda: {"source": "column", "column": "cluster"})
    windows_um: tuple = (50.0, 100.0)
    px: int = 64
    backbone: str = "resnet18"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    background_fraction: float = 0.15  # background samples per labelled spot
    val_section: str | None = None
    device: str = "auto"
    seed: int = 0
    augment: bool = True


def background_points(pyr, n: int, rng, margin_px: float) -> np.ndarray:
    """``n`` level-0 ``(x, y)`` points off tissue (whole patch on glass), inside the slide."""
    from ..data.patches import tissue_fraction_at, tissue_mask

    mask, ds = tissue_mask(pyr)
    h, w = pyr.level0_shape
    cand = np.stack([rng.uniform(margin_px, w - margin_px, n * 20), rng.uniform(margin_px, h - margin_px, n * 20)], 1)
    frac = tissue_fraction_at(mask, ds, cand, margin_px)
    cand = cand[frac == 0]
    return cand[:n]


@dataclass
class SegSection:
    name: str
    xy: np.ndarray
    labels: np.ndarray  # class names (object)
    patches: dict  # window_um -> (N, px, px, 3)

    def subset(self, index: np.ndarray, name: str | None = None) -> "SegSection":
        return SegSection(name or self.name, self.xy[index], self.labels[index],
                          {w: p[index] for w, p in self.patches.items()})

    def __len__(self) -> int:
        return len(self.xy)


def prepare_seg_sections(sections, cfg: SegConfig, regions: dict | None = None) -> Generator[dict, None, list]:
    """Open sections, derive spot classes (jointly for clustering), cut patches at every window."""
    import anndata as ad

    from ..data.patches import extract_patches, tissue_fraction_at, tissue_mask
    from ..io.sections import load_section
    from ..segment.classes import (
        BACKGROUND,
        apply_regions,
        classes_from_clusters,
        spot_classes,
    )

    opened = []
    for i, sec in enumerate(sections):
        yield {"stage": "open", "msg": f"opening {sec.section} ({i + 1}/{len(sections)})"}
        opened.append((sec, *load_section(sec)))
    spec = cfg.classes
    if spec["source"] == "clusters":  # cluster all sections together so labels agree
        shared = sorted(set.intersection(*[set(map(str, a.var_names)) for _, _, a in opened]))
        joint = ad.concat([a[:, shared] for _, _, a in opened], label="_section",
                          keys=[s.section for s, _, _ in opened],
                          index_unique="|")
        lab = classes_from_clusters(joint, spec["method"], spec["n_clusters"], spec["resolution"], cfg.seed)
        per = {s.section: lab[joint.obs["_section"] == s.section].to_numpy() for s, _, _ in opened}
    else:
        per = {s.section: spot_classes(a, spec).to_numpy() for s, _, a in opened}
    rng = np.random.default_rng(cfg.seed)
    out = []
    for sec, pyr, adata in opened:
        xy = np.asarray(adata.obsm["spatial"], float)
        labels = np.asarray(per[sec.section], dtype=object)
        if regions and sec.section in regions:
            import pandas as pd

            labels = apply_regions(pd.Series(labels), xy, regions[sec.section]).to_numpy()
        mask, mds = tissue_mask(pyr)
        keep = np.array([lab is not None and str(lab) != "nan" for lab in labels])
        keep &= tissue_fraction_at(mask, mds, xy, 25.0 / pyr.world_mpp) > 0.3
        xy, labels = xy[keep], labels[keep]
        nb = int(round(cfg.background_fraction * len(xy)))
        bg = background_points(pyr, nb, rng, max(cfg.windows_um) / 2 / pyr.world_mpp)
        xy = np.concatenate([xy, bg]) if len(bg) else xy
        labels = np.concatenate([labels, np.array([BACKGROUND] * len(bg), dtype=object)])
        yield {"stage": "patches", "msg": f"{sec.section}: {keep.sum()} labelled spots + {len(bg)} background"}
        patches = {w: extract_patches(pyr, xy, w, cfg.px) for w in cfg.windows_um}
        out.append(SegSection(sec.section, xy, labels, patches))
        pyr.close()
    return out


def balanced_accuracy(pred: np.ndarray, true: np.ndarray, n_classes: int) -> float:
    accs = [(pred[true == c] == c).mean() for c in range(n_classes) if (true == c).any()]
    return float(np.mean(accs)) if accs else 0.0


def train_segmenter_steps(sections: list[SegSection], out_dir, cfg: SegConfig) -> Generator[dict, None, dict]:
    """Train one classifier per window; yields events; saves the artifact; returns a summary."""
    import torch

    from ..data.patches import augment_batch
    from ..models.artifact import atomic_write_json, save_artifact
    from ..models.runtime import resolve_device
    from ..models.segmenter import KIND, PatchClassifier, class_probabilities
    from ..segment.classes import BACKGROUND
    from .loop import epoch_batches, fit_epoch, pixel_stats, split_validation

    out = Path(out_dir)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tr, va, val_name = split_validation(sections, cfg.val_section, 0.2, cfg.seed)
    classes = [BACKGROUND] + sorted({str(lab) for s in tr for lab in s.labels} - {BACKGROUND})
    if len(classes) < 2:
        raise TrainingError("need at least one tissue class besides background")
    cidx = {c: i for i, c in enumerate(classes)}
    ytr = np.concatenate([[cidx[str(lab)] for lab in s.labels] for s in tr]).astype(np.int64)
    yva = np.array([cidx.get(str(lab), -1) for s in va for lab in s.labels], np.int64)
    vmask = yva >= 0  # validation spots of classes unseen in training are not scored
    counts = np.bincount(ytr, minlength=len(classes)).astype(np.float32)
    weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(classes), device=device)
    yield {"stage": "data", "msg": f"{len(ytr)} training / {int(vmask.sum())} validation samples, "
           f"classes {classes} (counts {counts.astype(int).tolist()})"}
    nets, results, val_probs = {}, {}, {}
    steps = max(1, math.ceil(len(ytr) / cfg.batch_size))
    ytr_t = torch.from_numpy(ytr)
    for wi, win in enumerate(cfg.windows_um):
        Xtr = np.concatenate([s.patches[win] for s in tr])
        Xva = np.concatenate([s.patches[win] for s in va])
        mean, std = pixel_stats(Xtr, 100_000)
        net = PatchClassifier(cfg.backbone, len(classes), tuple(mean), tuple(std)).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps * cfg.epochs)
        gen = torch.Generator().manual_seed(cfg.seed + wi)
        augment = (lambda x, g=gen: augment_batch(x, g)) if cfg.augment else None
        correct = [0]

        def loss_of(net, x, idx):
            y = ytr_t[idx].to(device)
            logits = net(x)
            correct[0] += int((logits.argmax(1) == y).sum())
            return torch.nn.functional.cross_entropy(logits.float(), y, weight=weights)

        best, best_state, best_probs = -1.0, None, None
        for epoch in range(cfg.epochs):
            correct[0] = 0
            batches = epoch_batches(len(ytr), cfg.batch_size, cfg.seed * 100 + epoch)
            fit = yield from fit_epoch(net, Xtr, batches, loss_of, opt, sched, device, augment,
                                       info={"window_um": win, "epoch": epoch})
            probs = class_probabilities(net, Xva, device)
            acc = balanced_accuracy(probs.argmax(1)[vmask], yva[vmask], len(classes))
            if acc > best:
                best, best_probs = acc, probs
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            yield {"stage": "epoch", "window_um": win, "epoch": epoch, "epochs": cfg.epochs,
                   "train_loss": fit["loss"], "train_acc": correct[0] / max(1, fit["seen"]), "val_bal_acc": acc,
                   "metric": acc, "patches_per_s": fit["seen"] / fit["seconds"], "best": acc >= best}
        net.load_state_dict(best_state)
        nets[win], results[win], val_probs[win] = net, best, best_probs
    ens = np.mean([val_probs[w] for w in cfg.windows_um], axis=0)
    ens_acc = balanced_accuracy(ens.argmax(1)[vmask], yva[vmask], len(classes))
    best_win = max(results, key=results.get)
    mode = "ensemble" if len(cfg.windows_um) > 1 and ens_acc > results[best_win] else "best"
    used = list(cfg.windows_um) if mode == "ensemble" else [best_win]
    state = {f"w{i}.{k}": v for i, w in enumerate(used) for k, v in nets[w].state_dict().items()}
    meta = {"kind": KIND, "backbone": cfg.backbone, "classes": classes, "windows_um": used, "px": cfg.px,
            "mode": mode, "class_spec": cfg.classes,
            "validation": {"section": val_name, "bal_acc_by_window": {str(k): v for k, v in results.items()},
                           "bal_acc_ensemble": ens_acc},
            "training": {"sections": [s.name for s in tr], "config": {k: v for k, v in asdict(cfg).items()}}}
    save_artifact(out, state, meta)
    summary = {"mode": mode, "windows_um": used, "val_bal_acc": max(ens_acc, results[best_win]) if mode == "ensemble"
               else results[best_win], "classes": classes, "by_window": results, "ensemble": ens_acc,
               "device": str(device)}
    atomic_write_json(out / "training.json", summary)
    yield {"stage": "done", "msg": f"segmenter saved ({mode}, windows {used} µm, val balanced acc "
           f"{summary['val_bal_acc']:.3f})"}
    return summary
