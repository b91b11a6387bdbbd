"""Training the expression model (BrST-Net style) from sections a user already has.

:func:`train_steps` is a generator: it yields progress events (dicts) and returns a summary, so the
CLI prints them and the napari panel runs it in a ``thread_worker`` (closing the generator
cancels; the last completed epoch's checkpoint and the best model stay on disk). Every epoch
writes ``checkpoint.pt`` atomically (tensors and plain values only, loaded with
``weights_only=True``), so ``resume=True`` continues an interrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.patches import augment_batch
from ..data.section_data import DEFAULT_SPOT_UM, SectionData, prepare_sections_steps
from ..errors import TrainingError
from ..files import atomic_torch_save, atomic_write_json
from ..io.manifest import as_sections
from ..metrics import pearson_columns
from ..models.artifact import save_artifact
from .loop import epoch_batches, fit_epoch, make_optimizer, pixel_stats, raw_throughput, split_validation, warmup_cosine


@dataclass
class TrainConfig:
    backbone: str = "resnet18"
    n_genes: int = 250
    genes: list[str] | None = None  # explicit target genes (else the top n_genes by mean)
    max_aux: int = 1000  # auxiliary genes: the next expressed genes (0 = no aux head)
    aux_min_detect: float = 0.1  # aux genes must be detected in >= this fraction of spots
    aux_weight: float = 0.3
    window_um: float = 150.0
    px: int = 224
    min_tissue: float = 0.3
    epochs: int = 20  # chosen for new patients: docs/benchmarks.md, "Defaults for new patients"
    batch_size: int = 32
    optimizer: str = "adamw"  # or "sgd"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    patience: int = 5  # early stopping (only with a held-out validation set)
    val_section: str | None = None  # hold this section out for early stopping
    holdout: bool = False  # hold out the last section (or 15 % of spots if only one) for early stopping
    ema_epochs: float = 2.0  # without a held-out set: the model is an EMA of the weights (horizon, epochs)
    augment: bool = True
    hed_sigma: float = 0.05
    stain_norm: bool = False  # Macenko-normalise every patch to the first training section
    init: str | None = None  # a user's weights file for the backbone
    device: str = "auto"
    seed: int = 0
    baselines: bool = True
    #: train a sub-spot model with cells of this many µm (None: a spot-level model)
    subspot_um: float | None = None
    pool: int = 1  # train on pseudo-spots of pool x pool neighbouring spots (evaluation protocol)
    subspot_smooth: float = 0.7  # sub-spot cells read through a Gaussian of this sigma (cells)
    extra: dict = field(default_factory=dict)


def epoch_line(ev: dict) -> str:
    """One line for an expression-training ``epoch`` event (CLI, panels, demo)."""
    line = f"epoch {ev['epoch'] + 1}/{ev['epochs']}: train loss {ev['train_loss']:.4f}"
    if "val_mean_r" not in ev:
        return line + " (saved)"
    return (line + f", val loss {ev['val_loss']:.4f}, val mean r {ev['val_mean_r']:.3f}"
            + (" (best, saved)" if ev.get("best") else ""))


def summary_line(summary: dict) -> str:
    """One line for a finished training run."""
    if summary.get("best_val_mean_r") is None:
        return f"{len(summary['history'])} epochs on all sections, the averaged weights saved"
    return f"best epoch {summary['best_epoch'] + 1}, validation mean r {summary['best_val_mean_r']:.3f}"


def choose_genes(train: list[SectionData], n_genes: int, max_aux: int, aux_min_detect: float,
                 genes: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Target genes (top ``n_genes`` by mean log1p expression over training spots), aux genes (the
    next expressed ones) and the 50 most variable target genes (fixed before any testing)."""
    shared = train[0].genes
    expr = np.concatenate([s.expr for s in train])
    mean = expr.mean(0)
    order = np.argsort(-mean, kind="stable")
    if genes:
        from ..errors import UnknownGeneError

        lookup = {g.upper(): i for i, g in enumerate(shared)}
        missing = [g for g in genes if g.upper() not in lookup]
        if missing:
            import difflib

            raise UnknownGeneError(missing[0], difflib.get_close_matches(missing[0], shared, 3))
        target_idx = [lookup[g.upper()] for g in genes]
    else:
        target_idx = [int(i) for i in order if mean[i] > 0][:n_genes]
    if not target_idx:
        raise TrainingError("no expressed genes shared by the training sections")
    tset = set(target_idx)
    detect = (expr > 0).mean(0)
    aux_idx = [int(i) for i in order if int(i) not in tset and detect[i] >= aux_min_detect][:max_aux]
    var = expr[:, target_idx].var(0)
    hvg = [shared[target_idx[i]] for i in np.argsort(-var, kind="stable")[:50]]
    return [shared[i] for i in target_idx], [shared[i] for i in aux_idx], hvg


