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
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TrainingError
from ..io.spots import log1p_normalised
from ..metrics import pearson_columns


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
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adamw"  # or "sgd"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    patience: int = 5
    val_section: str | None = None  # default: the last section (or 15 % of spots if only one)
    augment: bool = True
    hed_sigma: float = 0.05
    stain_norm: bool = False  # Macenko-normalise every patch to the first training section
    init: str | None = None  # a user's weights file for the backbone
    device: str = "auto"
    seed: int = 0
    baselines: bool = True
    extra: dict = field(default_factory=dict)


@dataclass
class SectionData:
    name: str
    patches: np.ndarray  # (N, px, px, 3) uint8
    expr: np.ndarray  # (N, G) log1p-normalised expression of the shared genes
    spot_ids: list[str]
    xy: np.ndarray  # (N, 2) level-0 px
    genes: list[str]


def prepare_section(name: str, pyr, adata, window_um: float, px: int, genes: list[str] | None = None,
                    min_tissue: float = 0.3, transform=None, progress=None) -> SectionData:
    """Patches at the section's spots (background spots dropped) with their expression."""
    from ..data.patches import extract_patches, tissue_fraction_at, tissue_mask

    xy = np.asarray(adata.obsm["spatial"], float)
    mask, mds = tissue_mask(pyr)
    frac = tissue_fraction_at(mask, mds, xy, window_um / 2 / pyr.world_mpp * 0.5)
    h, w = pyr.level0_shape
    keep = (frac >= min_tissue) & (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)
    ad = adata[keep]
    genes = list(map(str, ad.var_names)) if genes is None else genes
    patches = extract_patches(pyr, xy[keep], window_um, px, progress=progress, transform=transform)
    return SectionData(name, patches, log1p_normalised(ad, genes), list(map(str, ad.obs_names)),
                       xy[keep], list(genes))


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


def _select(sec: SectionData, genes: list[str]) -> np.ndarray:
    idx = {g: i for i, g in enumerate(sec.genes)}
    return sec.expr[:, [idx[g] for g in genes]]


