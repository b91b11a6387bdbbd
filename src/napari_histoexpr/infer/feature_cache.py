"""Frozen encoder features of a section's spots, computed once and kept on disk.

Layout: ``CACHE/<key>/<section>-<spots>.zarr`` where ``key`` digests what makes features differ (the
encoder file's SHA-256 and name, input px, window µm, normalisation, stain normalisation) and
``spots`` digests the spot centres, so another window, encoder or spot set never reuses a cache. The
store holds ``features`` ``(N, dim)`` float32 in chunks of :data:`CHUNK` spots and ``done`` (one flag
per chunk); a chunk's flag is written after its features, so a run killed at any point (even
``kill -9``) resumes with the chunks it finished and computes the rest, with the same output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..errors import HistoExprError

#: spots per chunk (one model batch or a few; each chunk is resumable on its own)
CHUNK = 128


def default_cache(out_dir) -> Path:
    """Where a model folder's features are kept unless told: ``encoder-features`` beside it (shared by
    every model fitted in the same parent folder)."""
    return Path(out_dir).resolve().parent / "encoder-features"


def cache_key(encoder, stain: dict | None = None, pool: np.ndarray | None = None) -> str:
    """What makes an encoder's features differ, digested (``pool``: the cell weights of a pooled
    feature, see :func:`spot_features_steps`)."""
    k = encoder.kind
    what = {"sha256": encoder.sha256, "name": k.name, "px": k.px, "window_um": k.window_um, "mean": list(k.mean),
            "std": list(k.std), "tokens": k.tokens, "stain": stain}
    if pool is not None:
        what["pool"] = hashlib.sha256(np.ascontiguousarray(pool, np.float32).tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def store_path(cache_dir, encoder, section: str, xy: np.ndarray, stain: dict | None = None,
               pool: np.ndarray | None = None) -> Path:
    spots = hashlib.sha256(np.ascontiguousarray(np.asarray(xy, np.float64)).tobytes()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in section)
    return Path(cache_dir) / cache_key(encoder, stain, pool) / f"{safe}-{spots}.zarr"


def spot_features_steps(encoder, section: str, patches, xy: np.ndarray, cache_dir, device,
                        batch_size: int = 64, stain: dict | None = None, pool: np.ndarray | None = None
                        ) -> Generator[dict, None, np.ndarray]:
    """``(N, dim)`` features of ``patches`` (uint8, the encoder's px, at the spots ``xy``; or a function
    that cuts them, called only when the cache lacks a chunk) from the cache, computing the chunks it
    lacks; yields progress events. The feature is the encoder's embedding, or
    with ``pool`` (``(cells, cells)`` weights) the weighted mean of its cell map (a ViT's patch tokens,
    a CNN's feature cells: :meth:`~napari_histoexpr.models.encoder_files.Encoder.cell_map`)."""
    import torch
    import zarr

    from ..models.runtime import predict_batches

    n, dim = len(xy), (encoder.dim if pool is None else encoder.cell_dim)
    device = torch.device(device)
    path = store_path(cache_dir, encoder, section, xy, stain, pool)
    fn = encoder.embed
    if pool is not None:
        w = torch.as_tensor(np.asarray(pool, np.float32), device=device)
        fn = lambda x: torch.einsum("nchw,hw->nc", encoder.cell_map(x).float(), w)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    n_chunks = max(1, -(-n // CHUNK))
    try:
        g = zarr.open_group(str(path), mode="a")
        ok = ("features" in g and g["features"].shape == (n, dim) and "done" in g
              and g["done"].shape == (n_chunks,))
    except Exception:  # a store left unreadable by a kill while it was being created: start it again
        ok, g = False, None
    if not ok:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        g = zarr.open_group(str(path), mode="w")
        g.create_array("features", shape=(n, dim), chunks=(CHUNK, dim), dtype="float32")
        g.create_array("done", shape=(n_chunks,), chunks=(n_chunks,), dtype="uint8", fill_value=0)
        g.attrs["histoexpr_features"] = {"encoder": encoder.kind.name, "sha256": encoder.sha256, "section": section,
                                         "px": encoder.kind.px, "window_um": encoder.kind.window_um, "n": n}
    done = np.asarray(g["done"][:]).astype(bool)
    todo = np.nonzero(~done)[0]
    if len(todo) and callable(patches):
        patches = patches()
    encoder.net.to(device).eval()
    for k, c in enumerate(todo):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        with torch.inference_mode():
            f = predict_batches(fn, patches[lo:hi], device, batch_size, dim)
        if not np.isfinite(f).all():
            raise HistoExprError(f"{encoder.kind.name} gave non-finite features for {section}; is the file intact?")
        g["features"][lo:hi] = f.astype(np.float32)
        g["done"][c] = 1  # after the features: a kill between the two recomputes this chunk
        yield {"stage": "features", "done": k + 1, "total": len(todo),
               "msg": f"{section}: features {hi}/{n} ({encoder.kind.name})"}
    if not len(todo):
        yield {"stage": "features", "msg": f"{section}: {n} features from the cache"}
    return np.asarray(g["features"][:], np.float32)
