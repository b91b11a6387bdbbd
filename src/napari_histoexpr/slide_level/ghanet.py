"""G-HANet-style genome-informed survival from the tiles of a slide; at inference it needs the slide
only.

* **Cross-modal associating branch**: one learnable token per genomic group (e.g. the marker genes
  of a pathway or cell type) cross-attends over the tile bag; a per-group MLP reconstructs that
  group's bulk expression (log1p, z-scored) from its token. Training uses the bulk RNA; inference
  does not.
* **Hyper-attention survival branch**: gated attention pooling over the tiles gives a slide vector,
  which in turn attends over the genome-informed tokens (attention over attention); both feed a
  head that predicts the hazard in 4 time bins (quartiles of the training event times).
* **Loss**: the discrete-time negative log-likelihood of the censored survival data plus
  ``recon_weight`` x the reconstruction error (``recon_weight=0`` is the ablation without it).

Risk = minus the sum of the predicted survival curve; the censored C-index is computed per
held-out fold. The tile attention (and each group token's attention) is the heatmap on the slide.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..errors import HistoExprError, TrainingError
from ..metrics import concordance_index
from .bags import (
    Bag,
    Projector,
    SlideModel,
    cross_validate,
    feature_meta,
    log_targets,
)

N_BINS = 4


def build_ghanet(meta: dict):
    from ..models.slide_nets import GHANetNet

    return GHANetNet(meta["dim"], [len(g) for g in meta["groups"].values()], meta["hidden"],
                        len(meta["bin_edges"]) - 1, meta.get("dropout", 0.25))


def time_bins(time: np.ndarray, event: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin edges: quantiles of the event times, the outer edges open (as MCAT and G-HANet)."""
    t = np.asarray(time, float)[np.asarray(event, bool)]
    if len(t) < n_bins:
        raise TrainingError(f"survival needs at least {n_bins} events among the training slides, got {len(t)}")
    edges = np.quantile(t, np.linspace(0, 1, n_bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def nll_discrete(logits, label: int, censored: bool, alpha: float = 0.4):
    """Discrete-time survival NLL of one slide (hazards = sigmoid(logits)); ``alpha`` weights the
    uncensored term extra, as in Zadeh & Schmid (2020)."""
    import torch

    haz = torch.sigmoid(logits).clamp(1e-7, 1 - 1e-7)
    surv = torch.cumprod(1 - haz, 0)
    s_prev = surv[label - 1] if label > 0 else torch.ones((), device=logits.device)
    unc = -(torch.log(s_prev) + torch.log(haz[label]))
    cen = -torch.log(surv[label])
    neg = cen if censored else unc
    return (1 - alpha) * neg + (alpha * unc if not censored else 0.0)


def risk_from_logits(logits) -> float:
    import torch

    surv = torch.cumprod(1 - torch.sigmoid(logits), 0)
    return float(-surv.sum())


def default_groups(B, genes_per_group: int = 8, n_groups: int = 4, seed: int = 0) -> dict[str, list[str]]:
    """Genomic groups when the user gives none: the most variable genes, clustered into co-expressed
    groups (k-means on their standardised log1p profiles across slides)."""
    from scipy.cluster.vq import kmeans2

    y = np.log1p(B.to_numpy(np.float64))
    v = y.var(0)
    top = np.argsort(-v, kind="stable")[:genes_per_group * n_groups]
    top = top[v[top] > 0]
    if len(top) < n_groups:
        raise TrainingError("too few variable genes in the bulk expression to form genomic groups")
    z = (y[:, top] - y[:, top].mean(0)) / y[:, top].std(0)
    _, lab = kmeans2(z.T, n_groups, seed=seed, minit="++")
    groups = {f"group{g + 1}": [B.columns[top[i]] for i in np.nonzero(lab == g)[0]] for g in range(n_groups)}
    return {k: v for k, v in groups.items() if v}


def read_groups(path: str | os.PathLike) -> dict[str, list[str]]:
    """Genomic groups from JSON ``{"name": [genes]}``, a GMT file, or a CSV with gene,group columns."""
    import json

    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise HistoExprError(f"genomic groups file not found: {p}")
    if p.suffix.lower() == ".json":
        g = json.loads(p.read_text())
    elif p.suffix.lower() == ".gmt":
        g = {ln.split("\t")[0]: [x for x in ln.rstrip("\n").split("\t")[2:] if x]
             for ln in p.read_text().splitlines() if ln.strip()}
    else:
        df = pd.read_csv(p)
        cols = {c.lower(): c for c in df.columns}
        if "gene" not in cols or "group" not in cols:
            raise HistoExprError(f"{p.name}: needs columns gene,group (or use JSON / GMT)")
        g = {k: list(v[cols["gene"]]) for k, v in df.groupby(cols["group"], sort=False)}
    if not g or not all(isinstance(v, list) and v for v in g.values()):
        raise HistoExprError(f"{p.name}: no genomic groups with genes in it")
    return {str(k): [str(x) for x in v] for k, v in g.items()}


class GHANet(SlideModel):
    kind = "ghanet"
    build_net = staticmethod(build_ghanet)

    def __init__(self, net, projector: Projector, meta: dict, device="auto"):
        super().__init__(net, projector, meta, device)
        self.groups: dict[str, list[str]] = meta["groups"]

    def _forward(self, feats: np.ndarray) -> dict:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(self.projector(feats)).to(self.device))

    def risk(self, bags: list[np.ndarray]) -> np.ndarray:
        return np.array([risk_from_logits(self._forward(b)["logits"].float().cpu()) for b in bags])

    def survival_curves(self, bags: list[np.ndarray]) -> np.ndarray:
        """``(n_slides, n_bins)`` predicted survival at the end of each time bin."""
        import torch

        return np.stack([torch.cumprod(1 - torch.sigmoid(self._forward(b)["logits"].float().cpu()), 0).numpy()
                         for b in bags])

    def reconstruct(self, feats: np.ndarray) -> dict[str, dict[str, float]]:
        """The genomic groups reconstructed from the slide alone, in log1p units."""
        out = self._forward(feats)
        mean, std = np.asarray(self.meta["target_mean"]), np.asarray(self.meta["target_std"])
        res, j = {}, 0
        for (name, genes), r in zip(self.groups.items(), out["recon"]):
            v = r.float().cpu().numpy() * std[j:j + len(genes)] + mean[j:j + len(genes)]
            res[name] = dict(zip(genes, map(float, v)))
            j += len(genes)
        return res

    def heatmaps(self, bag: Bag, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """``attention`` (survival branch, per tile, sums to 1) and ``attention:GROUP`` per token."""
        out = self._forward(bag.feats)
        maps = {"attention": out["tile_att"].float().cpu().numpy()}
        for g, name in enumerate(self.groups):
            maps[f"attention:{name}"] = out["token_att"][g].float().cpu().numpy()
        return {k: maps[k] for k in (names or list(maps))}


def train_ghanet(bags: list[Bag], time: np.ndarray, event: np.ndarray, B, groups: dict[str, list[str]],
                 recon_weight: float = 3.0, epochs: int = 40, lr: float = 5e-4, hidden: int = 64,
                 n_components: int = 32, seed: int = 0, device="auto", label: str = ""
                 ) -> Generator[dict, None, GHANet]:
    """Train on ``bags`` with survival ``time``/``event`` and bulk expression ``B`` (slides x genes
    DataFrame, rows in bag order) for the reconstruction targets."""
    import torch

    from ..models.runtime import resolve_device

    if len(bags) < 6:
        raise TrainingError(f"survival training needs at least 6 slides, got {len(bags)}")
    time, event = np.asarray(time, float), np.asarray(event, int)
    genes = [g for gs in groups.values() for g in gs]
    missing = [g for g in genes if g not in B.columns]
    if missing:
        raise TrainingError(f"genomic group genes not in the bulk expression: {', '.join(missing[:5])}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    y = log_targets(B[genes].to_numpy())
    mean, std = y.mean(0), y.std(0) + 1e-6
    yz = torch.from_numpy(((y - mean) / std).astype(np.float32)).to(dev)
    edges = time_bins(time, event)
    labels = np.clip(np.searchsorted(edges, time, side="right") - 1, 0, len(edges) - 2)
    proj = Projector.fit([b.feats for b in bags], n_components, seed)
    meta = {"kind": GHANet.kind, "groups": groups, "dim": proj.dim, "hidden": hidden,
            "bin_edges": [float(e) if np.isfinite(e) else None for e in edges], "recon_weight": recon_weight,
            "target_mean": mean.tolist(), "target_std": std.tolist(), "features": feature_meta(bags),
            "n_train_slides": len(bags), "epochs": epochs, "seed": seed}
    net = build_ghanet({**meta, "bin_edges": edges}).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    xs = [torch.from_numpy(proj(b.feats)).to(dev) for b in bags]
    sizes = np.cumsum([0] + [len(g) for g in groups.values()])
    for ep in range(epochs):
        net.train()
        tot_s = tot_r = 0.0
        for j in rng.permutation(len(xs)):
            out = net(xs[j] + 0.1 * torch.randn_like(xs[j]))
            ls = nll_discrete(out["logits"], int(labels[j]), not event[j])
            lr_ = sum(torch.nn.functional.mse_loss(r, yz[j, sizes[g]:sizes[g + 1]])
                      for g, r in enumerate(out["recon"])) / len(out["recon"])
            loss = ls + recon_weight * lr_
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_s += float(ls.detach())
            tot_r += float(lr_.detach())
        yield {"stage": "epoch", "model": label or "ghanet", "epoch": ep + 1, "epochs": epochs,
               "train_loss": tot_s / len(xs), "recon_loss": tot_r / len(xs)}
    return GHANet(net.eval(), proj, meta, dev)


def evaluate_ghanet_steps(slides, bags: list[Bag], B, groups: dict[str, list[str]], k: int = 5, seed: int = 0,
                          ablation: bool = True, **train_kw) -> Generator[dict, None, dict]:
    """Patient-level k-fold censored C-index on held-out patients, with the reconstruction branch
    and (``ablation``) without it on the same folds; out-of-fold risks for the KM plot."""
    time = np.array([np.nan if s.time is None else s.time for s in slides], float)
    event = np.array([-1 if s.event is None else s.event for s in slides], int)
    if np.isnan(time).any() or (event < 0).any():
        bad = [s.id for s in slides if s.time is None or s.event is None]
        raise TrainingError(f"survival needs time and event for every slide; missing for {', '.join(bad[:5])}")
    variants = {"ghanet": train_kw.pop("recon_weight", 3.0)}
    if ablation:
        variants["no_reconstruction"] = 0.0
    risks = {v: np.full(len(slides), np.nan) for v in variants}

    def run_fold(f, train, test):
        rec = {}
        for v, w in variants.items():
            m = yield from train_ghanet([bags[i] for i in train], time[train], event[train], B.iloc[train], groups,
                                        recon_weight=w, seed=seed + f, label=f"{v} fold {f + 1}/{k}", **train_kw)
            risks[v][test] = m.risk([bags[i].feats for i in test])
            rec[f"c_index_{v}"] = concordance_index(time[test], risks[v][test], event[test])
        rec["c_index"] = rec.pop("c_index_ghanet")
        return rec

    folds = yield from cross_validate(slides, k, seed, run_fold)
    summary = {}
    for v in variants:
        key = "c_index" if v == "ghanet" else f"c_index_{v}"
        vals = np.array([f[key] for f in folds], float)
        summary[f"{key}_mean"] = float(np.nanmean(vals))
        summary[f"{key}_sd"] = float(np.nanstd(vals))
        summary[f"{key}_pooled"] = concordance_index(time, risks[v], event)
    return {"model": "ghanet", "n_slides": len(slides), "n_events": int(event.sum()), "k": k, "groups": groups,
            "folds": folds, "summary": summary,
            "risk": {s.id: float(r) for s, r in zip(slides, risks["ghanet"])},
            "time": time.tolist(), "event": event.tolist()}