def data_digest(sections: list[SectionData], cfg: TrainConfig) -> str:
    h = hashlib.sha256()
    for s in sections:
        h.update(s.name.encode())
        h.update(np.ascontiguousarray(s.patches[:, ::16, ::16]).tobytes())
        h.update(s.expr.sum(0).tobytes())
    h.update(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("epochs", "device", "extra")},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def raw_throughput(net, px: int, batch: int, device, steps: int = 5, amp: bool = False) -> float:
    """Forward+backward patches/s of ``net`` on random input (no data pipeline), for comparison."""
    import torch

    x = torch.rand((batch, 3, px, px), device=device)
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    net.train()
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            y, aux = net(x)
            loss = y.float().pow(2).mean() + (aux.float().pow(2).mean() if aux is not None else 0)
        loss.backward()
        net.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def train_steps(sections: list[SectionData], out_dir: str | os.PathLike, cfg: TrainConfig,
                resume: bool = False) -> Generator[dict, None, dict]:
    """Train on ``sections`` (already prepared); yields events, returns the summary dict."""
    import torch

    from ..data.patches import augment_batch
    from ..models.artifact import atomic_write_json, save_artifact
    from ..models.backbones import load_init_weights
    from ..models.expression import KIND, ExpressionNet, resolve_device, to_tensor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not sections or sum(len(s.patches) for s in sections) < 8:
        raise TrainingError("too few spots under tissue to train (need at least 8)")
    device = resolve_device(cfg.device)
    amp = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    rng_split = np.random.default_rng(cfg.seed)

    # ---- split: a validation section (early stopping), else a random 15 % of spots -------------
    names = [s.name for s in sections]
    if cfg.val_section is not None and cfg.val_section not in names:
        raise TrainingError(f"validation section {cfg.val_section!r} is not among {names}")
    if len(sections) > 1:
        val_name = cfg.val_section or names[-1]
        train_secs = [s for s in sections if s.name != val_name]
        val_secs = [s for s in sections if s.name == val_name]
    else:
        s = sections[0]
        perm = rng_split.permutation(len(s.patches))
        nv = max(2, int(0.15 * len(perm)))
        vi, ti = np.sort(perm[:nv]), np.sort(perm[nv:])
        sub = lambda ix, tag: SectionData(f"{s.name}{tag}", s.patches[ix], s.expr[ix],  # noqa: E731
                                          [s.spot_ids[i] for i in ix], s.xy[ix], s.genes)
        train_secs, val_secs = [sub(ti, "")], [sub(vi, ":val")]
        val_name = val_secs[0].name
    genes, aux_genes, hvg50 = choose_genes(train_secs, cfg.n_genes, cfg.max_aux, cfg.aux_min_detect,
                                           cfg.genes)
    Xtr = np.concatenate([s.patches for s in train_secs])
    Ytr = np.concatenate([_select(s, genes) for s in train_secs])
    Atr = np.concatenate([_select(s, aux_genes) for s in train_secs]) if aux_genes else None
    Xva = np.concatenate([s.patches for s in val_secs])
    Yva = np.concatenate([_select(s, genes) for s in val_secs])
    mean, std = Ytr.mean(0), Ytr.std(0) + 1e-6
    amean, astd = (Atr.mean(0), Atr.std(0) + 1e-6) if Atr is not None else (None, None)
    pix = Xtr.reshape(-1, 3)[:: max(1, Xtr.size // 3 // 200_000)].astype(np.float32) / 255
    pixel_mean, pixel_std = pix.mean(0).tolist(), (pix.std(0) + 1e-3).tolist()
    digest = data_digest(sections, cfg)
    yield {"stage": "data", "msg": f"{len(Xtr)} training / {len(Xva)} validation spots ({val_name}), "
           f"{len(genes)} genes + {len(aux_genes)} aux", "n_train": len(Xtr), "n_val": len(Xva)}

    net = ExpressionNet(cfg.backbone, len(genes), len(aux_genes), pixel_mean=pixel_mean,
                        pixel_std=pixel_std)
    init_info = None
    if cfg.init:
        init_info = load_init_weights(net.backbone, cfg.init)
    net = net.to(device)
    if amp:
        net = net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise TrainingError(f"unknown optimizer {cfg.optimizer!r} (adamw or sgd)")
    steps_per_epoch = max(1, math.ceil(len(Xtr) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warm = min(steps_per_epoch, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else
        0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))

    ckpt_path = out / "checkpoint.pt"
    start_epoch, best, best_epoch, history, bad = 0, -np.inf, -1, [], 0
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("digest") != digest:
            raise TrainingError(f"{ckpt_path} is from other data or settings; remove it or train "
                                f"into a new folder")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        sched.load_state_dict(ck["sched"])
        start_epoch, best, best_epoch = int(ck["epoch"]) + 1, float(ck["best"]), int(ck["best_epoch"])
        history, bad = json.loads(ck["history"]), int(ck["bad"])
        torch.set_rng_state(ck["torch_rng"])
        yield {"stage": "resume", "msg": f"resuming after epoch {start_epoch}", "epoch": start_epoch}

    import copy

    # on a copy: the timing run must not touch the weights' batch-norm statistics
    raw = raw_throughput(copy.deepcopy(net), cfg.px, min(cfg.batch_size, 64), device,
                         steps=3 if device.type == "cpu" else 20, amp=amp)
    gen = torch.Generator().manual_seed(cfg.seed)  # augmentation draws
    if resume and ckpt_path.exists() and "aug_rng" in ck:
        gen.set_state(ck["aug_rng"])
    ytr_z = torch.from_numpy((Ytr - mean) / std)
    atr_z = torch.from_numpy((Atr - amean) / astd) if Atr is not None else None
    meta_base = {
        "kind": KIND, "backbone": cfg.backbone, "genes": genes, "aux_genes": aux_genes,
        "hvg50": hvg50, "target": {"transform": "log1p(counts / total * 1e4)", "zscore": True,
                                   "mean": mean.tolist(), "std": std.tolist()},
        "window_um": cfg.window_um, "input_px": cfg.px,
        "input": {"mean": pixel_mean, "std": pixel_std, "range": "rgb uint8 / 255"},
        "stain_norm": cfg.extra.get("stain_target"),
        "training": {"sections": [s.name for s in train_secs], "validation": val_name,
                     "n_train": len(Xtr), "n_val": len(Xva), "digest": digest,
                     "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, "init": init_info},
    }
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(Xtr), generator=g).numpy()
        t0, seen, tot_loss = time.perf_counter(), 0, 0.0
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            if len(idx) < 2:
                continue
            x = to_tensor(Xtr[idx], device)
            if cfg.augment:
                x = augment_batch(x, gen, hed_sigma=cfg.hed_sigma)
            if amp:
                x = x.contiguous(memory_format=torch.channels_last)
            y = ytr_z[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred, aux = net(x)
                loss = torch.nn.functional.mse_loss(pred.float(), y)
                if aux is not None:
                    loss = loss + cfg.aux_weight * torch.nn.functional.mse_loss(aux.float(), atr_z[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            seen += len(idx)
            tot_loss += float(loss.detach()) * len(idx)
            yield {"stage": "step", "epoch": epoch, "step": step + 1, "steps": steps_per_epoch,
                   "loss": float(loss.detach())}
        dt = time.perf_counter() - t0
        # ---- validation ----------------------------------------------------------------------
        net.eval()
        with torch.inference_mode():
            preds = []
            for i in range(0, len(Xva), 128):
                xv = to_tensor(Xva[i:i + 128], device, amp)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    preds.append(net(xv)[0].float().cpu().numpy())
        pv = np.concatenate(preds) * std + mean
        r = pearson_columns(pv, Yva)
        val_r = float(np.nan_to_num(r).mean())
        val_loss = float((((pv - Yva) / std) ** 2).mean())
        improved = val_r > best
        if improved:
            best, best_epoch, bad = val_r, epoch, 0
            save_artifact(out, net.state_dict(), dict(meta_base, metrics={
                "val_mean_r": val_r, "val_loss": val_loss, "epoch": epoch}))
        else:
            bad += 1
        rec = {"epoch": epoch, "train_loss": tot_loss / max(1, seen), "val_loss": val_loss,
               "val_mean_r": val_r, "patches_per_s": seen / dt, "lr": sched.get_last_lr()[0]}
        history.append(rec)
        _atomic_torch_save({"model": net.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                            "epoch": epoch, "best": best, "best_epoch": best_epoch, "bad": bad,
                            "history": json.dumps(history), "digest": digest,
                            "torch_rng": torch.get_rng_state(), "aug_rng": gen.get_state()}, ckpt_path)
        yield dict(rec, stage="epoch", epochs=cfg.epochs, best=improved)
        if bad >= cfg.patience:
            yield {"stage": "early_stop", "msg": f"no improvement for {bad} epochs; best epoch {best_epoch}"}
            break

    summary = {"best_epoch": best_epoch, "best_val_mean_r": best, "history": history,
               "device": str(device), "raw_fwd_bwd_patches_per_s": raw,
               "train_patches_per_s": float(np.mean([h["patches_per_s"] for h in history])) if history else None}
    if cfg.baselines:
        yield {"stage": "baselines", "msg": "fitting baselines (mean, frozen encoder + PCA + ridge)"}
        from .baselines import fit_baselines

        fit_baselines(out, cfg, train_secs, val_secs, genes, device)
    atomic_write_json(out / "training.json", summary)
    return summary
