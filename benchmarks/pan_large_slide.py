"""Open a generated 50k x 50k pyramidal slide and pan over it; print JSON.

Measures, for each backend that reads the file (OpenSlide, tifffile):
- ``time_to_first_display_s``: open the slide, build the napari layer data and read everything the
  first, whole-slide view needs (the coarsest level that fills a 1920x1080 screen);
- with ``--viewer`` (needs a display or xvfb-run): the same in a real napari viewer, until the first
  rendered screenshot;
- 500 random viewport reads (1920x1080 px of a random level at a random place, as napari asks for
  when panning and zooming): latency p50/p95 and the process RSS growth over them.

    python benchmarks/pan_large_slide.py [--size 50000] [--reads 500] [--viewer] [--out DIR]

The slide is written once (JPEG tiles, ~2 min on 2 cores) and reused from ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


class TextureRenderer:
    """A fast renderer for huge synthetic slides: a real synthetic-tissue texture tiled periodically
    under a coarse tissue mask (the analytic renderer would take hours for 2.5 gigapixels)."""

    def __init__(self, size: int, mpp: float, seed: int = 0, atlas: int = 2048):
        from napari_histoexpr.datasets import SyntheticTissue
        from napari_histoexpr.io.slides import downsample2

        src = SyntheticTissue(4 * atlas, 4 * atlas, mpp, seed)
        base = src.render(atlas, atlas, atlas, atlas, 1.0)  # the middle: all tissue
        self.atlases = {1.0: base}
        ds, a = 1.0, base
        while a.shape[0] > 64:
            a, ds = downsample2(a), ds * 2
            self.atlases[ds] = a
        self.mask_ds = 256
        shape = SyntheticTissue(size, size, mpp, seed)
        self.mask = shape.class_map(self.mask_ds) > 0  # tissue outline at 1/256

    def __call__(self, y0, x0, h, w, ds):
        a = self.atlases.get(float(ds))
        if a is None:  # beyond the atlas pyramid: flat tissue colour
            a = np.full((8, 8, 3), self.atlases[max(self.atlases)].mean((0, 1)), np.uint8)
        ys = np.arange(y0, y0 + h)
        xs = np.arange(x0, x0 + w)
        tile = a[np.ix_(ys % a.shape[0], xs % a.shape[1])]
        my = np.clip((ys * ds) // self.mask_ds, 0, self.mask.shape[0] - 1).astype(int)
        mx = np.clip((xs * ds) // self.mask_ds, 0, self.mask.shape[1] - 1).astype(int)
        m = self.mask[np.ix_(my, mx)]
        out = np.full_like(tile, 243)
        out[m] = tile[m]
        return out


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def make_slide(path: Path, size: int, mpp: float) -> float:
    from napari_histoexpr.datasets import write_pyramidal_tiff

    t0 = time.perf_counter()
    write_pyramidal_tiff(path, TextureRenderer(size, mpp), size, size, mpp)
    return time.perf_counter() - t0


def first_level_for_screen(pyr, screen=(1080, 1920)) -> int:
    """The level napari shows for the whole slide: the coarsest that still fills the screen."""
    best = pyr.n_levels - 1
    for i, lv in enumerate(pyr.levels):
        if lv.shape[0] <= screen[0] * 2 and lv.shape[1] <= screen[1] * 2:
            return i
    return best


def bench_backend(path: Path, backend: str, reads: int, seed: int) -> dict:
    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.layerdata import slide_layer_data

    rss0 = rss_mb()
    t0 = time.perf_counter()
    pyr = open_slide(path, backend=backend)
    slide_layer_data(pyr)
    t_open = time.perf_counter() - t0
    lv = first_level_for_screen(pyr)
    np.asarray(pyr.levels[lv])
    t_first = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    vh, vw = 1080, 1920
    lat = []
    rss_start = rss_mb()
    for _ in range(reads):
        level = int(rng.integers(0, pyr.n_levels))
        arr = pyr.levels[level]
        h, w = min(vh, arr.shape[0]), min(vw, arr.shape[1])
        y = int(rng.integers(0, arr.shape[0] - h + 1))
        x = int(rng.integers(0, arr.shape[1] - w + 1))
        t = time.perf_counter()
        block = np.asarray(arr[y:y + h, x:x + w])
        lat.append(time.perf_counter() - t)
        assert block.shape == (h, w, 3)
    rss_end = rss_mb()
    pyr.close()
    return {
        "backend": pyr.backend, "levels": pyr.n_levels, "tile_size": list(pyr.tile_size),
        "open_s": round(t_open, 4), "time_to_first_display_s": round(t_first, 4),
        "first_display_level": lv,
        "viewport_reads": reads, "read_p50_ms": round(1e3 * float(np.percentile(lat, 50)), 2),
        "read_p95_ms": round(1e3 * float(np.percentile(lat, 95)), 2),
        "rss_before_open_mb": round(rss0, 1), "rss_before_reads_mb": round(rss_start, 1),
        "rss_after_reads_mb": round(rss_end, 1), "rss_growth_mb": round(rss_end - rss_start, 1),
    }


def bench_viewer(path: Path) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histoexpr.io.slides import open_slide
    from napari_histoexpr.layerdata import slide_layer_data

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    QApplication.processEvents()
    t0 = time.perf_counter()
    pyr = open_slide(path)
    data, kw, _ = slide_layer_data(pyr)
    viewer.add_image(data, **kw)
    viewer.reset_view()
    img = viewer.screenshot(canvas_only=True, flash=False)
    t_first = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    lat = []
    h0, w0 = pyr.level0_shape
    rss_start = rss_mb()
    for _ in range(50):  # pan and zoom, then render
        viewer.scene.camera.center = (rng.uniform(0, h0 * pyr.world_mpp), rng.uniform(0, w0 * pyr.world_mpp))
        viewer.scene.camera.zoom = float(rng.choice([0.02, 0.1, 0.5, 2.0]))
        t = time.perf_counter()
        viewer.screenshot(canvas_only=True, flash=False)
        lat.append(time.perf_counter() - t)
    out = {"viewer_time_to_first_display_s": round(t_first, 3),
           "viewer_first_frame_not_blank": bool(img[..., :3].std() > 1),
           "viewer_pan_render_p50_ms": round(1e3 * float(np.percentile(lat, 50)), 1),
           "viewer_pan_render_p95_ms": round(1e3 * float(np.percentile(lat, 95)), 1),
           "viewer_rss_growth_mb": round(rss_mb() - rss_start, 1)}
    viewer.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=50_000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--reads", type=int, default=500)
    ap.add_argument("--out", default="benchmark-output")
    ap.add_argument("--viewer", action="store_true", help="also time a real napari viewer")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"synthetic_{args.size}.tif"
    result: dict = {"benchmark": "pan_large_slide", "size": [args.size, args.size], "mpp": args.mpp,
                    "cpus": os.cpu_count()}
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr, flush=True)
        result["write_slide_s"] = round(make_slide(path, args.size, args.mpp), 1)
    result["file_mb"] = round(path.stat().st_size / 2**20, 1)
    result["backends"] = [bench_backend(path, b, args.reads, args.seed) for b in ("openslide", "tifffile")]
    if args.viewer:
        result.update(bench_viewer(path))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
