"""Transcriptome-supervised morphology segmenter: patch classifiers (one per patch size), trained
from scratch; dense prediction by sliding window gives class-probability maps.

Like the seed study, several patch sizes are trained; the model keeps the best by validation
balanced accuracy, or the ensemble (mean of probabilities) when that is better.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TrainingError

KIND = "segmenter"


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


def _net(backbone: str, n_classes: int, mean=(0.5,) * 3, std=(0.25,) * 3):
    import torch
    from torch import nn

    from ..models.backbones import build_backbone

    class PatchClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build_backbone(backbone)
            self.dropout = nn.Dropout(0.2)
            self.head = nn.Linear(self.backbone.num_features, n_classes)
            self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            return self.head(self.dropout(self.backbone((x - self.pixel_mean) / self.pixel_std)))

    return PatchClassifier()


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


def prepare_seg_sections(sections, cfg: SegConfig, regions: dict | None = None) -> Generator[dict, None, list]:
    """Open sections, derive spot classes (jointly for clustering), cut patches at every window."""
    import anndata as ad

    from ..data.patches import extract_patches, tissue_fraction_at, tissue_mask
    from ..io.manifest import load_section
    from .classes import BACKGROUND, apply_regions, classes_from_clusters, spot_classes

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
    from ..models.expression import resolve_device, to_tensor
    from .classes import BACKGROUND

    out = Path(out_dir)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    names = [s.name for s in sections]
    if len(sections) > 1:
        val_name = cfg.val_section or names[-1]
        if val_name not in names:
            raise TrainingError(f"validation section {val_name!r} is not among {names}")
        tr = [s for s in sections if s.name != val_name]
        va = [s for s in sections if s.name == val_name]
    else:
        s = sections[0]
        perm = np.random.default_rng(cfg.seed).permutation(len(s.xy))
        nv = max(2, int(0.2 * len(perm)))
        sub = lambda ix, tag: SegSection(s.name + tag, s.xy[ix], s.labels[ix],  # noqa: E731
                                         {w: p[ix] for w, p in s.patches.items()})
        tr, va = [sub(np.sort(perm[nv:]), "")], [sub(np.sort(perm[:nv]), ":val")]
        val_name = va[0].name
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
    for wi, win in enumerate(cfg.windows_um):
        Xtr = np.concatenate([s.patches[win] for s in tr])
        Xva = np.concatenate([s.patches[win] for s in va])
        pix = Xtr.reshape(-1, 3)[:: max(1, Xtr.size // 3 // 100_000)].astype(np.float32) / 255
        net = _net(cfg.backbone, len(classes), tuple(pix.mean(0)), tuple(pix.std(0) + 1e-3)).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps * cfg.epochs)
        gen = torch.Generator().manual_seed(cfg.seed + wi)
        best, best_state, best_probs = -1.0, None, None
        for epoch in range(cfg.epochs):
            net.train()
            order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(cfg.seed * 100 + epoch)).numpy()
            t0, tot, correct, seen = time.perf_counter(), 0.0, 0, 0
            for k in range(steps):
                idx = np.sort(order[k * cfg.batch_size:(k + 1) * cfg.batch_size])
                if len(idx) < 2:
                    continue
                x = to_tensor(Xtr[idx], device)
                if cfg.augment:
                    x = augment_batch(x, gen)
                y = torch.from_numpy(ytr[idx]).to(device)
                logits = net(x)
                loss = torch.nn.functional.cross_entropy(logits, y, weight=weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(idx)
                yield {"stage": "step", "window_um": win, "epoch": epoch, "step": k + 1, "steps": steps,
                       "loss": float(loss.detach())}
            probs = _predict_probs(net, Xva, device)
            acc = balanced_accuracy(probs.argmax(1)[vmask], yva[vmask], len(classes))
            if acc > best:
                best, best_probs = acc, probs
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            yield {"stage": "epoch", "window_um": win, "epoch": epoch, "epochs": cfg.epochs,
                   "train_loss": tot / max(1, seen), "train_acc": correct / max(1, seen), "val_bal_acc": acc,
                   "metric": acc, "patches_per_s": seen / (time.perf_counter() - t0),
                   "best": acc >= best}
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


def _predict_probs(net, X, device, batch=256) -> np.ndarray:
    import torch

    from ..models.expression import to_tensor

    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            out.append(torch.softmax(net(to_tensor(X[i:i + batch], device)), 1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


class Segmenter:
    """A saved segmenter for dense prediction; duck-types the expression model for the region runner
    (``genes`` are the class names, ``predict_centres`` returns class probabilities)."""

    def __init__(self, nets, meta, device):
        self.nets, self.meta, self.device = nets, meta, device
        self.classes = list(meta["classes"])
        self.genes = self.classes
        self.windows = [float(w) for w in meta["windows_um"]]
        self.window_um = max(self.windows)
        self.px = int(meta["px"])

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str | None = "auto") -> "Segmenter":
        from ..models.artifact import load_artifact, load_state_strict
        from ..models.expression import resolve_device

        state, meta = load_artifact(model_dir, kind=KIND)
        dev = resolve_device(device)
        nets = []
        for i in range(len(meta["windows_um"])):
            net = _net(meta["backbone"], len(meta["classes"]))
            load_state_strict(net, {k[len(f"w{i}."):]: v for k, v in state.items() if k.startswith(f"w{i}.")},
                              str(model_dir))
            nets.append(net.to(dev).eval())
        return cls(nets, meta, dev)

    def patch_transform(self):
        return None

    def predict_centres(self, pyr, centres: np.ndarray, batch_size: int = 256) -> np.ndarray:
        from ..data.patches import extract_patches

        probs = [_predict_probs(net, extract_patches(pyr, centres, w, self.px), self.device, batch_size)
                 for net, w in zip(self.nets, self.windows)]
        return np.mean(probs, axis=0)
