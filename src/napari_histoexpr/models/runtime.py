"""Where models run: device choice, uint8 patches to tensors, and the one batched-inference loop every
model uses (expression, segmenter, baselines' encoder, slide-level tile encoder, validation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import HistoExprError
from .catalog import DEVICES, cpu_has_bf16


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
    """Training: bf16 autocast (and channels_last) on CUDA, and on a CPU with native bf16 arithmetic
    (resnet18 forward + backward ~2.2x faster there; weights, optimiser state and losses stay fp32)."""
    return inference_amp(device)


def cpu_bf16_faster() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16, read from the Linux CPU
    flags), where bf16 autocast runs resnet18 ~1.7x faster; elsewhere bf16 would be emulated and
    slower, so inference stays fp32. ``HISTOEXPR_CPU_BF16`` = ``1``/``0`` forces the choice."""
    return cpu_has_bf16()


def inference_amp(device: torch.device) -> bool:
    """Inference: bf16 autocast on CUDA, and on a CPU where it is measurably faster."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_faster())


def fuse_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution (eval only;
    the outputs are the same up to float rounding, the BN pass is gone: ~10 % of a ResNet's time)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for mod in list(net.modules()):
        for c_name, b_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            c, b = getattr(mod, c_name, None), getattr(mod, b_name, None)
            if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                setattr(mod, c_name, fuse_conv_bn_eval(c, b))
                setattr(mod, b_name, nn.Identity())
        if isinstance(mod, nn.Sequential):
            names = list(mod._modules)
            for a, b in zip(names, names[1:]):
                c, n = mod._modules[a], mod._modules[b]
                if isinstance(c, nn.Conv2d) and isinstance(n, nn.BatchNorm2d):
                    mod._modules[a], mod._modules[b] = fuse_conv_bn_eval(c, n), nn.Identity()
    return net


def for_inference(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` ready to predict: eval mode, batch norms folded into their convolutions, on ``device``
    in channels_last layout (faster convolutions on CPU too: ~5 vs ~3 Mpx/s for resnet18 on 2 cores)."""
    return fuse_batchnorm(net.eval()).to(device).to(memory_format=torch.channels_last)


def to_tensor(patches: np.ndarray, device="cpu", channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1] on ``device``."""
    arr = np.ascontiguousarray(patches)
    if not arr.flags.writeable:  # e.g. a view of a decoded image; torch wants writable memory
        arr = arr.copy()
    t = torch.from_numpy(arr).to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


@torch.inference_mode()
def predict_batches(fn: Callable[[torch.Tensor], torch.Tensor], patches: np.ndarray, device: torch.device,
                    batch_size: int = 128, out_dim: int = 0) -> np.ndarray:
    """``fn`` over uint8 ``patches`` in batches (float [0, 1] input, bf16 autocast on CUDA); the
    outputs concatenated as float32 numpy (``(0, out_dim)`` for no patches)."""
    amp = inference_amp(device)
    outs = []
    for i in range(0, len(patches), batch_size):
        x = to_tensor(patches[i:i + batch_size], device, channels_last=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(fn(x).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, out_dim), np.float32)
