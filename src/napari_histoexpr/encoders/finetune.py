"""Fine-tuning a pretrained encoder end to end with its expression head.

The frozen route (a head on cached features) is the default: it takes seconds and cannot overfit the
encoder to a few sections. Fine-tuning starts from it: the encoder and a linear head initialised with
the fitted ridge head are trained together (AdamW at a small learning rate with a one-cycle schedule,
gradients clipped, flips / rotations / HED jitter as in training here, bf16 autocast where it is fast),
and the epoch that does best on a held-out section is kept, the frozen start included (epoch 0), so a
fine-tuned model never scores below its frozen head there. The fine-tuned encoder is written into the
model folder in its own published layout (``encoder.safetensors``: timm names for a ViT, torchvision
names for a ResNet), which the folder's ``model.json`` names by a path relative to itself.
"""

from __future__ import annotations

import copy
from collections.abc import Generator

import numpy as np

from ..metrics import pearson_columns
from ..train.loop import epoch_batches, fit_epoch

#: the fine-tuned encoder's file inside the model folder
FINETUNED_FILE = "encoder.safetensors"


def _held_out(groups: np.ndarray, seed: int) -> np.ndarray:
    """The last section when there are several, else a random tenth of the spots."""
    uniq = np.unique(groups)
    if len(uniq) >= 2:
        return groups == uniq[-1]
    return np.random.default_rng(seed).random(len(groups)) < 0.1


def finetune_steps(encoder, patches: np.ndarray, Y: np.ndarray, groups: np.ndarray, head_state: dict, epochs: int,
                   lr: float, device, batch_size: int = 32, seed: int = 0) -> Generator[dict, None, tuple]:
    """Train ``encoder`` (an :class:`~napari_histoexpr.models.encoder_files.Encoder`) with a linear head
    initialised from ``head_state`` on uint8 ``patches`` and z-scored targets ``Y``; yields ``step``
    events and a ``finetune`` event per epoch (epoch 0: the frozen start). Returns ``(encoder state,
    head state, info)`` of the best held-out epoch."""
    import torch

    from ..data.patches import augment_batch
    from ..models.encoder_net import EncoderNet
    from ..models.runtime import predict_batches

    torch.manual_seed(seed)
    net = EncoderNet(encoder, Y.shape[1], "ridge").to(device)
    net.head.load_state_dict(head_state)
    held = _held_out(np.asarray(groups), seed)
    train_idx = np.nonzero(~held)[0]
    Xtr, Xva = patches[train_idx], patches[held]
    ytr = torch.from_numpy(np.asarray(Y, np.float32)[train_idx])
    yva = np.asarray(Y, np.float32)[held]

    def score() -> float:
        net.eval()
        with torch.inference_mode():
            pred = predict_batches(lambda x: net(x)[0], Xva, device, 64, Y.shape[1])
        return float(np.nan_to_num(pearson_columns(pred, yva)).mean())

    def loss_of(net, x, idx):
        return ((net(x)[0].float() - ytr[idx].to(x.device)) ** 2).mean()

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    steps = max(1, -(-len(train_idx) // batch_size)) * epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    best, best_epoch = score(), 0
    best_state = copy.deepcopy(net.state_dict())
    yield {"stage": "finetune", "epoch": 0, "epochs": epochs, "metric": best,
           "msg": f"fine-tuning: frozen start, held-out mean r {best:.3f}"}
    for epoch in range(1, epochs + 1):
        fit = yield from fit_epoch(net, Xtr, epoch_batches(len(train_idx), batch_size, seed * 100 + epoch), loss_of,
                                   opt, sched, device, lambda x: augment_batch(x, gen), clip=1.0,
                                   info={"epoch": epoch - 1, "epochs": epochs, "what": "fine-tuning"})
        r = score()
        if r > best:
            best, best_epoch = r, epoch
            best_state = copy.deepcopy(net.state_dict())
        yield {"stage": "finetune", "epoch": epoch, "epochs": epochs, "metric": r, "train_loss": fit["loss"],
               "patches_per_s": fit["seen"] / max(fit["seconds"], 1e-9),
               "msg": f"fine-tuning epoch {epoch}/{epochs}: loss {fit['loss']:.4f}, held-out mean r {r:.3f}"}
    net.load_state_dict(best_state)
    enc_state = {k: v.detach().cpu().contiguous() for k, v in net.backbone.state_dict().items()}
    head = {k: v.detach().cpu().contiguous() for k, v in net.head.state_dict().items()}
    return enc_state, head, {"finetune_epochs": epochs, "finetune_lr": lr, "finetune_best_epoch": best_epoch,
                             "finetune_held_out_mean_r": best, "held_out_spots": int(held.sum())}
