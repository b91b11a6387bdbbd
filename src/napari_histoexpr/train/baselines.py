"""Baselines saved next to an expression model and reported with it.

- ``mean``: predicts the training mean of every gene (its per-gene Pearson r is undefined: constant
  prediction; reported as 0, with its error for scale).
- ``ridge``: the HEST-benchmark recipe — a frozen encoder's features, PCA (≤ 256 components),
  ridge regression (alpha chosen on the validation spots; when the model was trained without a
  held-out set, on the last training section — or 15 % of the spots of a single one — then refitted
  on all). The encoder is the same architecture
  with random weights (nothing can be downloaded here) or the user's ``--init`` weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..metrics import pearson_columns

FILE = "baselines.safetensors"
META = "baselines.json"
ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def _encoder(backbone: str, init: str | None, seed: int):
    import torch

    from ..models.backbones import build_backbone, load_init_weights

    torch.manual_seed(seed + 7919)
    enc = build_backbone(backbone)
    if init:
        load_init_weights(enc, init)
    return enc.eval()


def encode(enc, patches: np.ndarray, device, batch: int = 128) -> np.ndarray:
    from ..models.runtime import predict_batches

    enc = enc.to(device).eval()
    return predict_batches(lambda x: enc((x - 0.5) / 0.25), patches, device, batch,
                           getattr(enc, "num_features", 0))


def _ridge(Z: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ridge regression (intercept not penalised) as plain arrays ``(W, b)``: ``Z @ W + b``."""
    from sklearn.linear_model import Ridge

    r = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(np.asarray(Z, np.float64), Y)
    return np.ascontiguousarray(r.coef_.T, np.float32), np.asarray(r.intercept_, np.float32)


def _pca(F: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature mean, std and the top (≤ 256) principal axes of the standardised features
    (scikit-learn's PCA; stored as arrays, never pickled)."""
    from sklearn.decomposition import PCA

    fmean, fstd = F.mean(0), F.std(0) + 1e-6
    k = int(min(256, len(F) - 1, F.shape[1]))
    pca = PCA(n_components=k, svd_solver="full").fit((F - fmean) / fstd)
    return fmean, fstd, np.ascontiguousarray(pca.components_.T, np.float32)


def fit_baselines(out: Path, cfg, train_secs, val_secs, genes: list[str], device) -> dict:
    import torch
    from safetensors.torch import save_file


    refit = not val_secs
    if refit:  # no held-out set: choose alpha on one training section, then refit on all of them
        from .loop import split_validation

        everything = list(train_secs)
        train_secs, val_secs, _ = split_validation(everything, None, 0.15, cfg.seed)
    enc = _encoder(cfg.backbone, cfg.init, cfg.seed)
    Xtr = np.concatenate([s.patches for s in train_secs])
    Ytr = np.concatenate([s.select(genes) for s in train_secs])
    Xva = np.concatenate([s.patches for s in val_secs])
    Yva = np.concatenate([s.select(genes) for s in val_secs])
    Ftr, Fva = encode(enc, Xtr, device), encode(enc, Xva, device)
    fmean, fstd, comps = _pca(Ftr)
    Ztr, Zva = ((Ftr - fmean) / fstd) @ comps, ((Fva - fmean) / fstd) @ comps
    scores = {}
    for a in ALPHAS:
        W, b = _ridge(Ztr, Ytr, a)
        scores[a] = float(np.nan_to_num(pearson_columns(Zva @ W + b, Yva)).mean())
    alpha = max(scores, key=scores.get)
    if refit:  # the PCA and standardisation of all training spots, the chosen alpha
        Ftr = np.concatenate([Ftr, Fva])
        Ytr = np.concatenate([Ytr, Yva])
        fmean, fstd, comps = _pca(Ftr)
        Ztr = ((Ftr - fmean) / fstd) @ comps
    W, b = _ridge(Ztr, Ytr, alpha)
    tensors = {f"encoder.{k_}": v.detach().cpu().contiguous() for k_, v in enc.state_dict().items()}
    tensors.update({"feat_mean": torch.from_numpy(fmean), "feat_std": torch.from_numpy(fstd),
                    "pca": torch.from_numpy(np.ascontiguousarray(comps)),
                    "ridge_w": torch.from_numpy(np.ascontiguousarray(W)),
                    "ridge_b": torch.from_numpy(b), "train_mean": torch.from_numpy(Ytr.mean(0))})
    tmp = out / f".{FILE}.part"
    save_file(tensors, str(tmp))
    tmp.replace(out / FILE)
    meta = {"backbone": cfg.backbone, "encoder": (f"user weights {cfg.init}" if cfg.init else
                                                  f"random init (seed {cfg.seed + 7919})"),
            "pca_components": int(comps.shape[1]), "alpha": alpha, "val_mean_r_by_alpha": scores}
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta


class Baselines:
    """The saved baselines of a model folder, for evaluation."""

    def __init__(self, model_dir: str | Path, device="cpu"):
        from safetensors.torch import load_file

        from ..models.backbones import build_backbone

        model_dir = Path(model_dir)
        self.meta = json.loads((model_dir / META).read_text())
        t = load_file(str(model_dir / FILE))
        enc = build_backbone(self.meta["backbone"])
        enc.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("encoder.")})
        self.enc = enc.eval()
        self.device = device
        self.t = {k: v.numpy() for k, v in t.items() if not k.startswith("encoder.")}

    @staticmethod
    def available(model_dir: str | Path) -> bool:
        return (Path(model_dir) / FILE).is_file() and (Path(model_dir) / META).is_file()

    def predict(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        F = encode(self.enc, patches, self.device)
        Z = ((F - self.t["feat_mean"]) / self.t["feat_std"]) @ self.t["pca"]
        ridge = Z @ self.t["ridge_w"] + self.t["ridge_b"]
        mean = np.broadcast_to(self.t["train_mean"], ridge.shape)
        return {"mean": np.array(mean), "ridge": ridge}
