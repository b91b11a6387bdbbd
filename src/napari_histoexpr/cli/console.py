"""What every ``histoexpr`` command shares: progress lines on stderr and running a step generator."""

from __future__ import annotations

import sys

from ..models.catalog import ENCODER_NAMES
from ..steps import drain as run_steps


def progress(msg: str) -> None:
    print(f"[histoexpr] {msg}", file=sys.stderr, flush=True)


def drain(gen, show=None):
    """Run a core step generator to completion, printing its events (``show``); return its value."""
    return run_steps(gen, show or show_event)


def show_event(ev: dict) -> None:
    stage = ev.get("stage")
    if stage == "step":
        if ev["step"] == ev["steps"] or ev["step"] % 20 == 0:
            print(f"\r[histoexpr] epoch {ev['epoch'] + 1} step {ev['step']}/{ev['steps']} "
                  f"loss {ev['loss']:.4f}", end="", file=sys.stderr, flush=True)
    elif stage == "epoch" and "val_bal_acc" in ev:  # segmenter
        print(f"\r[histoexpr] {ev['window_um']:g} µm patches, epoch {ev['epoch'] + 1}/{ev['epochs']}: "
              f"train loss {ev['train_loss']:.4f}, train acc {ev['train_acc']:.3f}, "
              f"val balanced acc {ev['val_bal_acc']:.3f}; {ev['patches_per_s']:.0f} patches/s",
              file=sys.stderr, flush=True)
    elif stage == "epoch":
        from ..train.expression_trainer import epoch_line

        print(f"\r[histoexpr] {epoch_line(ev)}; {ev['patches_per_s']:.0f} patches/s", file=sys.stderr, flush=True)
    elif stage == "section":
        progress(f"{ev['section']}: {ev['n_spots']} spots, mean r {ev['mean_r']:.3f}")
    elif stage == "warning":
        progress(f"WARNING: {ev['msg']}")
    elif "msg" in ev:
        progress(ev["msg"])


def add_encoder_options(p, cache: bool = True) -> None:
    """``--encoder-name`` (and ``--features-cache``) of a command that takes a pretrained encoder."""
    p.add_argument("--encoder-name", default=None, choices=ENCODER_NAMES,
                   help="which pretrained encoder the file holds, where its shapes fit several (checked against it)")
    if cache:
        p.add_argument("--features-cache", default=None, metavar="DIR",
                       help="with a pretrained encoder: where its frozen features are kept and reused "
                            "(default: encoder-features beside --out)")
