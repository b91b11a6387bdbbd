"""Built-in demo and test data with planted, known ground truth.

A :class:`SyntheticTissue` is a procedural H&E-like section defined *analytically* in level-0
pixel coordinates: a tissue outline, three tissue classes in warped Voronoi regions, and per-class
textures (nuclei on jittered grids, stromal fibres). Any window can be rendered at any downsample,
tile by tile, so slides of any size are written with bounded memory and every pyramid level shows
the same tissue.

Spots on a Visium hexagonal grid get counts whose means depend on the class fractions under each
spot through a planted profile matrix (:data:`PLANTED_GENES`). The ground truth (class map, spot
fractions, profiles) is written next to the data for tests and benchmarks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ("background", "tumour", "stroma", "immune")
#: marker genes planted per class (expression grows with the class fraction under the spot)
PLANTED_GENES = {
    "tumour": ["ERBB2", "KRT8", "KRT18", "EPCAM", "CDH1"],
    "stroma": ["COL1A1", "COL1A2", "COL3A1", "FN1", "DCN"],
    "immune": ["PTPRC", "CD74", "IGKC", "CD3E", "MS4A1"],
}
HOUSEKEEPING = ["ACTB", "GAPDH", "RPLP0", "B2M", "MALAT1"]
N_NOISE_GENES = 40
#: bumped whenever generated data changes, so cached demo folders are regenerated
DATA_VERSION = 4

# texture parameters per class, in µm (cell pitch, nucleus radius, fraction of cells with a
# nucleus, elongation) and colours (cytoplasm/matrix, nucleus)
_TEXTURE = {
    1: dict(cell=11.0, radius=4.2, p=0.95, elong=1.15, bg=(224, 168, 206), nuc=(78, 40, 128)),
    2: dict(cell=16.0, radius=2.4, p=0.45, elong=3.0, bg=(240, 170, 196), nuc=(112, 62, 146)),
    3: dict(cell=6.5, radius=2.6, p=0.97, elong=1.0, bg=(214, 176, 214), nuc=(52, 28, 96)),
}
_BACKGROUND = np.array((241, 239, 243), np.float32)


def _hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) numbers from integer grid coordinates (splitmix64 style)."""
    x = (a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        b.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)) ^ np.uint64(salt * 0x165667B19E3779F9 & (2**64 - 1))
    x ^= x >> np.uint64(31)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass
class SyntheticTissue:
    """A procedural H&E section of ``height x width`` level-0 pixels at ``mpp`` µm/px."""

    height: int = 4096
    width: int = 4096
    mpp: float = 0.5
    seed: int = 0
    n_regions: int = 14
    #: tumour/stroma/immune proportions of the regions (None: the classes cycle, equal shares)
    class_weights: tuple[float, float, float] | None = None
    #: small immune clusters (a pattern finer than a spot): ``(pitch µm, probability, min radius µm,
    #: max radius µm)`` of a jittered grid of disks, or ``None``
    blobs: tuple[float, float, float, float] | None = None

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        cy, cx = self.height / 2, self.width / 2
        self._centre = (cy, cx)
        self._radii = (0.44 * self.height, 0.44 * self.width)
        self._shape_coef = rng.normal(0, 0.05, size=(4, 2))
        self._shape_phase = rng.uniform(0, 2 * np.pi, size=4)
        # Voronoi seeds inside the tissue ellipse; classes cycle so each one is present
        ang = rng.uniform(0, 2 * np.pi, self.n_regions)
        rad = np.sqrt(rng.uniform(0, 1, self.n_regions)) * 0.9
        self._seeds = np.stack([cy + rad * np.sin(ang) * self._radii[0],
                                cx + rad * np.cos(ang) * self._radii[1]], axis=1)
        labels = np.array([1, 2, 3] * (self.n_regions // 3 + 1))[: self.n_regions]
        if self.class_weights is not None:  # each class once, the rest drawn with these weights
            w = np.asarray(self.class_weights, float)
            labels[3:] = rng.choice([1, 2, 3], size=self.n_regions - 3, p=w / w.sum())
        self._seed_labels = rng.permutation(labels)
        self._warp_phase = rng.uniform(0, 2 * np.pi, size=4)
        self._warp_amp = 0.04 * min(self.height, self.width)

    # -- geometry -----------------------------------------------------------------------------
    def classes_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Class (0 background, 1 tumour, 2 stroma, 3 immune) at level-0 pixel coordinates."""
        ys = np.asarray(ys, np.float64)
        xs = np.asarray(xs, np.float64)
        cy, cx = self._centre
        ry, rx = self._radii
        dy, dx = (ys - cy) / ry, (xs - cx) / rx
        theta = np.arctan2(dy, dx)
        r = np.hypot(dy, dx)
        edge = 1.0
        for k in range(4):
            edge = edge + self._shape_coef[k, 0] * np.sin((k + 2) * theta + self._shape_phase[k])
        tissue = r < edge
        L = min(self.height, self.width)
        wy = ys + self._warp_amp * np.sin(xs / (0.21 * L) + self._warp_phase[0]) \
            + 0.5 * self._warp_amp * np.sin(ys / (0.09 * L) + self._warp_phase[1])
        wx = xs + self._warp_amp * np.sin(ys / (0.23 * L) + self._warp_phase[2]) \
            + 0.5 * self._warp_amp * np.sin(xs / (0.11 * L) + self._warp_phase[3])
        best = np.full(ys.shape, np.inf)
        lab = np.zeros(ys.shape, np.uint8)
        for (sy, sx), sl in zip(self._seeds, self._seed_labels):
            d = (wy - sy) ** 2 + (wx - sx) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            lab = np.where(closer, sl, lab)
        if self.blobs is not None:
            lab = np.where(self.in_blob(ys, xs), 3, lab)
        return np.where(tissue, lab, 0).astype(np.uint8)

    def in_blob(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Whether level-0 points fall inside a small immune cluster (see :attr:`blobs`)."""
        pitch, prob, rmin, rmax = self.blobs
        yy, xx = np.broadcast_arrays(np.asarray(ys, float) * self.mpp, np.asarray(xs, float) * self.mpp)  # µm
        gy, gx = np.floor(yy / pitch).astype(np.int64), np.floor(xx / pitch).astype(np.int64)
        inside = np.zeros(yy.shape, bool)
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                cy, cx = gy + oy, gx + ox
                u = [_hash01(cy, cx, 5000 + 17 * k + self.seed) for k in range(4)]
                ny, nx = (cy + 0.2 + 0.6 * u[0]) * pitch, (cx + 0.2 + 0.6 * u[1]) * pitch
                r = rmin + (rmax - rmin) * u[2]
                inside |= (u[3] < prob) & ((yy - ny) ** 2 + (xx - nx) ** 2 < r * r)
        return inside

    def class_map(self, downsample: float) -> np.ndarray:
        """The class raster at ``downsample`` (cell centres sampled)."""
        h = int(np.ceil(self.height / downsample))
        w = int(np.ceil(self.width / downsample))
        ys = (np.arange(h) + 0.5) * downsample - 0.5
        xs = (np.arange(w) + 0.5) * downsample - 0.5
        return self.classes_at(ys[:, None], xs[None, :])

    # -- rendering ----------------------------------------------------------------------------
    def render(self, y0: int, x0: int, h: int, w: int, downsample: float = 1.0) -> np.ndarray:
        """RGB uint8 pixels ``[y0:y0+h, x0:x0+w]`` of the level with the given downsample."""
        ds = float(downsample)
        iy = (np.arange(y0, y0 + h) + 0.5) * ds - 0.5
        ix = (np.arange(x0, x0 + w) + 0.5) * ds - 0.5
        Y, X = np.meshgrid(iy, ix, indexing="ij")
        cls = self.classes_at(Y, X)
        out = np.empty((h, w, 3), np.float32)
        out[:] = _BACKGROUND
        um_y, um_x = Y * self.mpp, X * self.mpp
        for c, tex in _TEXTURE.items():
            m = cls == c
            if not m.any():
                continue
            yy, xx = um_y[m], um_x[m]
            col = np.array(tex["bg"], np.float32)[None, :].repeat(yy.size, 0)
            if c == 2:  # collagen fibres: wavy bands whose direction drifts slowly
                ang = 0.7 + 0.6 * np.sin(xx / 240.0 + self.seed) + 0.4 * np.cos(yy / 310.0)
                phase = (xx * np.cos(ang) + yy * np.sin(ang)) / 7.0 + 1.5 * np.sin(yy / 23.0)
                fib = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
                fib *= min(1.0, 2.5 / ds)  # fade fibres that a level cannot resolve
                col -= (fib[:, None] * np.array([28, 52, 36], np.float32))
            cov = self._nuclei(yy, xx, tex, ds, salt=c)
            nuc = np.array(tex["nuc"], np.float32)
            col = col * (1 - cov[:, None]) + nuc * cov[:, None]
            out[m] = col
        # tissue-scale staining variation + grain
        grain = _hash01(np.round(Y).astype(np.int64), np.round(X).astype(np.int64), self.seed + 7)
        out += (grain[..., None] - 0.5) * 14.0
        out *= (1.0 + 0.04 * np.sin(Y / 900.0 + self.seed) * np.cos(X / 700.0))[..., None]
        return np.clip(out, 0, 255).astype(np.uint8)

    def _nuclei(self, yy, xx, tex, ds, salt) -> np.ndarray:
        """Coverage in [0, 1] of nuclei placed on a jittered grid (coordinates in µm)."""
        cell, radius, p, elong = tex["cell"], tex["radius"], tex["p"], tex["elong"]
        gy = np.floor(yy / cell).astype(np.int64)
        gx = np.floor(xx / cell).astype(np.int64)
        best = np.full(yy.shape, np.inf)
        soft = max(ds * self.mpp, 0.6)
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                cy, cx = gy + oy, gx + ox
                u1 = _hash01(cy, cx, salt * 1000 + self.seed)
                u2 = _hash01(cy, cx, salt * 2000 + self.seed + 1)
                u3 = _hash01(cy, cx, salt * 3000 + self.seed + 2)
                present = u3 < p
                ny = (cy + 0.15 + 0.7 * u1) * cell
                nx = (cx + 0.15 + 0.7 * u2) * cell
                a = u1 * np.pi
                dy, dx = yy - ny, xx - nx
                along = dx * np.cos(a) + dy * np.sin(a)
                across = -dx * np.sin(a) + dy * np.cos(a)
                rsize = radius * (0.8 + 0.4 * u2)
                a_major, a_minor = rsize * np.sqrt(elong), rsize / np.sqrt(elong)
                d = (np.hypot(along / a_major, across / a_minor) - 1.0) * a_minor
                d = np.where(present, d, np.inf)
                best = np.minimum(best, d)
        return np.clip(0.5 - best / soft, 0.0, 1.0) * 0.92


# -------------------------------------------------------------------------------------------------
# writing slides
# -------------------------------------------------------------------------------------------------
def _tiles(render, height: int, width: int, tile: int):
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
                _tiles(lambda y, x, hh, ww, _ds=ds: render(y, x, hh, ww, _ds), h, w, tile),
                shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="jpeg", compressionargs={"level": quality},
                resolution=res if i == 0 else (res[0] / ds, res[1] / ds),
                resolutionunit="CENTIMETER", description=desc if i == 0 else None,
                subfiletype=0 if i == 0 else 1, metadata=None,
            )
    os.replace(tmp, path)
    return path


# -------------------------------------------------------------------------------------------------
# spots and counts
# -------------------------------------------------------------------------------------------------
def visium_grid(height: int, width: int, mpp: float, pitch_um: float = 100.0):
    """Visium-style hexagonal spot centres ``(x, y)`` in level-0 px with array rows/cols."""
    pitch = pitch_um / mpp
    dy = pitch * np.sqrt(3) / 2
    rows = []
    r = 0
    y = pitch / 2
    while y < height - pitch / 4:
        off = 0.0 if r % 2 == 0 else pitch / 2
        x = pitch / 2 + off
        c = 0 if r % 2 == 0 else 1
        while x < width - pitch / 4:
            rows.append((x, y, r, c))
            x += pitch
            c += 2
        y += dy
        r += 1
    a = np.array(rows)
    return a[:, :2], a[:, 2].astype(int), a[:, 3].astype(int)


def spot_fractions(tissue: SyntheticTissue, xy: np.ndarray, diameter_px: float, n: int = 9) -> np.ndarray:
    """Fraction of each class (columns = :data:`CLASSES`) inside each spot disk."""
    g = (np.arange(n) + 0.5) / n * 2 - 1
    oy, ox = np.meshgrid(g, g, indexing="ij")
    inside = oy ** 2 + ox ** 2 <= 1
    oy, ox = oy[inside] * diameter_px / 2, ox[inside] * diameter_px / 2
    ys = xy[:, 1][:, None] + oy[None, :]
    xs = xy[:, 0][:, None] + ox[None, :]
    cls = tissue.classes_at(ys, xs)
    return np.stack([(cls == c).mean(axis=1) for c in range(len(CLASSES))], axis=1)


def planted_expression(tissue: SyntheticTissue, cell_px: float, genes: list[str], seed: int = 0,
                       n: int = 5) -> np.ndarray:
    """The planted log1p-normalised expression (mean counts, no noise) of ``genes`` on a grid of
    ``cell_px`` square cells over the whole section: ``(rows, cols, len(genes))``, cell ``(i, j)``
    covering level-0 ``[j, j+1) x [i, i+1)`` times ``cell_px``; NaN where the cell is mostly background."""
    rows, cols = int(tissue.height // cell_px), int(tissue.width // cell_px)
    g = (np.arange(n) + 0.5) / n * cell_px
    ys = (np.arange(rows) * cell_px)[:, None, None, None] + g[None, None, :, None]
    xs = (np.arange(cols) * cell_px)[None, :, None, None] + g[None, None, None, :]
    cls = tissue.classes_at(np.broadcast_to(ys, (rows, cols, n, n)), np.broadcast_to(xs, (rows, cols, n, n)))
    frac = np.stack([(cls == c).mean(axis=(2, 3)) for c in range(len(CLASSES))], -1).reshape(-1, len(CLASSES))
    prof = planted_profiles(seed)
    mu = prof.loc["base"].to_numpy()[None, :] * (1 - frac[:, :1]) + frac[:, 1:] @ prof.iloc[1:].to_numpy()
    norm = np.log1p(mu / np.maximum(mu.sum(1, keepdims=True), 1e-9) * 1e4)
    out = norm[:, [list(prof.columns).index(gn) for gn in genes]].reshape(rows, cols, len(genes))
    out[frac[:, 0].reshape(rows, cols) > 0.5] = np.nan
    return out


def demo_tissue(demo: "DemoData") -> SyntheticTissue:
    """The procedural tissue a :func:`make_demo` folder was written from (its ground truth)."""
    p = json.loads((demo.truth / "done.json").read_text())
    return SyntheticTissue(p["size"], p["size"], p["mpp"], p["seed"],
                           blobs=tuple(p["blobs"]) if p.get("blobs") else None)


def gene_names() -> list[str]:
    genes = [g for c in ("tumour", "stroma", "immune") for g in PLANTED_GENES[c]]
    return genes + HOUSEKEEPING + [f"NOISE{i:03d}" for i in range(1, N_NOISE_GENES + 1)]


def planted_profiles(seed: int = 0) -> pd.DataFrame:
    """Mean counts per unit library size: rows = classes (+ 'base'), columns = genes."""
    rng = np.random.default_rng(seed + 101)
    genes = gene_names()
    prof = pd.DataFrame(0.0, index=["base"] + list(CLASSES[1:]), columns=genes)
    for c, gs in PLANTED_GENES.items():
        for j, g in enumerate(gs):
            prof.loc[c, g] = 80.0 / (1 + 0.2 * j)  # first marker strongest
            prof.loc["base", g] = 0.6
    for g in HOUSEKEEPING:
        prof.loc["base", g] = rng.uniform(20, 60)
    for i in range(1, N_NOISE_GENES + 1):
        prof.loc["base", f"NOISE{i:03d}"] = rng.uniform(0.2, 2.5)  # below the markers, as real low genes
    return prof


def simulate_counts(fractions: np.ndarray, seed: int = 0, dispersion: float = 0.05,
                    library_sd: float = 0.2, scale: float = 1.0) -> tuple[np.ndarray, pd.DataFrame]:
    """Negative-binomial counts: mean = scale * L_s * (base + sum_c frac_{s,c} * profile_c) (``scale``:
    the capture area relative to a 55 µm spot)."""
    rng = np.random.default_rng(seed + 202)
    prof = planted_profiles(seed)
    tissue_frac = fractions[:, 1:]
    mu = prof.loc["base"].to_numpy()[None, :] * (1 - fractions[:, :1]) + tissue_frac @ prof.iloc[1:].to_numpy()
    lib = np.exp(rng.normal(0, library_sd, size=(len(fractions), 1)))
    mu = mu * lib * scale
    shape = 1.0 / dispersion
    lam = rng.gamma(shape, mu / shape)
    return rng.poisson(lam).astype(np.int32), prof


# -------------------------------------------------------------------------------------------------
# Space Ranger output
# -------------------------------------------------------------------------------------------------
def _barcodes(n: int, seed: int) -> list[str]:
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


@dataclass
class DemoData:
    folder: Path
    slide: Path
    spots: Path
    truth: Path

    @property
    def genes(self) -> list[str]:
        return gene_names()


def make_demo(folder: str | os.PathLike, size: int = 4096, mpp: float = 0.5, seed: int = 0,
              layout: str = "sr2", library_ids: bool = True, aperio: bool = False,
              overwrite: bool = False, spot_um: float = 55.0, pitch_um: float = 100.0,
              blobs: tuple[float, float, float, float] | None = None) -> DemoData:
    """Write a synthetic section: ``slide.tif`` + a Space Ranger ``outs/`` folder + ground truth.

    ``layout`` ``"sr1"`` writes ``tissue_positions_list.csv`` without header, ``"sr2"``
    ``tissue_positions.csv`` with header, ``"parquet"`` ``tissue_positions.parquet``; ``"mtx"``
    writes the ``filtered_feature_bc_matrix/`` folder instead of the HDF5. Spots are ``spot_um``
    disks on a hexagonal grid of ``pitch_um``; ``blobs`` adds small immune clusters (a pattern finer
    than the spots, see :class:`SyntheticTissue`). Existing complete output is reused unless ``overwrite``.
    """
    folder = Path(folder)
    done = folder / "truth" / "done.json"
    params = dict(size=size, mpp=mpp, seed=seed, layout=layout, library_ids=library_ids, aperio=aperio,
                  spot_um=spot_um, pitch_um=pitch_um, blobs=list(blobs) if blobs else None, version=DATA_VERSION)
    data = DemoData(folder, folder / "slide.tif", folder / "outs", folder / "truth")
    if done.exists() and not overwrite:
        try:
            if json.loads(done.read_text()) == params:
                return data
        except json.JSONDecodeError:
            pass
    folder.mkdir(parents=True, exist_ok=True)
    tissue = SyntheticTissue(size, size, mpp, seed, blobs=tuple(blobs) if blobs else None)
    write_pyramidal_tiff(data.slide, tissue.render, size, size, mpp, aperio=aperio)

    xy, arow, acol = visium_grid(size, size, mpp, pitch_um)
    diam = spot_um / mpp
    frac = spot_fractions(tissue, xy, diam, n=9 if spot_um <= 60 else 15)
    in_tissue = (frac[:, 0] < 0.5).astype(int)
    counts, prof = simulate_counts(frac, seed, scale=(spot_um / 55.0) ** 2)
    counts[in_tissue == 0] = 0
    bcs = _barcodes(len(xy), seed)
    genes = gene_names()

    outs = data.spots
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    keep = in_tissue == 1
    kept_counts = counts[keep]
    kept_bcs = [b for b, k in zip(bcs, keep) if k]
    if layout == "mtx":
        _write_mtx(outs / "filtered_feature_bc_matrix", kept_counts, kept_bcs, genes)
    else:
        write_10x_h5(outs / "filtered_feature_bc_matrix.h5", kept_counts, kept_bcs, genes, library_ids)
    pos = pd.DataFrame({
        "barcode": bcs, "in_tissue": in_tissue, "array_row": arow, "array_col": acol,
        "pxl_row_in_fullres": np.round(xy[:, 1]).astype(int),
        "pxl_col_in_fullres": np.round(xy[:, 0]).astype(int),
    })
    for old in ("tissue_positions_list.csv", "tissue_positions.csv", "tissue_positions.parquet"):
        (spatial / old).unlink(missing_ok=True)
    if layout in ("sr1", "mtx"):
        pos.to_csv(spatial / "tissue_positions_list.csv", header=False, index=False)
    elif layout == "parquet":
        pos.to_parquet(spatial / "tissue_positions.parquet", index=False)
    else:
        pos.to_csv(spatial / "tissue_positions.csv", index=False)
    sfj = {"spot_diameter_fullres": diam, "fiducial_diameter_fullres": diam * 1.6153846,
           **_spatial_images(spatial, tissue, size)}
    (spatial / "scalefactors_json.json").write_text(json.dumps(sfj, indent=2))

    truth = data.truth
    truth.mkdir(exist_ok=True)
    gt = pd.DataFrame(frac, columns=[f"frac_{c}" for c in CLASSES], index=bcs)
    gt["in_tissue"] = in_tissue
    gt["x"], gt["y"] = xy[:, 0], xy[:, 1]
    gt["class"] = np.argmax(frac[:, 1:], axis=1) + 1
    gt.loc[in_tissue == 0, "class"] = 0
    gt.to_csv(truth / "spots.csv", index_label="barcode")
    prof.to_csv(truth / "profiles.csv")
    cm_ds = 16
    np.save(truth / f"class_map_ds{cm_ds}.npy", tissue.class_map(cm_ds))
    done.write_text(json.dumps(params))
    return data


def _spatial_images(spatial: Path, tissue: SyntheticTissue, size: int) -> dict:
    """Space Ranger's hires (≤ 2000 px) and lowres (600 px) tissue images; returns their scale factors."""
    from PIL import Image

    hires_scalef = 2000.0 / size if size > 2000 else 1.0
    lowres_scalef = 600.0 / size
    for key, sf in (("hires", hires_scalef), ("lowres", lowres_scalef)):
        n = int(round(size * sf))
        Image.fromarray(tissue.render(0, 0, n, n, 1.0 / sf)).save(spatial / f"tissue_{key}_image.png")
    return {"tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": lowres_scalef}


def make_visium_hd(folder: str | os.PathLike, size: int = 1024, mpp: float = 1.0, seed: int = 0,
                   bins: tuple[int, ...] = (8, 16)) -> DemoData:
    """Write a synthetic Visium HD section following Space Ranger's layout: ``slide.tif`` and
    ``outs/binned_outputs/square_XXXum/`` per bin size (``filtered_feature_bc_matrix.h5``,
    ``spatial/tissue_positions.parquet``, ``spatial/scalefactors_json.json`` with
    ``microns_per_pixel`` and ``bin_size_um``, hires/lowres images); bins' counts follow the planted
    classes under each bin (means scaled by bin area / 55 µm spot area). ``truth/class_map_ds1.npy``."""
    folder = Path(folder)
    data = DemoData(folder, folder / "slide.tif", folder / "outs", folder / "truth")
    tissue = SyntheticTissue(size, size, mpp, seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(data.slide, tissue.render, size, size, mpp)
    genes = gene_names()
    spot_area = np.pi * 27.5 ** 2
    for b in bins:
        side = b / mpp
        n = int(size // side)
        rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        xy = np.stack([(cols + 0.5) * side, (rows + 0.5) * side], 1)
        frac = spot_fractions(tissue, xy, side, n=5)
        in_tissue = (frac[:, 0] < 0.5).astype(int)
        counts, _ = simulate_counts(frac, seed + b, scale=b * b / spot_area)
        bcs = [f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)]
        d = data.spots / "binned_outputs" / f"square_{b:03d}um"
        spatial = d / "spatial"
        spatial.mkdir(parents=True, exist_ok=True)
        keep = in_tissue == 1
        write_10x_h5(d / "filtered_feature_bc_matrix.h5", counts[keep], [x for x, k in zip(bcs, keep) if k], genes)
        pd.DataFrame({"barcode": bcs, "in_tissue": in_tissue, "array_row": rows, "array_col": cols,
                      "pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0]}
                     ).to_parquet(spatial / "tissue_positions.parquet", index=False)
        sfj = {"spot_diameter_fullres": side, "bin_size_um": float(b), "microns_per_pixel": mpp,
               "fiducial_diameter_fullres": 0.0, "regist_target_img_scalef": 1.0,
               **_spatial_images(spatial, tissue, size)}
        (spatial / "scalefactors_json.json").write_text(json.dumps(sfj, indent=2))
    data.truth.mkdir(exist_ok=True)
    np.save(data.truth / "class_map_ds1.npy", tissue.class_map(1))
    return data


def _write_mtx(folder: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
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


def default_demo_dir() -> Path:
    """Where the sample data is cached (``$HISTOEXPR_CACHE`` or ``~/.cache/napari-histoexpr``)."""
    base = os.environ.get("HISTOEXPR_CACHE") or os.path.join(Path.home(), ".cache", "napari-histoexpr")
    return Path(base) / "demo"


def make_cohort(folder: str | os.PathLike, n_slides: int = 20, size: int = 768, mpp: float = 1.0,
                seed: int = 0, hazard_beta: float = 8.0, tissues: dict[str, int] | None = None,
                n_regions: int = 24) -> Path:
    """A generated cohort: slides with planted morphology, per-slide bulk expression that follows the
    tissue-class fractions (PLANTED_GENES), and survival whose hazard grows with the tumour fraction.

    Each slide draws its class proportions from a Dirichlet, so tumour content varies widely across
    slides. ``tissues`` (name -> number of slides) makes a multi-tissue cohort: every tissue shares the
    morphology but scales and shifts each gene's expression its own way (the MTM setting).
    Writes ``slides/*.tif``, ``bulk/*.tsv`` (gene, count), ``truth.csv`` (class fractions, risk),
    ``truth/*_classes_ds8.npy`` (the class map at 1/8 resolution) and
    ``cohort.csv`` (id, slide, patient, bulk, time, event, tissue); every third patient has two slides.
    Returns the cohort CSV (reused when complete).
    """
    folder = Path(folder)
    csv = folder / "cohort.csv"
    done = folder / "done.json"
    tissues = dict(tissues) if tissues else {"": n_slides}
    params = dict(tissues=tissues, size=size, mpp=mpp, seed=seed, beta=hazard_beta, regions=n_regions,
                  version=DATA_VERSION)
    if csv.exists() and done.exists() and json.loads(done.read_text()) == params:
        return csv
    (folder / "slides").mkdir(parents=True, exist_ok=True)
    (folder / "bulk").mkdir(exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed + 303)
    prof = planted_profiles(seed)
    base, cls = prof.loc["base"].to_numpy(), prof.iloc[1:].to_numpy()
    rows, truth = [], []
    patient, i = 0, 0
    for ti, (tname, n) in enumerate(tissues.items()):
        trng = np.random.default_rng(seed + 404 + ti)
        # tissue-specific expression: every gene scaled (and its baseline shifted) per tissue
        scale = np.exp(trng.normal(0, 0.4, len(base))) if tname else np.ones(len(base))
        shift = trng.uniform(0, 2, len(base)) if tname else np.zeros(len(base))
        for j in range(n):
            if j % 3 != 2 or j == 0:
                patient += 1
            sid = f"S{i:02d}"
            w = tuple(rng.dirichlet([1.2, 1.2, 1.2]))
            tissue = SyntheticTissue(size, size, mpp, seed * 1000 + i, n_regions=n_regions, class_weights=w)
            slide = folder / "slides" / f"{sid}.tif"
            write_pyramidal_tiff(slide, tissue.render, size, size, mpp)
            cm = tissue.class_map(8)
            np.save(folder / "truth" / f"{sid}_classes_ds8.npy", cm)  # the planted class map, 8 px cells
            frac = np.array([(cm == c).mean() for c in range(len(CLASSES))])
            tfrac = frac[1:] / max(frac[1:].sum(), 1e-9)
            mu = (base + shift + tfrac @ cls) * scale
            counts = rng.poisson(rng.gamma(400.0, mu * 200 / 400.0))  # a bulk library: many cells, low noise
            pd.DataFrame({"gene": prof.columns, "count": counts}).to_csv(folder / "bulk" / f"{sid}.tsv", sep="\t",
                                                                        index=False, header=False)
            risk = hazard_beta * (tfrac[0] - 1 / 3)
            t_event = rng.exponential(1000.0 * np.exp(-risk))
            t_cens = rng.uniform(300, 3000)
            rows.append({"id": sid, "slide": f"slides/{sid}.tif", "patient": f"P{patient:02d}",
                         "bulk": f"bulk/{sid}.tsv", "time": round(float(min(t_event, t_cens)), 2),
                         "event": int(t_event <= t_cens), "tissue": tname})
            truth.append({"id": sid, **{f"frac_{c}": f for c, f in zip(CLASSES, frac)}, "risk": risk})
            i += 1
    pd.DataFrame(rows).to_csv(csv, index=False)
    pd.DataFrame(truth).to_csv(folder / "truth.csv", index=False)
    done.write_text(json.dumps(params))
    return csv