def data_digest(sections: list[SectionData], cfg: TrainConfig) -> str:
    h = hashlib.sha256()
    for s in sections:
        h.update(s.name.encode())
        h.update(np.ascontiguousarray(s.patches[:, ::16, ::16]).tobytes())
        h.update(s.expr.sum(0).tobytes())
    h.update(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("epochs", "device", "extra")},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def train_steps(sections: list[SectionData], out_dir: str | os.PathLike, cfg: TrainConfig,
                resume: bool = False, sources=None) -> Generator[dict, None, dict]:
    """Train on ``sections`` (already prepared); yields events, returns the summary dict. The model's
    uncertainty is calibrated at the end (:mod:`.calibration`; ``sources``: the sections' manifest
    entries, to read the calibration features from the slides as dense maps read them)."""
    import copy

    import torch

    from ..models.backbones import load_init_weights
    from ..models.expression import KIND, ExpressionNet
    from ..models.runtime import predict_batches, resolve_device, uses_amp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not sections or sum(len(s.patches) for s in sections) < 8:
        raise TrainingError("too few spots under tissue to train (need at least 8)")
    device = resolve_device(cfg.device)
    amp = uses_amp(device)
    torch.manual_seed(cfg.seed)

    # ---- default: fit on every section, a fixed schedule, the EMA of the weights is the model ----
    # (--val-section / --holdout: a section, or 15 % of one section's spots, for early stopping)
    holdout = cfg.holdout or cfg.val_section is not None
    if holdout:
        train_secs, val_secs, val_name = split_validation(sections, cfg.val_section, 0.15, cfg.seed)
    else:
        train_secs, val_secs, val_name = list(sections), [], None
    genes, aux_genes, hvg50 = choose_genes(train_secs, cfg.n_genes, cfg.max_aux, cfg.aux_min_detect,
                                           cfg.genes)
    Xtr = np.concatenate([s.patches for s in train_secs])
    Ytr = np.concatenate([s.select(genes) for s in train_secs])
    Atr = np.concatenate([s.select(aux_genes) for s in train_secs]) if aux_genes else None
    Xva = np.concatenate([s.patches for s in val_secs]) if val_secs else Xtr[:0]
    Yva = np.concatenate([s.select(genes) for s in val_secs]) if val_secs else Ytr[:0]
    mean, std = Ytr.mean(0), Ytr.std(0) + 1e-6
    amean, astd = (Atr.mean(0), Atr.std(0) + 1e-6) if Atr is not None else (None, None)
    pixel_mean, pixel_std = pixel_stats(Xtr, 200_000)
    digest = data_digest(sections, cfg)
    split = (f"{len(Xtr)} training / {len(Xva)} validation spots ({val_name})" if holdout else
             f"{len(Xtr)} training spots (all sections; fixed {cfg.epochs}-epoch schedule, EMA weights)")
    yield {"stage": "data", "msg": f"{split}, {len(genes)} genes + {len(aux_genes)} aux",
           "n_train": len(Xtr), "n_val": len(Xva)}

    net = ExpressionNet(cfg.backbone, len(genes), len(aux_genes), pixel_mean=pixel_mean,
                        pixel_std=pixel_std)
    init_info = None
    if cfg.init:
        init_info = load_init_weights(net.backbone, cfg.init)
    net = net.to(device)
    if amp:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.optimizer, [p for p in net.parameters() if p.requires_grad], cfg.lr,
                         cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(Xtr) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = warmup_cosine(opt, total, min(steps_per_epoch, total // 10))
    ema = None
    if not holdout and cfg.ema_epochs > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        decay = 1.0 - 1.0 / max(1.0, cfg.ema_epochs * steps_per_epoch)
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    ckpt_path = out / "checkpoint.pt"
    start_epoch, best, best_epoch, history, bad = 0, -np.inf, -1, [], 0
    gen = torch.Generator().manual_seed(cfg.seed)  # augmentation draws
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("digest") != digest:
            raise TrainingError(f"{ckpt_path} is from other data or settings; remove it or train "
                                f"into a new folder")
        net.load_state_dict(ck["model"])
        if ema is not None and "ema" in ck:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optim"])
        sched.load_state_dict(ck["sched"])
        start_epoch, best, best_epoch = int(ck["epoch"]) + 1, float(ck["best"]), int(ck["best_epoch"])
        history, bad = json.loads(ck["history"]), int(ck["bad"])
        torch.set_rng_state(ck["torch_rng"])
        if "aug_rng" in ck:
            gen.set_state(ck["aug_rng"])
        yield {"stage": "resume", "msg": f"resuming after epoch {start_epoch}", "epoch": start_epoch}

    # on a copy: the timing run must not touch the weights' batch-norm statistics
    raw = raw_throughput(copy.deepcopy(net), cfg.px, min(cfg.batch_size, 64), device,
                         steps=3 if device.type == "cpu" else 20)
    ytr_z = torch.from_numpy((Ytr - mean) / std)
    atr_z = torch.from_numpy((Atr - amean) / astd) if Atr is not None else None

    sub = cfg.subspot_um
    if sub:  # every sample's footprint as weights over its patch's feature cells
        from ..models.expression import footprint_weights, pooled_features

        cells = Xtr.shape[1] // 32
        sm = cfg.subspot_smooth
        w_tr = torch.from_numpy(np.stack([footprint_weights(cells, sub, s.footprint(i), smooth_cells=sm)
                                          for s in train_secs for i in range(len(s))]))
        w_va = torch.from_numpy(np.stack([footprint_weights(cells, sub, s.footprint(i), smooth_cells=sm)
                                          for s in val_secs for i in range(len(s))] or [np.zeros((cells, cells))]))

    def forward(net, x, w=None):
        """``(main, aux)``: of the whole patch, or (sub-spot) of its cells averaged over ``w``."""
        if w is None:
            return net(x)
        f = net.dropout(pooled_features(net, x, w))
        return net.head(f), (net.aux_head(f) if net.aux_head is not None else None)

    def loss_of(net, x, idx):
        w = None
        if sub:
            w = w_tr[idx]
            if cfg.augment:  # the footprint turns with the patch
                x, w = augment_batch(x, gen, hed_sigma=cfg.hed_sigma, paired=w.to(x.device))
        pred, aux = forward(net, x, w)
        loss = torch.nn.functional.mse_loss(pred.float(), ytr_z[idx].to(device))
        if aux is not None:
            loss = loss + cfg.aux_weight * torch.nn.functional.mse_loss(aux.float(), atr_z[idx].to(device))
        return loss

    augment = (lambda x: augment_batch(x, gen, hed_sigma=cfg.hed_sigma)) if cfg.augment and not sub else None
    meta_base = {
        "kind": KIND, "backbone": cfg.backbone, "genes": genes, "aux_genes": aux_genes,
        "hvg50": hvg50, "target": {"transform": "log1p(counts / total * 1e4)", "zscore": True,
                                   "mean": mean.tolist(), "std": std.tolist()},
        "window_um": cfg.window_um, "input_px": cfg.px,
        "subspot": None if not sub else {
            "cell_um": sub, "cells": cfg.px // 32, "spot_um": train_secs[0].spot_um or DEFAULT_SPOT_UM,
            "smooth_cells": cfg.subspot_smooth,
            "aggregate": "mean over the cells inside the spot (area-weighted) of z-scored log1p expression"},
        "pool": cfg.pool,
        "input": {"mean": pixel_mean, "std": pixel_std, "range": "rgb uint8 / 255"},
        "stain_norm": cfg.extra.get("stain_target"),
        "training": {"sections": [s.name for s in train_secs], "validation": val_name,
                     "n_train": len(Xtr), "n_val": len(Xva), "digest": digest,
                     "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, "init": init_info},
    }
    for epoch in range(start_epoch, cfg.epochs):
        batches = epoch_batches(len(Xtr), cfg.batch_size, cfg.seed * 1000 + epoch)
        fit = yield from fit_epoch(net, Xtr, batches, loss_of, opt, sched, device, augment, clip=5.0,
                                   info={"epoch": epoch},
                                   after_step=None if ema is None else (lambda: ema.update_parameters(net)))
        rec = {"epoch": epoch, "train_loss": fit["loss"], "patches_per_s": fit["seen"] / fit["seconds"],
               "lr": sched.get_last_lr()[0]}
        if holdout:  # ---- validation: the best epoch is the model --------------------------------
            net.eval()
            if sub:
                pv = np.concatenate([predict_batches(lambda x, w=w_va[i:i + 128]: forward(net, x, w)[0],
                                                     Xva[i:i + 128], device, 128, len(genes))
                                     for i in range(0, len(Xva), 128)]) * std + mean
            else:
                pv = predict_batches(lambda x: net(x)[0], Xva, device, 128, len(genes)) * std + mean
            val_r = float(np.nan_to_num(pearson_columns(pv, Yva)).mean())
            val_loss = float((((pv - Yva) / std) ** 2).mean())
            rec.update(val_loss=val_loss, val_mean_r=val_r)
            improved = val_r > best
            if improved:
                best, best_epoch, bad = val_r, epoch, 0
                save_artifact(out, net.state_dict(), dict(meta_base, metrics={
                    "val_mean_r": val_r, "val_loss": val_loss, "epoch": epoch}))
            else:
                bad += 1
        else:  # ---- fixed schedule: every epoch's averaged weights are the model so far ---------
            improved, best_epoch = True, epoch
            weights = net.state_dict() if ema is None else ema.module.state_dict()
            save_artifact(out, weights, dict(meta_base, metrics={"train_loss": fit["loss"], "epoch": epoch,
                                                                 "ema_epochs": cfg.ema_epochs if ema else 0}))
        history.append(rec)
        ck = {"model": net.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
              "epoch": epoch, "best": best, "best_epoch": best_epoch, "bad": bad,
              "history": json.dumps(history), "digest": digest,
              "torch_rng": torch.get_rng_state(), "aug_rng": gen.get_state()}
        if ema is not None:
            ck["ema"] = ema.state_dict()
        atomic_torch_save(ck, ckpt_path)
        yield dict(rec, stage="epoch", epochs=cfg.epochs, best=improved)
        if holdout and bad >= cfg.patience:
            yield {"stage": "early_stop", "msg": f"no improvement for {bad} epochs; best epoch {best_epoch}"}
            break

    summary = {"best_epoch": best_epoch, "best_val_mean_r": best if holdout else None,
               "validation": val_name, "history": history,
               "device": str(device), "autocast": "bf16" if amp else "fp32", "raw_fwd_bwd_patches_per_s": raw,
               "train_patches_per_s": float(np.mean([h["patches_per_s"] for h in history])) if history else None}
    if cfg.baselines:
        yield {"stage": "baselines", "msg": "fitting baselines (mean, frozen encoder + PCA + ridge)"}
        from .baselines import fit_baselines

        fit_baselines(out, cfg, train_secs, val_secs, genes, device)
    from ..models.expression import ExpressionModel
    from .calibration import calibrate_steps

    yield from calibrate_steps(ExpressionModel.load(out, cfg.device), out, list(sections), sources=sources)
    atomic_write_json(out / "training.json", summary)
    return summary


def subspot_geometry(cell_um: float, footprint_um: float) -> tuple[float, int]:
    """``(window_um, px)`` of a sub-spot model's patches: the footprint plus a cell of context on each
    side, rounded up to an odd number of cells (so one cell sits at the centre), 32 px per cell."""
    cells = int(np.ceil((footprint_um + 2 * cell_um) / cell_um - 1e-6))
    cells += 1 - cells % 2
    return cells * cell_um, cells * 32


def train_from_manifest_steps(manifest, out_dir, cfg: TrainConfig, resume: bool = False
                              ) -> Generator[dict, None, dict]:
    """Open the sections of ``manifest`` (a CSV path or Sections), then train (events as in train_steps)."""

    geometry = None
    if cfg.subspot_um:
        geometry = lambda footprint_um: subspot_geometry(cfg.subspot_um, footprint_um)  # noqa: E731
    sources = as_sections(manifest)
    data, target, window = yield from prepare_sections_steps(sources, cfg.window_um, cfg.px,
                                                             cfg.min_tissue, cfg.stain_norm, cfg.pool, geometry)
    if cfg.subspot_um:
        cfg.window_um, cfg.px = window, data[0].patches.shape[1]
    if target is not None:
        cfg.extra["stain_target"] = target
    return (yield from train_steps(data, out_dir, cfg, resume=resume, sources=sources))
