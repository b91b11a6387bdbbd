"""HE2RNA: slide-level (bulk) expression from the tiles of a slide, whose per-tile scores are a
"virtual spatialization" of each gene.

A per-tile MLP (1x1 convolutions over the bag of tiles) gives every tile a score per gene; the slide
prediction is the mean of the top-k tile scores, k drawn from {1, 2, 5, 10, 20, 50, 100} at each
training step and averaged over all of them at test. Targets are log(1 + expression), z-scored with
the training slides' statistics. Evaluation: per-gene Pearson r across the held-out slides of each
patient-level fold.

The same tile network, with a per-tissue scale and shift of its hidden layer and mean pooling, is
the multi-task model (:mod:`.multitask`).
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..errors import TrainingError
from ..metrics import named_values, nanmean_or_none, pearson_columns
from .bags import (
    Bag,
    Projector,
    SlideModel,
    cross_validate,
    feature_meta,
    log_targets,
)

KS = (1, 2, 5, 10, 20, 50, 100)


def build_tile_net(meta: dict):
    from ..models.slide_nets import TileNet

    return TileNet(meta["dim"], len(meta["genes"]), meta["hidden"], meta.get("dropout", 0.25),
                   len(meta.get("tissues", [])))


def topk_mean(scores, k: int):
    """Mean of the top ``k`` tile scores per gene; ``scores`` (B, G, N)."""
    import torch

    return torch.topk(scores, min(k, scores.shape[-1]), dim=-1).values.mean(-1)


def pool(scores, pooling: str, k: int | None = None):
    import torch

    if pooling == "mean":
        return scores.mean(-1)
    if k is not None:
        return topk_mean(scores, k)
    return torch.stack([topk_mean(scores, kk) for kk in KS]).mean(0)


def fit_tile_net(X: list[np.ndarray], yz: np.ndarray, meta: dict, epochs: int = 150, lr: float = 1e-3,
                 weight_decay: float = 1e-2, noise: float = 0.1, seed: int = 0, device="cpu",
                 tissue: np.ndarray | None = None, label: str = "") -> Generator[dict, None, object]:
    """Train a tile network on projected bags ``X`` (one slide per step, shuffled each epoch)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_tile_net(meta).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    xs = [torch.from_numpy(x.T[None].copy()).to(device) for x in X]
    ys = torch.from_numpy(np.asarray(yz, np.float32)).to(device)
    tt = None if tissue is None else torch.as_tensor(np.asarray(tissue), dtype=torch.long, device=device)
    for ep in range(epochs):
        net.train()
        tot = 0.0
        for j in rng.permutation(len(xs)):
            x = xs[j] + noise * torch.randn_like(xs[j])
            k = int(rng.choice(KS)) if meta["pooling"] == "topk" else None
            pred = pool(net(x, None if tt is None else tt[j:j + 1]), meta["pooling"], k)
            loss = torch.nn.functional.mse_loss(pred[0], ys[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach())
        yield {"stage": "epoch", "model": label or meta["kind"], "epoch": ep + 1, "epochs": epochs,
               "train_loss": tot / len(xs)}
    return net.eval()


class TileModel(SlideModel):
    """A trained tile network with its feature projection and target scaling (HE2RNA, multi-task)."""

    kind = "he2rna"
    build_net = staticmethod(build_tile_net)

    def __init__(self, net, projector: Projector, meta: dict, device="auto"):
        super().__init__(net, projector, meta, device)
        self.genes: list[str] = list(meta["genes"])
        self.mean = np.asarray(meta["target_mean"], np.float32)
        self.std = np.asarray(meta["target_std"], np.float32)
        self.tissues: list[str] = list(meta.get("tissues", []))

    def _tissue_index(self, tissue):
        if not self.tissues:
            return None
        if tissue not in self.tissues:
            raise TrainingError(f"tissue {tissue!r} is not one this model was trained on: {', '.join(self.tissues)}")
        return self.tissues.index(tissue)

    def _scores(self, feats: np.ndarray, tissue=None):
        import torch

        x = torch.from_numpy(self.projector(feats).T[None].copy()).to(self.device)
        t = self._tissue_index(tissue)
        tt = None if t is None else torch.tensor([t], device=self.device)
        return self.net(x, tt)

    def predict(self, bags: list[Bag], tissues: list | None = None) -> np.ndarray:
        """Slide-level log1p expression, ``(n_slides, genes)`` (super-tiles first if trained so)."""
        import torch

        n = int(self.meta.get("supertiles") or 0)
        out = []
        with torch.inference_mode():
            for i, b in enumerate(bags):
                s = self._scores(supertiles(b, n), None if tissues is None else tissues[i])
                out.append(pool(s, self.meta["pooling"])[0].float().cpu().numpy())
        return np.stack(out) * self.std + self.mean

    def tile_scores(self, feats: np.ndarray, tissue=None) -> np.ndarray:
        """``(n_tiles, genes)`` per-tile predictions in log1p units: the virtual spatialization."""
        import torch

        with torch.inference_mode():
            s = self._scores(feats, tissue)[0].T.float().cpu().numpy()
        return s * self.std + self.mean

    def heatmaps(self, bag: Bag, genes: list[str] | None = None, tissue=None) -> dict[str, np.ndarray]:
        s = self.tile_scores(bag.feats, tissue)
        return {g: s[:, self.genes.index(g)] for g in (genes or self.genes[:1])}


class HE2RNA(TileModel):
    kind = "he2rna"


def supertiles(bag: Bag, n: int, seed: int = 0) -> np.ndarray:
    """HE2RNA's super-tiles: the tiles grouped into ``n`` spatial clusters (k-means on their
    coordinates), features averaged per cluster; the tiles themselves when there are ``n`` or fewer."""
    if not n or len(bag.feats) <= n:
        return bag.feats
    from scipy.cluster.vq import kmeans2

    _, lab = kmeans2(bag.coords.astype(np.float64), n, seed=seed, minit="++")
    return np.stack([bag.feats[lab == i].mean(0) for i in np.unique(lab)]).astype(np.float32)


def train_he2rna(bags: list[Bag], Y: np.ndarray, genes: list[str], epochs: int = 150, lr: float = 1e-3,
                 hidden: int = 128, n_components: int = 32, seed: int = 0, device="auto",
                 label: str = "", supertiles_n: int = 0) -> Generator[dict, None, HE2RNA]:
    """HE2RNA on ``bags`` with raw bulk expression ``Y`` (slides x genes); ``supertiles_n`` > 0 pools
    each slide's tiles into that many super-tiles first (as HE2RNA did for whole TCGA slides)."""
    from ..models.runtime import resolve_device

    if len(bags) < 4:
        raise TrainingError(f"HE2RNA needs at least 4 training slides, got {len(bags)}")
    dev = resolve_device(device)
    y = log_targets(Y)
    mean, std = y.mean(0), y.std(0) + 1e-6
    proj = Projector.fit([b.feats for b in bags], n_components, seed)
    meta = {"kind": HE2RNA.kind, "genes": list(genes), "dim": proj.dim, "hidden": hidden, "pooling": "topk",
            "ks": list(KS), "target": "log1p(bulk expression)", "target_mean": mean.tolist(),
            "target_std": std.tolist(), "features": feature_meta(bags), "n_train_slides": len(bags),
            "epochs": epochs, "seed": seed, "supertiles": int(supertiles_n)}
    net = yield from fit_tile_net([proj(supertiles(b, supertiles_n)) for b in bags], (y - mean) / std, meta,
                                  epochs, lr, seed=seed, device=dev, label=label)
    return HE2RNA(net, proj, meta, dev)


def evaluate_he2rna_steps(slides, bags: list[Bag], Y: np.ndarray, genes: list[str], k: int = 5, seed: int = 0,
                          **train_kw) -> Generator[dict, None, dict]:
    """Patient-level k-fold: per fold, per-gene Pearson r across its held-out slides; also the r of
    all out-of-fold predictions pooled."""
    y = log_targets(Y)
    pred = np.full_like(y, np.nan)

    def run_fold(f, train, test):
        model = yield from train_he2rna([bags[i] for i in train], Y[train], genes, seed=seed + f,
                                        label=f"fold {f + 1}/{k}", **train_kw)
        pred[test] = model.predict([bags[i] for i in test])
        r = pearson_columns(pred[test], y[test]) if len(test) > 2 else np.full(len(genes), np.nan)
        return {"pearson": named_values(genes, r), "mean_r": nanmean_or_none(r)}

    folds = yield from cross_validate(slides, k, seed, run_fold)
    pooled = pearson_columns(pred, y)
    per_gene = {g: nanmean_or_none([f["pearson"][g] for f in folds]) for g in genes}
    return {"model": "he2rna", "n_slides": len(slides), "k": k, "supertiles": int(train_kw.get("supertiles_n", 0)),
            "genes": genes, "folds": folds,
            "per_gene_mean_r": per_gene, "pooled_pearson": named_values(genes, pooled),
            "summary": {"mean_r": nanmean_or_none(list(per_gene.values())),
                        "median_r": float(np.nanmedian([v for v in per_gene.values() if v is not None] or [np.nan])),
                        "genes_r_gt_0_5": int(sum(1 for v in per_gene.values() if v is not None and v > 0.5)),
                        "pooled_mean_r": nanmean_or_none(pooled)},
            "predictions": {slides[i].id: dict(zip(genes, map(float, pred[i]))) for i in range(len(slides))}}
