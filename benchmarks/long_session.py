"""A long interactive session in a real viewer; prints JSON. Needs a display (``xvfb-run -a``).

A generated large slide is open with the "Predicted expression" panel following the view. The
script makes ``--steps`` random camera moves (small pans, jumps anywhere on the slide, zooms in and
out) and dwells on each for a random time, as a user does: most moves come before the last view
finished predicting (the earlier request is superseded), some wait until the view is complete. The
model is swapped every ``--swap-every`` moves (two models of different windows and input sizes,
dense and patch mode), and in the middle of the session a running view prediction is stopped with
the panel's Stop.

Reported: exceptions and error notifications (must be 0), the process RSS after warm-up and at the
end (growth target < 300 MB), the longest Qt-thread slot of the plugin's code during the session
(target < 50 ms; with the Qt thread's own CPU time in it and any garbage collection that ran inside
it; the setup before the first move - opening the slide, adding the gene layers - apart) and the
longest gap of the Qt event loop (napari's own rendering included), and view latencies.

    xvfb-run -a python benchmarks/long_session.py [--steps 1000] [--size 32768] [--device auto]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (model, mode) of each segment of the session, cycled every --swap-every moves
MODELS = {"a": ("resnet18", 224, 150.0), "b": ("resnet18", 112, 100.0)}
SEGMENTS = [("a", "dense"), ("b", "dense"), ("a", "patch"), ("b", "dense"), ("a", "dense")]


def trend(rss, warmup: int) -> dict:
    """Growth after warm-up as a rate, so a working set that moves with the view can be told from a leak:
    least-squares slopes of RSS less napari's slide cache, and of live Python objects, per 1000 moves,
    and the medians of the first and last third of the samples after warm-up."""
    r = np.array([x[:4] for x in rss if x[0] >= warmup], dtype=float)
    if len(r) < 6:
        return {}
    own = r[:, 1] - r[:, 2]
    third = len(r) // 3
    return {"own_mb_slope_per_1000_moves": round(1e3 * float(np.polyfit(r[:, 0], own, 1)[0]), 1),
            "gc_objects_slope_per_1000_moves": round(1e3 * float(np.polyfit(r[:, 0], r[:, 3], 1)[0])),
            "own_mb_median_first_third": round(float(np.median(own[:third])), 1),
            "own_mb_median_last_third": round(float(np.median(own[-third:])), 1),
            "gc_objects_first_last": [int(r[0, 3]), int(r[-1, 3])]}


def object_types() -> Counter:
    """Live GC-tracked objects by type name."""
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32768, help="generated slide side (px at 0.5 µm/px)")
    ap.add_argument("--swap-every", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=100, help="moves before the RSS baseline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--napari-cache-gb", type=float, default=0.25,
                    help="napari's opportunistic dask cache of slide chunks (Preferences > Application; "
                         "napari's default is a quarter of RAM, which it fills by design and would hide the "
                         "plugin's own growth); negative: leave napari's setting")
    ap.add_argument("--out", default="benchmark-output/session")
    args = ap.parse_args(argv)

    from napari.utils import resize_dask_cache
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from live_viewer import GcMeter, QtGapMeter, open_live_viewer, pct_ms, plugin_slots, pump, settle, view_complete
    from pan_large_slide import make_slide, rss_mb
    from slide_throughput import make_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide = out / f"slide_{args.size}.tif"
    if not slide.exists():
        make_slide(slide, args.size, 0.5)
    models = {k: make_model(out / f"model_{k}", bb, px, win, n_genes=50) for k, (bb, px, win) in MODELS.items()}

    errors: list[str] = []
    notification_manager.notification_ready.connect(
        lambda n: errors.append(str(n.message)) if n.severity >= NotificationSeverity.ERROR else None)
    old_hook, old_thread_hook = sys.excepthook, threading.excepthook

    def hook(t, e, tb):  # exceptions in Qt slots land here: count them, still print them
        errors.append(f"{t.__name__}: {e}")
        old_hook(t, e, tb)

    def thread_hook(a):
        errors.append(f"thread {a.exc_type.__name__}: {a.exc_value}")
        old_thread_hook(a)

    sys.excepthook, threading.excepthook = hook, thread_hook

    viewer, panel = open_live_viewer(slide, models["a"], args.device)
    cam = viewer.scene.camera
    side_um = args.size * 0.5
    rng = np.random.default_rng(args.seed)
    cam.zoom, cam.center = 1.0, (0, side_um / 2, side_um / 2)
    panel.predict_view()
    settle(panel, 300)
    if args.napari_cache_gb >= 0:  # what napari does when the Preferences value changes (not saved here)
        resize_dask_cache(int(args.napari_cache_gb * 1e9))
    dask_cache = resize_dask_cache().cache  # napari's opportunistic cache of the slide's chunks

    def napari_cache_mb() -> float:
        return dask_cache.total_bytes / 2**20

    setup = plugin_slots(panel)  # opening the slide, loading the model, adding the gene layers
    panel.gui_timings.clear()
    meter, gc_meter = QtGapMeter(), GcMeter()
    rss, settles, stop_info, swaps = [], [], {}, []
    t_start = time.perf_counter()
    for step in range(args.steps):
        seg = SEGMENTS[(step // args.swap_every) % len(SEGMENTS)]
        if step % args.swap_every == 0 and step:
            t0 = time.perf_counter()
            panel.configure(mode=seg[1])
            old = panel.model
            panel.load_model(models[seg[0]], genes=["G0", "G1"], background=True)  # as the button
            while panel.model is old and time.perf_counter() - t0 < 60:  # the weights load in a worker
                pump(0.01)
            swaps.append({"step": step, "model": seg[0], "mode": seg[1],
                          "load_in_worker_s": round(time.perf_counter() - t0, 3)})
        r = rng.random()
        cy, cx = cam.center[1], cam.center[2]
        view_w = max(viewer.canvas.size) / cam.zoom  # the view's width in µm
        if r < 0.5:  # a small pan: 20-100 % of the view in a random direction
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.0) * view_w
            cy, cx = cy + d * np.sin(a), cx + d * np.cos(a)
        elif r < 0.85:  # a jump anywhere in the slide
            cy, cx = rng.uniform(0.05, 0.95, 2) * side_um
        else:  # zoom in or out around the same place
            cam.zoom = float(np.exp(rng.uniform(np.log(0.5), np.log(2.5))))
        cam.center = (0, float(np.clip(cy, 0, side_um)), float(np.clip(cx, 0, side_um)))
        if step == args.steps // 2:  # stop a running prediction with the panel's Stop
            for _ in range(20):  # past the debounce, this view's request runs, unless it is glass or cached:
                pump(0.25)  # then jump elsewhere, as a user looking for something to stop would
                if panel.actions()["Stop"]:
                    break
                cam.center = (0, *(float(v) for v in rng.uniform(0.05, 0.95, 2) * side_um))
            was_running = panel.actions()["Stop"]
            pump(0.3)
            panel.stop()
            pump(0.5)
            stop_info = {"step": step, "prediction_was_running": bool(was_running), "status": panel.status,
                         "busy_after": panel.busy, "stop_enabled_after": panel.actions().get("Stop")}
        u = rng.random()
        if u < 0.6:
            pump(rng.uniform(0.02, 0.15))  # moved on within the debounce
        elif u < 0.9:
            pump(rng.uniform(0.15, 0.8))  # moved on while the view was predicting
        else:  # wait for the whole view
            t0 = time.perf_counter()
            while panel.busy and not view_complete(panel) and time.perf_counter() - t0 < 300:
                pump(0.01)
            if not view_complete(panel):
                panel.predict_view()  # after a Stop nothing follows until the next move
            settle(panel, 300)
            settles.append(time.perf_counter() - t0)
        if step == args.warmup:
            types_warm = object_types()
        if step % 10 == 0 or step == args.steps - 1:
            rss.append((step, rss_mb(), napari_cache_mb(), len(gc.get_objects()), len(viewer.layers)))
            print(json.dumps({"step": step, "s": round(time.perf_counter() - t_start, 1), "rss_mb": round(rss[-1][1]),
                              "napari_cache_mb": round(rss[-1][2]), "gc_objects": rss[-1][3],
                              "zoom": round(cam.zoom, 2), "status": panel.status}), file=sys.stderr, flush=True)
    panel.predict_view()
    final_settle = settle(panel, 300)
    types_end = object_types()
    pump(0.5)
    rss_end, cache_end = rss_mb(), napari_cache_mb()
    wall = time.perf_counter() - t_start
    meter.stop()
    gc_meter.stop()
    sys.excepthook, threading.excepthook = old_hook, old_thread_hook
    base = next(r for r in rss if r[0] >= args.warmup) if args.steps > args.warmup else rss[0]
    blocked = meter.blocked_ms()
    (out / "rss_trace.json").write_text(json.dumps(
        [dict(zip(("step", "rss_mb", "napari_cache_mb", "gc_objects", "layers"), r)) for r in rss]))
    layers = [panel.gene_layer(g) for g in ("G0", "G1")]
    res = {"benchmark": "long_session", "device": str(panel.model.device), "slide_px": args.size,
           "napari_dask_cache_gb": round(dask_cache.available_bytes / 1e9, 3),
           "steps": args.steps, "wall_s": round(wall, 1), "model_swaps": swaps, "stop": stop_info,
           "exceptions_and_error_notifications": len(errors), "errors": errors[:20],
           "rss_mb": {"after_warmup": round(base[1], 1), "end": round(rss_end, 1),
                      "peak": round(max(r[1] for r in rss), 1), "growth_after_warmup": round(rss_end - base[1], 1),
                      "napari_dask_cache_end": round(cache_end, 1),
                      "napari_dask_cache_limit": round(dask_cache.available_bytes / 2**20, 1),
                      "growth_after_warmup_excl_napari_cache": round(rss_end - cache_end - base[1] + base[2], 1),
                      **trend(rss, args.warmup),
                      "trace_step_rss_cache_objects": [(r[0], round(r[1], 1), round(r[2], 1), r[3])
                                                       for r in rss[:: max(1, len(rss) // 20)]]},
           "object_types_grown_after_warmup": (types_end - types_warm).most_common(12)
           if args.steps > args.warmup else [],
           "tile_cache_mb": round(panel.predictor.cache.nbytes / 2**20, 1),
           "views_completed": len(settles), "complete_view_wait_ms": pct_ms(settles or [0.0]),
           "final_view_s": round(final_settle, 2),
           "final_layers_have_values": all(lyr is not None and np.isfinite(lyr.data).any() for lyr in layers),
           "final_layers_show_current_model": all(lyr is not None and lyr.data is panel.raster.plane(g)
                                                  for g, lyr in zip(("G0", "G1"), layers)),
           "longest_qt_block_ms_incl_napari_rendering": round(float(blocked.max()), 1),
           "qt_block_p99_ms": round(float(np.percentile(blocked, 99)), 1), **plugin_slots(panel, gc_meter),
           "setup_slowest_slots_ms": setup["slowest_slots_ms"]}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    viewer.close()
    ok = (not errors and res["rss_mb"]["growth_after_warmup_excl_napari_cache"] < 300
          and res["final_layers_show_current_model"]
          and res["longest_plugin_slot_ms"] < 50)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
