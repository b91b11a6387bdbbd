"""View-refresh latency of the live predicted-expression layers after a pan, and the longest block
of the Qt thread; prints JSON. Needs a display (use ``xvfb-run -a``).

A real napari viewer shows a generated slide with the "Slide & spots" and "Predicted expression"
panels (follow view on). The camera jumps to random places (new tiles: cache misses) and back to
visited ones (cache hits); latency is from the camera change to the moment every tissue tile of
the view is on screen (debounce included). A 5 ms QTimer measures how long the Qt thread was ever
kept from running its event loop.

    xvfb-run -a python benchmarks/view_refresh.py [--pans 20] [--backbone resnet18] [--device auto]
        [--modes dense:int8,dense,patch] [--encoder vit-s16 --modes patch]

``--encoder vit-s16|vit-b16|vit-l16``: the model is a ridge head (250 genes, random weights) on a
random-initialised ViT file in timm's layout, as ``histoexpr train --encoder`` makes it; ViTs run in
patch mode only (224 px for 112 µm, the encoder's own window). ``--tokens``: the head as
``--subspot-tokens`` makes it (one value per 8 µm token, tiles of 112 µm read once for 196 cells).

Every ``MODE[:PRECISION]`` of ``--modes`` is measured in one run, on the same viewer, slide and pans
(``dense:int8``: dense mode with the int8 body; a plain mode runs precision ``auto``). Dense modes
also report the body's work per new view (input Mpx, every block with its margin) and its rate
alone on this host, measured right after the pans (``body_alone_new_region_s``: the least a new
view could take here; ``refresh_p50_over_body_alone``: how far the whole pipeline is from it), so
runs on hosts of different speed can be compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def body_work(pred, tiles) -> tuple[int, tuple[int, int, int]]:
    """Input px the body runs on to predict ``tiles`` in dense mode (every block with its context
    margin, as the view's jobs plan them) and the largest block: ``(feature rows, cols, margin px)``."""
    from napari_histoexpr.models.dense import STRIDE

    px, big = 0, (0, 0, 0, 0)
    for group in pred.job_groups(tiles):
        job = pred.plan_job(group)
        for i, (y0, y1, x0, x1) in job.items:
            m = job.geometry[i][3]
            area = ((y1 - y0) * STRIDE + 2 * m) * ((x1 - x0) * STRIDE + 2 * m)
            px += area
            big = max(big, (area, y1 - y0, x1 - x0, m))
    return px, big[1:]


def body_rate(pred, block: tuple[int, int, int], seconds: float = 3.0) -> float:
    """Input Mpx/s of the body alone (the predictor's precision) on one block (:func:`body_work`),
    run as the view's jobs run it, the viewer idle: what the host can do, against which the view's
    refresh is compared."""
    from napari_histoexpr.models.dense import STRIDE, feature_blocks

    hf, wf, m = block
    img = np.random.default_rng(0).integers(0, 255, (hf * STRIDE + 2 * m, wf * STRIDE + 2 * m, 3), dtype=np.uint8)
    body = pred.model.branches_for(pred.pyr)[0].body

    def run():
        feature_blocks(body, img, pred.model.device, m, block_feats=max(hf, wf))

    run()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        run()
        n += 1
    return img.shape[0] * img.shape[1] * n / (time.perf_counter() - t0) / 1e6


def make_vit_head(out: Path, arch: str, n_genes: int = 250, tokens: bool = False) -> Path:
    """A model folder of a ridge head (random weights) on a random ViT file, as `train --encoder` writes
    (``tokens``: as `--subspot-tokens` writes it, one value per patch token)."""
    import torch

    from encoder_heads import write_vit
    from napari_histoexpr.models.artifact import save_artifact
    from napari_histoexpr.models.encoder_files import file_sha256, load_encoder
    from napari_histoexpr.models.expression import KIND

    path = write_vit(out / f"{arch}.safetensors", arch)
    enc = load_encoder(path)
    k = enc.kind
    torch.manual_seed(0)
    head = torch.nn.Linear(enc.dim, n_genes)
    genes = [f"G{i}" for i in range(n_genes)]
    meta = {"kind": KIND, "backbone": f"encoder:{k.name}", "genes": genes, "aux_genes": [], "hvg50": genes[:50],
            "target": {"mean": [0.0] * n_genes, "std": [1.0] * n_genes}, "window_um": k.window_um,
            "input_px": k.px, "input": {"mean": list(k.mean), "std": list(k.std)},
            "encoder": {"path": str(path.resolve()), "sha256": file_sha256(path), "name": k.name, "head": "ridge",
                        "dim": enc.dim, "tokens": k.tokens},
            "training": {"sections": [], "validation": None, "config": {}}}
    if tokens:
        meta["subspot"] = {"cell_um": k.window_um / enc.cells, "cells": enc.cells, "spot_um": 55.0, "smooth_cells": 0.0,
                           "cells_from": "patch tokens"}
    name = f"model_{arch}_{'tokens' if tokens else 'ridge'}"
    return save_artifact(out / name, {f"head.{n}": v for n, v in head.state_dict().items()}, meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pans", type=int, default=20)
    ap.add_argument("--size", type=int, default=16384, help="generated slide side (px at 0.5 µm/px)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--window-um", type=float, default=150.0)
    ap.add_argument("--zoom", type=float, default=1.0, help="screen px per µm (1.0: ~1 mm wide view)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--encoder", default=None, choices=("vit-s16", "vit-b16", "vit-l16"),
                    help="a ridge head on a random ViT of this size instead of a CNN model")
    ap.add_argument("--tokens", action="store_true", help="with --encoder: a token-level (sub-spot) head")
    ap.add_argument("--modes", default="dense:int8,dense,patch",
                    help="MODE[:PRECISION] settings measured, in this order (precision: auto or int8)")
    ap.add_argument("--out", default="benchmark-output/view")
    args = ap.parse_args(argv)

    from live_viewer import GcMeter, QtGapMeter, open_live_viewer, pct_ms, plugin_slots, settle
    from napari_histoexpr.widgets.expression_view import DEBOUNCE_MS
    from pan_large_slide import make_slide
    from slide_throughput import make_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # a fresh clone has no benchmark-output/
    slide = out / f"slide_{args.size}.tif"
    if not slide.exists():
        make_slide(slide, args.size, 0.5)
    if args.encoder:
        model_dir = make_vit_head(out, args.encoder, tokens=args.tokens)
        args.backbone, args.px, args.window_um = f"encoder:{args.encoder}", 224, 112.0
    else:
        model_dir = make_model(out / f"model_{args.backbone}", args.backbone, args.px, args.window_um)
    viewer, panel = open_live_viewer(slide, model_dir, args.device)
    cam = viewer.scene.camera
    cam.zoom = args.zoom
    meter, gc_meter = QtGapMeter(), GcMeter()
    gaps = meter.gaps

    def measure(spec: str) -> dict:
        mode, _, precision = spec.partition(":")
        panel.configure(mode=mode, precision=precision or "auto")
        rng = np.random.default_rng(0)
        h, w = args.size * 0.5, args.size * 0.5
        cam.center = (0, h / 2, w / 2)
        panel.predict_view()
        t_first = settle(panel)
        setup_block = float(max(gaps)) if gaps else 0.0
        gaps.clear()
        panel.gui_timings.clear()
        misses, hits, visited, firsts, views = [], [], [], [], []
        for i in range(args.pans):
            if len(visited) > 1 and i % 2 == 1:  # back to an earlier place (not the current one)
                c = visited[-2]
                bucket = hits
            else:
                c = (0, float(rng.uniform(0.2, 0.8) * h), float(rng.uniform(0.2, 0.8) * w))
                visited.append(c)
                bucket = misses
            t0 = time.perf_counter()
            cam.center = c
            settle(panel)
            bucket.append(time.perf_counter() - t0)
            if bucket is misses:  # the first predicted tiles of the new view on screen (progressive view)
                firsts.append(min((t for t in panel.tile_times if t > t0), default=time.perf_counter()) - t0)
                views.append(list(panel.last_request_tiles))
        blocked = meter.blocked_ms()
        pred = panel.predictor
        host = {}
        if pred.mode == "dense":  # the body's work per new view and the host's body rate, same run
            work = [body_work(pred, v) for v in views]
            mpx = float(np.mean([w[0] for w in work])) / 1e6
            rate = body_rate(pred, max((w[1] for w in work), key=lambda b: b[0] * b[1]))
            meter.restart()  # that ran on this thread: not a block of the next mode's setup
            host = {"body_mpx_per_new_region": round(mpx, 2), "body_mpx_per_s_alone": round(rate, 2),
                    "body_alone_new_region_s": round(mpx / rate, 2),
                    "refresh_p50_over_body_alone": round(float(np.percentile(misses, 50)) / (mpx / rate), 2)}
        return {"mode": panel.predictor.mode, "precision": panel.predictor.precision,
                "grid_step_um": round(panel.predictor.stride_um, 3),
                "tile_cells": panel.predictor.grid.tile_cells, "view_tiles": len(panel.last_request_tiles),
                "refresh_new_region_ms": pct_ms(misses), "first_result_new_region_ms": pct_ms(firsts),
                "refresh_cached_region_ms": pct_ms(hits), "first_view_s": round(t_first, 2),
                "longest_qt_block_setup_ms": round(1e3 * (setup_block - 0.005), 1),
                "longest_qt_block_ms_incl_napari_rendering": round(float(blocked.max()), 1),
                "qt_block_p99_ms": round(float(np.percentile(blocked, 99)), 1), **host,
                **plugin_slots(panel, gc_meter)}

    res = {"benchmark": "view_refresh", "device": str(panel.model.device), "backbone": args.backbone,
           "px": args.px, "window_um": args.window_um, "canvas": list(viewer.canvas.size), "debounce_ms": DEBOUNCE_MS,
           **{m: measure(m) for m in args.modes.split(",")}}
    meter.stop()
    gc_meter.stop()
    print(json.dumps(res, indent=2))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
