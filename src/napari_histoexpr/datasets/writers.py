"""Writing generated data as real files in the formats users have: tiled pyramidal TIFF (OpenSlide
and tifffile read it) and Space Ranger outputs (Cell Ranger HDF5, Matrix Market folders, the
hires/lowres tissue images)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .tissue import SyntheticTissue


# -------------------------------------------------------------------------------------------------
# writing slides
# -------------------------------------------------------------------------------------------------
def pyramid_tiles(render, height: int, width: int, tile: int):
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            h, w = min(tile, height - y), min(tile, width - x)
            t = render(y, x, h, w)
            if h < tile or w < tile:  # tifffile wants full tiles
                full = np.empty((tile, tile, 3), np.uint8)
                full[:] = 255
                full[:h, :w] = t
                t = full
            yield t


def write_pyramidal_tiff(path: str | os.PathLike, render, height: int, width: int, mpp: float,
                         tile: int = 512, min_side: int = 512, quality: int = 90,
                         aperio: bool = False) -> Path:
    """Write a tiled JPEG pyramid that OpenSlide (generic-tiff or Aperio) and tifffile read.

    ``render(y, x, h, w, downsample)`` returns the RGB pixels of a window of the level with that
    downsample; it is called tile by tile, so memory stays bounded for any slide size. The file is
    written to a temporary name and renamed, so a crash never leaves a half-written slide.
    """
    import tifffile

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    levels = [(height, width, 1.0)]
    while max(levels[-1][:2]) > min_side:
        h, w, ds = levels[-1]
        levels.append(((h + 1) // 2, (w + 1) // 2, ds * 2))
    res = (1e4 / mpp, 1e4 / mpp)
    desc = (f"Aperio Image Library napari-histoexpr synthetic\r\n{width}x{height} [0,0 {width}x{height}]"
            f" ({tile}x{tile}) JPEG Q={quality}|AppMag = 20|MPP = {mpp}") if aperio else \
        f"napari-histoexpr synthetic slide; mpp={mpp}"
    with tifffile.TiffWriter(tmp, bigtiff=height * width > 2**31 // 3) as tif:
        for i, (h, w, ds) in enumerate(levels):
            tif.write(
                pyramid_tiles(lambda y, x, hh, ww, _ds=ds: render(y, x, hh, ww, _ds), h, w, tile),
                shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="jpeg", compressionargs={"level": quality},
                resolution=res if i == 0 else (res[0] / ds, res[1] / ds),
                resolutionunit="CENTIMETER", description=desc if i == 0 else None,
                subfiletype=0 if i == 0 else 1, metadata=None,
            )
    os.replace(tmp, path)
    return path


# -------------------------------------------------------------------------------------------------
# Space Ranger output
# -------------------------------------------------------------------------------------------------
def visium_barcodes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 303)
    letters = np.array(list("ACGT"))
    out, seen = [], set()
    while len(out) < n:
        b = "".join(letters[rng.integers(0, 4, 16)]) + "-1"
        if b not in seen:
            seen.add(b)
            out.append(b)
    return out


def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], genes: list[str],
                 library_ids: bool = True) -> None:
    """A Cell Ranger v3 feature-barcode HDF5 (``matrix`` group, CSC genes x barcodes)."""
    import h5py
    import scipy.sparse as sp

    m = sp.csc_matrix(counts.T.astype(np.int32))
    with h5py.File(path, "w") as f:
        if library_ids:
            f.attrs["library_ids"] = np.array([b"synthetic"])
            f.attrs["chemistry_description"] = b"Spatial 3' v1"
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data)
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("name", data=np.array(genes, dtype="S"))
        ft.create_dataset("id", data=np.array([f"SYN{i:05d}" for i in range(len(genes))], dtype="S"))
        ft.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes), dtype="S"))
        ft.create_dataset("genome", data=np.array(["synthetic"] * len(genes), dtype="S"))


def spatial_images(spatial: Path, tissue: SyntheticTissue, size: int) -> dict:
    """Space Ranger's hires (≤ 2000 px) and lowres (600 px) tissue images; returns their scale factors."""
    from PIL import Image

    hires_scalef = 2000.0 / size if size > 2000 else 1.0
    lowres_scalef = 600.0 / size
    for key, sf in (("hires", hires_scalef), ("lowres", lowres_scalef)):
        n = int(round(size * sf))
        Image.fromarray(tissue.render(0, 0, n, n, 1.0 / sf)).save(spatial / f"tissue_{key}_image.png")
    return {"tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": lowres_scalef}


def write_mtx_folder(folder: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    import gzip

    import scipy.io
    import scipy.sparse as sp

    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.coo_matrix(counts.T))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.write("\n".join(barcodes) + "\n")
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        for i, g in enumerate(genes):
            f.write(f"SYN{i:05d}\t{g}\tGene Expression\n")


