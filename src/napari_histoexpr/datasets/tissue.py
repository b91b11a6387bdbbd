"""The procedural tissue behind the generated data, and the counts planted on it.

A :class:`SyntheticTissue` is a procedural H&E-like section defined *analytically* in level-0
pixel coordinates: a tissue outline, three tissue classes in warped Voronoi regions, and per-class
textures (nuclei on jittered grids, stromal fibres). Any window can be rendered at any downsample,
tile by tile, so slides of any size are written with bounded memory and every pyramid level shows
the same tissue.

Spots on a Visium hexagonal grid get counts whose means depend on the class fractions under each
spot through a planted profile matrix (:data:`PLANTED_GENES`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


