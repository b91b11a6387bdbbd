"""Heads on frozen encoder features, fitted in seconds.

- ``ridge``: HEST-Benchmark's protocol — standardise the features, keep their first 256 principal
  components, ridge regression with ``alpha`` chosen by inner cross-validation (folds of whole
  sections when there are several, so neighbouring spots never sit on both sides), then refitted on
  every spot. The three steps are linear, so they are folded into one ``(dim, genes)`` layer.
- ``mlp``: standardised features -> 256 GELU units -> genes, trained with AdamW and weight decay,
  stopped at the epoch that did best on a held-out section (or a held-out tenth of the spots).

Both take ``Y`` as z-scored targets and return the head's tensors (``weight``/``bias`` of
``nn.Linear``, or of ``nn.Sequential(Linear, GELU, Linear)`` under ``0.``/``2.``) and what was chosen.
"""

from __future__ import annotations

import numpy as np

#: ridge strengths tried (inner cross-validation picks one)
ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
PCA_COMPONENTS = 256


def _folds(groups: np.ndarray, n: int, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold, KFold

    groups = np.asarray(groups)
    if len(np.unique(groups)) >= 2:
        split = GroupKFold(n_splits=min(k, len(np.unique(groups)))).split(np.zeros(n), groups=groups)
    else:
        split = KFold(n_splits=min(k, n), shuffle=True, random_state=seed).split(np.zeros(n))
    return list(split)


def _mean_r(pred: np.ndarray, y: np.ndarray) -> float:
    from ..metrics import pearson_columns

    return float(np.nan_to_num(pearson_columns(pred, y)).mean())


def _projection(F, k):
    """Standardisation and PCA(k) of ``F`` (fitted once per fold; the ridge strengths share it)."""
    from sklearn.decomposition import PCA

    mu, sd = F.mean(0), F.std(0) + 1e-6
    z = (F - mu) / sd
    pca = PCA(n_components=int(min(k, len(F) - 1, F.shape[1])), svd_solver="full").fit(z)
    return mu, sd, pca, pca.transform(z)


def _ridge(p, Y, alpha):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha, solver="cholesky").fit(p, Y)


def _folded(mu, sd, pca, r):
    """Standardise -> PCA -> ridge as one ``(W, b)``: ``F @ W + b``."""
    C = pca.components_.T @ r.coef_.T  # (dim, genes): z -> y
    W = C / sd[:, None]
    return W, r.intercept_ - (pca.mean_ @ C) - (mu / sd) @ C


def fit_ridge_head(F: np.ndarray, Y: np.ndarray, groups, alphas=ALPHAS, components: int = PCA_COMPONENTS
                   ) -> tuple[dict, dict]:
    """The HEST protocol on features ``F`` (N, dim) and z-scored targets ``Y`` (N, genes)."""
    import torch

    F, Y = np.asarray(F, np.float64), np.asarray(Y, np.float64)
    folds = _folds(groups, len(F))
    rs = {a: [] for a in alphas}
    for tr, te in folds:
        mu, sd, pca, p = _projection(F[tr], components)
        for a in alphas:
            W, b = _folded(mu, sd, pca, _ridge(p, Y[tr], a))
            rs[a].append(_mean_r(F[te] @ W + b, Y[te]))
    scores = {a: float(np.mean(v)) for a, v in rs.items()}
    alpha = max(scores, key=scores.get)
    mu, sd, pca, p = _projection(F, components)
    W, b = _folded(mu, sd, pca, _ridge(p, Y, alpha))
    state = {"weight": torch.from_numpy(np.ascontiguousarray(W.T, np.float32)),
             "bias": torch.from_numpy(np.asarray(b, np.float32))}
    return state, {"head": "ridge", "alpha": alpha, "inner_cv_mean_r": scores[alpha],
                   "inner_cv_mean_r_by_alpha": {f"{a:g}": s for a, s in scores.items()},
                   "pca_components": int(pca.n_components_), "folds": len(folds)}


def fit_mlp_head(F: np.ndarray, Y: np.ndarray, groups, hidden: int = 256, epochs: int = 200, lr: float = 1e-3,
                 weight_decay: float = 1e-2, seed: int = 0) -> tuple[dict, dict]:
    """A small MLP on standardised features, the epoch of best held-out mean r kept."""
    import torch
    from torch import nn

    F, Y = np.asarray(F, np.float32), np.asarray(Y, np.float32)
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) >= 2:
        held = groups == uniq[-1]
    else:
        held = np.random.default_rng(seed).random(len(F)) < 0.1
    mu, sd = F.mean(0), F.std(0) + 1e-6
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(F.shape[1], hidden), nn.GELU(), nn.Linear(hidden, Y.shape[1]))
    x = torch.from_numpy((F - mu) / sd)
    y = torch.from_numpy(Y)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    tr = torch.from_numpy(np.nonzero(~held)[0])
    best, best_state, best_epoch = -np.inf, None, 0
    for epoch in range(epochs):
        net.train()
        for idx in tr[torch.randperm(len(tr), generator=gen)].split(256):
            opt.zero_grad()
            loss = ((net(x[idx]) - y[idx]) ** 2).mean()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            r = _mean_r(net(x[held]).numpy(), Y[held])
        if r > best:
            best, best_epoch = r, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= 20:
            break
    net.load_state_dict(best_state)
    with torch.no_grad():  # the standardisation folded into the first layer
        w0 = net[0].weight / torch.from_numpy(sd)[None, :]
        b0 = net[0].bias - w0 @ torch.from_numpy(mu)
    state = {"0.weight": w0.contiguous(), "0.bias": b0.contiguous(), "2.weight": net[2].weight.detach().clone(),
             "2.bias": net[2].bias.detach().clone()}
    return state, {"head": "mlp", "hidden": hidden, "best_epoch": best_epoch, "held_out_mean_r": float(best)}
