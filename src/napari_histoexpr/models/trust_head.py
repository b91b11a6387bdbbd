"""The torch side of :mod:`.trust`: the heads that read a model's features into uncertainty and distance,
and loading them from a model folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from .trust import ERROR_FLOOR, INFO, TENSORS


class TrustHead(nn.Module):
    """``(..., dim)`` pooled features -> ``(..., genes + 1)``: each gene's uncertainty (expected absolute
    error, log1p units, inflated far from the training spots), then the distance."""

    def __init__(self, tensors: dict, info: dict):
        super().__init__()
        for k, v in tensors.items():
            self.register_buffer(k, v.float())
        self.info = dict(info)
        self.k = int(info["k"])
        self.ref, self.far = float(info["reference_distance"]), float(info["far"])

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        with torch.autocast(f.device.type, enabled=False):  # distances in float32, also under bf16 autocast
            return self._forward(f.float())

    def _forward(self, f: torch.Tensor) -> torch.Tensor:
        shape = f.shape[:-1]
        f = f.reshape(-1, f.shape[-1])
        err = ((f - self.error_mean) @ self.error_proj) @ self.error_weight + self.error_bias
        z = (f - self.distance_mean) @ self.distance_proj
        d2 = torch.cdist(z, self.bank).square()
        dist = d2.topk(min(self.k, len(self.bank)), dim=1, largest=False).values.clamp_min(0).sqrt().mean(1)
        dist = dist / self.ref
        unc = err.clamp_min(ERROR_FLOOR) * (dist / self.far).clamp_min(1.0)[:, None]
        return torch.cat([unc, dist[:, None]], dim=1).reshape(*shape, -1)


class TrustedHead(nn.Module):
    """A model's head followed by its :class:`TrustHead` on the same features: ``genes`` predictions,
    then ``genes`` uncertainties and the distance."""

    def __init__(self, head: nn.Module, trust: TrustHead):
        super().__init__()
        self.head, self.trust = head, trust

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        y = self.head(f)
        return torch.cat([y.float(), self.trust(f).to(y.device)], dim=-1)


def load_trust(model_dir: str | os.PathLike) -> TrustHead | None:
    """The model folder's :class:`TrustHead` (``None`` when it was never calibrated); named errors for
    a damaged or mismatched pair of files."""
    from safetensors.torch import load

    d = Path(model_dir)
    if not (d / INFO).is_file():
        return None
    try:
        info = json.loads((d / INFO).read_text())
        blob = (d / TENSORS).read_bytes()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{d / INFO}: cannot read the model's uncertainty calibration ({e})") from e
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise ModelFileError(f"{d / TENSORS} does not match {INFO} (damaged or from another calibration); "
                             "run `histoexpr calibrate` again")
    try:
        return TrustHead(load(blob), info)
    except Exception as e:  # corrupt tensors or missing keys
        raise ModelFileError(f"{d / TENSORS}: {type(e).__name__}: {e}") from e
