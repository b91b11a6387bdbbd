"""Where models run: device choice, uint8 patches to tensors, and the one batched-inference loop every
model uses (expression, segmenter, baselines' encoder, slide-level tile encoder, validation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import HistoExprError
from .catalog import DEVICES


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto``: CUDA, then Apple ``mps``, then CPU. Asking for an absent accelerator is a named error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    name = str(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HistoExprError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not mps_available():
        raise HistoExprError("device 'mps' requested but Apple's Metal backend is not available; use --device cpu")
    if not (name in DEVICES or name.startswith("cuda:")):
        raise HistoExprError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    return torch.device(name)


def worker_device(device: str) -> str:
    """The device of a dask worker: with ``auto`` and several GPUs, worker ``n`` takes GPU ``n``."""
    if device not in ("auto", None, "") or not torch.cuda.is_available():
        return device or "cpu"
    try:
        from distributed import get_worker

        idx = int(str(get_worker().name).split("-")[-1])
    except (ImportError, ValueError):
        idx = 0
    return f"cuda:{idx % torch.cuda.device_count()}"


def uses_amp(device: torch.device) -> bool:
    """bf16 autocast and channels_last are used on CUDA only."""
    return device.type == "cuda"


def to_tensor(patches: np.ndarray, device="cpu", channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(patches)).to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


@torch.inference_mode()
def predict_batches(fn: Callable[[torch.Tensor], torch.Tensor], patches: np.ndarray, device: torch.device,
                    batch_size: int = 128, out_dim: int = 0) -> np.ndarray:
    """``fn`` over uint8 ``patches`` in batches (float [0, 1] input, bf16 autocast on CUDA); the
    outputs concatenated as float32 numpy (``(0, out_dim)`` for no patches)."""
    amp = uses_amp(device)
    outs = []
    for i in range(0, len(patches), batch_size):
        x = to_tensor(patches[i:i + batch_size], device, amp)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(fn(x).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, out_dim), np.float32)
