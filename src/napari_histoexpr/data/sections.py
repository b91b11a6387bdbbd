"""A section ready for a model: the patches at its spots (background spots dropped) with their
log1p-normalised expression. Training, evaluation, prediction at spots and the panels all build
their spot data here."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from .expression import log1p_normalised, shared_genes


@dataclass
class SectionData:
    name: str
    patches: np.ndarray  # (N, px, px, 3) uint8
    expr: np.ndarray  # (N, G) log1p-normalised expression of ``genes``
    spot_ids: list[str]
    xy: np.ndarray  # (N, 2) level-0 px
    genes: list[str]

    def select(self, genes: list[str]) -> np.ndarray:
        """``(N, len(genes))`` expression of ``genes`` (in that order)."""
        idx = {g: i for i, g in enumerate(self.genes)}
        return self.expr[:, [idx[g] for g in genes]]

    def subset(self, index: np.ndarray, name: str | None = None) -> "SectionData":
        """The spots at ``index`` as a section of their own."""
        return SectionData(name or self.name, self.patches[index], self.expr[index],
                           [self.spot_ids[i] for i in index], self.xy[index], self.genes)

    def __len__(self) -> int:
        return len(self.patches)


def spots_on_tissue(pyr, xy: np.ndarray, window_um: float, min_tissue: float) -> np.ndarray:
    """Spots inside the slide whose window centre half is at least ``min_tissue`` tissue."""
    from .patches import tissue_fraction_at, tissue_mask

    mask, mds = tissue_mask(pyr)
    frac = tissue_fraction_at(mask, mds, xy, window_um / 2 / pyr.world_mpp * 0.5)
    h, w = pyr.level0_shape
    return (frac >= min_tissue) & (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)


def prepare_section(name: str, pyr, adata, window_um: float, px: int, genes: list[str] | None = None,
                    min_tissue: float = 0.3, transform=None, progress=None) -> SectionData:
    """Patches at the section's spots (background spots dropped) with their expression."""
    from .patches import extract_patches

    xy = np.asarray(adata.obsm["spatial"], float)
    keep = spots_on_tissue(pyr, xy, window_um, min_tissue)
    ad = adata[keep]
    genes = list(map(str, ad.var_names)) if genes is None else genes
    patches = extract_patches(pyr, xy[keep], window_um, px, progress=progress, transform=transform)
    return SectionData(name, patches, log1p_normalised(ad, genes), list(map(str, ad.obs_names)),
                       xy[keep], list(genes))


def prepare_sections_steps(sections, window_um: float, px: int, min_tissue: float = 0.3,
                           stain_norm: bool = False) -> Generator[dict, None, tuple]:
    """Open every manifest section and cut its spot patches; returns ``(list[SectionData], stain_target)``.

    Genes are restricted to those all sections share (in the first section's order). With
    ``stain_norm`` every patch is Macenko-normalised to the first section's stains.
    """
    from ..io.sections import load_section

    opened = []
    for i, sec in enumerate(sections):
        yield {"stage": "open", "msg": f"opening {sec.section} ({i + 1}/{len(sections)})"}
        opened.append((sec, *load_section(sec)))
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
                                   min_tissue=min_tissue, transform=transform))
        pyr.close()
    return out, target
