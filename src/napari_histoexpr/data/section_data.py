"""A section ready for a model: the patches at its spots (background spots dropped) with their
log1p-normalised expression. Training, evaluation, prediction at spots and the panels all build
their spot data here."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..io.sections import load_section
from .gene_values import log1p_normalised, shared_genes
from .patches import extract_patches, tissue_fraction_at, tissue_mask

#: spot diameter assumed where a section does not say (a Visium spot)
DEFAULT_SPOT_UM = 55.0


@dataclass
class SectionData:
    name: str
    patches: np.ndarray  # (N, px, px, 3) uint8
    expr: np.ndarray  # (N, G) log1p-normalised expression of ``genes``
    spot_ids: list[str]
    xy: np.ndarray  # (N, 2) level-0 px
    genes: list[str]
    spot_um: float | None = None  # diameter of one measured spot
    #: per sample, the disks it was measured over: ``(M, 3)`` offsets ``dx, dy`` from the patch centre
    #: and radius, µm (``None``: one spot of ``spot_um`` at the centre)
    footprints: list[np.ndarray] | None = None

    def footprint(self, i: int) -> np.ndarray:
        if self.footprints is not None:
            return self.footprints[i]
        return np.array([[0.0, 0.0, (self.spot_um or DEFAULT_SPOT_UM) / 2]])

    def select(self, genes: list[str]) -> np.ndarray:
        """``(N, len(genes))`` expression of ``genes`` (in that order)."""
        idx = {g: i for i, g in enumerate(self.genes)}
        return self.expr[:, [idx[g] for g in genes]]

    def subset(self, index: np.ndarray, name: str | None = None) -> "SectionData":
        """The spots at ``index`` as a section of their own."""
        return SectionData(name or self.name, self.patches[index], self.expr[index],
                           [self.spot_ids[i] for i in index], self.xy[index], self.genes, self.spot_um,
                           None if self.footprints is None else [self.footprints[i] for i in index])

    def __len__(self) -> int:
        return len(self.patches)


def spots_on_tissue(pyr, xy: np.ndarray, window_um: float, min_tissue: float) -> np.ndarray:
    """Spots inside the slide whose window centre half is at least ``min_tissue`` tissue."""

    mask, mds = tissue_mask(pyr)
    frac = tissue_fraction_at(mask, mds, xy, window_um / 2 / pyr.world_mpp * 0.5)
    h, w = pyr.level0_shape
    return (frac >= min_tissue) & (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)


def spot_diameter_um(pyr, adata) -> float | None:
    info = adata.uns.get("histoexpr", {})
    return float(info["spot_diameter_px"]) * pyr.world_mpp if info.get("spot_diameter_px") else None


def grid_spacing(xy: np.ndarray) -> tuple[float, float]:
    """``(pitch, row spacing)`` of a spot grid in its units: the median nearest-neighbour distance,
    and the median gap between distinct rows (``pitch * sqrt(3) / 2`` on a hexagonal grid)."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(d[:, 1]))
    gaps = np.diff(np.sort(xy[:, 1]))
    gaps = gaps[gaps > pitch / 3]  # between rows (spots of a row share about the same y)
    return pitch, float(np.median(gaps)) if len(gaps) else pitch


def pool_groups(xy: np.ndarray, k: int, min_fill: float = 0.75) -> list[np.ndarray]:
    """Groups of about ``k x k`` neighbouring spots (``k`` spots along a row, ``k`` rows): grid
    squares of ``k`` pitches by ``k`` row spacings; groups with fewer than ``min_fill * k * k``
    spots (tissue edges) are dropped. Indices into ``xy``, each group sorted."""
    if k <= 1:
        return [np.array([i]) for i in range(len(xy))]
    pitch, rows = grid_spacing(xy)
    origin = xy.min(0) - np.array([pitch, rows]) / 2
    keys = np.floor((xy - origin) / (np.array([pitch, rows]) * k)).astype(np.int64)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    groups = [np.flatnonzero(inv.ravel() == g) for g in range(inv.max() + 1)]
    return [g for g in groups if len(g) >= max(2, int(np.ceil(min_fill * k * k)))]


