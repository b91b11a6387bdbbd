"""Training scaffolding shared by the expression model and the segmenter: the validation split,
pixel statistics, shuffled batches, one epoch of optimisation (yielding step events), optimisers,
atomic checkpoints and raw model throughput. Inference batching is
:func:`~napari_histoexpr.models.runtime.predict_batches`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence

import numpy as np

from ..errors import TrainingError


def split_validation(sections: Sequence, val_section: str | None, fraction: float, seed: int):
    """``(train, val, val_name)``: the named validation section (default: the last one), or with a
    single section a random ``fraction`` of its spots. Sections have ``name``, ``len()`` and
    ``subset(index, name)``."""
    names = [s.name for s in sections]
    if val_section is not None and val_section not in names:
        raise TrainingError(f"validation section {val_section!r} is not among {names}")
    if len(sections) > 1:
        val_name = val_section or names[-1]
        return ([s for s in sections if s.name != val_name], [s for s in sections if s.name == val_name], val_name)
    s = sections[0]
    perm = np.random.default_rng(seed).permutation(len(s))
    nv = max(2, int(fraction * len(perm)))
    val = s.subset(np.sort(perm[:nv]), f"{s.name}:val")
    return [s.subset(np.sort(perm[nv:]), s.name)], [val], val.name


def pixel_stats(patches: np.ndarray, max_pixels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (+1e-3) of uint8 patches in [0, 1], from at most ~``max_pixels``."""
    pix = patches.reshape(-1, 3)[:: max(1, patches.size // 3 // max_pixels)].astype(np.float32) / 255
    return pix.mean(0).tolist(), (pix.std(0) + 1e-3).tolist()


def epoch_batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Shuffled batches of ``range(n)`` (each sorted; one of fewer than 2 items is dropped)."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return [np.sort(order[i:i + batch_size]) for i in range(0, n, batch_size)]


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise TrainingError(f"unknown optimizer {name!r} (adamw or sgd)")


def warmup_cosine(opt, total_steps: int, warmup_steps: int):
    """Linear warm-up then cosine decay, stepped once per batch."""
    import torch

    def factor(s):
        if s < warmup_steps:
            return (s + 1) / max(1, warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * (s - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit_epoch(net, X: np.ndarray, batches: list[np.ndarray], loss_of: Callable, opt, sched, device,
              augment: Callable | None = None, clip: float | None = None,
              info: dict | None = None, after_step: Callable | None = None) -> Generator[dict, None, dict]:
    """One epoch: for each batch of uint8 ``X``, ``loss_of(net, x, idx)`` (under bf16 autocast on
    CUDA), backward, optional gradient clipping, optimiser and scheduler step, then ``after_step()``
    (e.g. a weight average). Yields a ``step`` event per batch (with ``info``); returns
    ``{"seen", "loss", "seconds"}``."""
    import torch

    from ..models.runtime import to_tensor, uses_amp

    amp = uses_amp(device)
    params = [p for p in net.parameters() if p.requires_grad]
    net.train()
    t0, seen, tot = time.perf_counter(), 0, 0.0
    for step, idx in enumerate(batches):
        if len(idx) < 2:
            continue
        x = to_tensor(X[idx], device)
        if augment is not None:
            x = augment(x)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_of(net, x, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        value = float(loss.detach())
        seen += len(idx)
        tot += value * len(idx)
        yield {"stage": "step", **(info or {}), "step": step + 1, "steps": len(batches), "loss": value}
    return {"seen": seen, "loss": tot / max(1, seen), "seconds": time.perf_counter() - t0}


def raw_throughput(net, px: int, batch: int, device, steps: int = 5) -> float:
    """Forward+backward patches/s of ``net`` on random input (no data pipeline), for comparison."""
    import torch

    from ..models.runtime import uses_amp

    amp = uses_amp(device)
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
            out = net(x)
            outs = out if isinstance(out, tuple) else (out,)
            loss = sum(o.float().pow(2).mean() for o in outs if o is not None)
        loss.backward()
        net.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)