def pooled_footprint_um(pyr, adata, pool: int) -> float:
    """The largest side of a ``pool x pool`` pseudo-spot's footprint, µm (one spot: its diameter)."""
    spot = spot_diameter_um(pyr, adata) or DEFAULT_SPOT_UM
    if pool <= 1:
        return spot
    pitch, rows = grid_spacing(np.asarray(adata.obsm["spatial"], float))
    return max(pitch, rows) * (pool - 1) * pyr.world_mpp + spot


def prepare_section(name: str, pyr, adata, window_um: float, px: int, genes: list[str] | None = None,
                    min_tissue: float = 0.3, transform=None, progress=None, pool: int = 1) -> SectionData:
    """Patches at the section's spots (background spots dropped) with their expression. With
    ``pool`` K > 1, about K x K neighbouring spots become one pseudo-spot (:func:`pool_groups`): its
    expression is the mean of theirs in normalised-count space (``log1p(mean(expm1(x)))``, what one
    larger spot would measure), its patch is centred on their mean centre and its footprint is the
    union of their disks."""

    xy = np.asarray(adata.obsm["spatial"], float)
    keep = spots_on_tissue(pyr, xy, window_um, min_tissue)
    ad = adata[keep]
    genes = list(map(str, ad.var_names)) if genes is None else genes
    expr, ids, xy = log1p_normalised(ad, genes), list(map(str, ad.obs_names)), xy[keep]
    spot_um = spot_diameter_um(pyr, adata)
    footprints = None
    if pool > 1:
        groups = pool_groups(xy, pool)
        centres = np.stack([xy[g].mean(0) for g in groups]) if groups else np.zeros((0, 2))
        expr = np.stack([np.log1p(np.expm1(expr[g]).mean(0)) for g in groups]) if groups else expr[:0]
        footprints = [np.column_stack([(xy[g] - c) * pyr.world_mpp, np.full(len(g), (spot_um or DEFAULT_SPOT_UM) / 2)])
                      for g, c in zip(groups, centres)]
        ids, xy = ["+".join(ids[i] for i in g) for g in groups], centres
    patches = extract_patches(pyr, xy, window_um, px, progress=progress, transform=transform)
    return SectionData(name, patches, expr.astype(np.float32), ids, xy, list(genes), spot_um, footprints)


def prepare_sections_steps(sections, window_um: float, px: int, min_tissue: float = 0.3,
                           stain_norm: bool = False, pool: int = 1, geometry=None) -> Generator[dict, None, tuple]:
    """Open every manifest section and cut its spot patches; returns ``(list[SectionData],
    stain_target, window_um)``.

    Genes are restricted to those all sections share (in the first section's order). With
    ``stain_norm`` every patch is Macenko-normalised to the first section's stains; with ``pool`` K,
    pseudo-spots of K x K spots (:func:`prepare_section`). ``geometry(footprint_um)`` may replace
    ``(window_um, px)`` once the sections are open (the largest footprint is then known).
    """

    opened = []
    for i, sec in enumerate(sections):
        yield {"stage": "open", "msg": f"opening {sec.section} ({i + 1}/{len(sections)})"}
        opened.append((sec, *load_section(sec)))
    if geometry is not None:
        window_um, px = geometry(max(pooled_footprint_um(pyr, ad, pool) for _, pyr, ad in opened))
    shared = list(map(str, opened[0][2].var_names))
    for _, _, ad in opened[1:]:
        shared = shared_genes(shared, ad)
    target, transform = None, None
    out = []
    for sec, pyr, ad in opened:
        if stain_norm and transform is None:
            from .patches import extract_patches, macenko_fit, macenko_normaliser

            sample = extract_patches(pyr, np.asarray(ad.obsm["spatial"])[:64], window_um, px)
            target = macenko_fit(sample.reshape(-1, px, 3))
            transform = macenko_normaliser(target)
        yield {"stage": "patches", "msg": f"cutting {ad.n_obs} patches of {sec.section}"}
        out.append(prepare_section(sec.section, pyr, ad, window_um, px, genes=shared,
                                   min_tissue=min_tissue, transform=transform, pool=pool))
        pyr.close()
    return out, target, window_um
