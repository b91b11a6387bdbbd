"""Gene-set scores, as scanpy's :func:`scanpy.tl.score_genes` (after Seurat, Satija et al. 2015) defines
them: the mean of the set's genes minus the mean of a control set drawn, bin by bin, from genes of
similar average expression (scanpy's 25 bins for pools of 125 genes or more; a smaller pool, e.g. a
model of a few dozen genes, gets bins of about 5 genes so that there are controls at all).

Controls are chosen once per set from a **reference mean** per gene (a model's mean training target,
or the measured spots' means) and then applied to every array scored with that set: predicted maps,
predicted spots and measured spots get the same controls, so their scores compare. With the defaults
(25 bins, 50 controls per bin) and up to ~1,200 genes in the pool, every gene of a bin is a control and
the choice is deterministic; larger pools sample ``ctrl_size`` genes per bin with ``seed``.

Sets come from the built-ins below (sources cited), a typed ``NAME=G1,G2,...``, a GMT file (``name
<TAB> description <TAB> gene ...`` per line, as MSigDB ships them) or a text file of genes (the file
name is the set's name). Genes match case-insensitively; genes the data lacks are reported and left
out (a set needs at least one).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GeneSetError


@dataclass(frozen=True)
class GeneSet:
    name: str
    genes: tuple[str, ...]
    source: str = "user"


#: built-in breast-cancer sets, with where each list comes from
BUILTIN: dict[str, GeneSet] = {s.name: s for s in (
    GeneSet("ERBB2 amplicon", ("ERBB2", "GRB7", "STARD3", "PGAP3", "MIEN1", "PSMD3", "PNMT", "TCAP"),
            "17q12 genes co-amplified with ERBB2: the PAM50 HER2-enriched pair ERBB2, GRB7 (Parker et al. 2009, "
            "J Clin Oncol 27:1160) and their amplicon neighbours (Sircoulomb et al. 2010, BMC Cancer 10:539)"),
    GeneSet("proliferation", ("BIRC5", "CCNB1", "CDC20", "NUF2", "CEP55", "NDC80", "MKI67", "PTTG1", "RRM2",
                              "TYMS", "UBE2C"),
            "the PAM50 11-gene proliferation score (Nielsen et al. 2010, Clin Cancer Res 16:5222); CDCA1 and "
            "KNTC2 under their current symbols NUF2 and NDC80"),
    GeneSet("luminal", ("ESR1", "PGR", "FOXA1", "BCL2", "MAPT", "MLPH", "NAT1", "SLC39A6"),
            "PAM50 luminal genes (Parker et al. 2009, J Clin Oncol 27:1160)"),
    GeneSet("immune", ("PTPRC", "CD3E", "CD3D", "CD2", "CD8A", "MS4A1", "CD79A", "IGKC", "IGHG1", "JCHAIN", "CD68",
                       "CD163", "HLA-DRA", "CD74", "LCP1", "CORO1A"),
            "canonical leukocyte markers (a curated list, not a published signature): PTPRC (CD45, all "
            "leukocytes), T cells (CD3E, CD3D, CD2, CD8A), B and plasma cells (MS4A1, CD79A, IGKC, IGHG1, "
            "JCHAIN), macrophages (CD68, CD163), antigen presentation (HLA-DRA, CD74), LCP1, CORO1A"),
    GeneSet("stroma", ("COL1A1", "COL1A2", "COL3A1", "COL5A1", "FN1", "DCN", "LUM", "SPARC", "POSTN", "FAP",
                       "PDGFRB", "THY1"),
            "canonical fibroblast and extracellular-matrix markers (a curated list, not a published signature)"),
)}


def parse_gene_sets(path) -> list[GeneSet]:
    """The sets of a GMT file (one per line) or of a text file of genes (one set, named after the file;
    genes separated by newlines, commas, tabs or spaces; ``#`` comments)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GeneSetError(f"cannot read gene sets {p.name}: {e}") from e
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if p.suffix.lower() == ".gmt" or any(ln.count("\t") >= 2 for ln in lines):
        sets = []
        for k, ln in enumerate(lines, 1):
            cols = [c.strip() for c in ln.split("\t")]
            if len(cols) < 3 or not cols[0]:
                raise GeneSetError(f"{p.name} line {k}: a GMT line is name<TAB>description<TAB>genes...")
            sets.append(GeneSet(cols[0], tuple(g for g in cols[2:] if g), f"{p.name}: {cols[1] or cols[0]}"))
        return sets
    genes = tuple(g for ln in lines for g in ln.replace(",", " ").replace("\t", " ").split())
    if not genes:
        raise GeneSetError(f"{p.name} names no genes")
    return [GeneSet(p.stem, genes, p.name)]


def parse_set_arg(arg: str) -> list[GeneSet]:
    """``NAME=G1,G2,...`` (a typed set), a built-in set's name, or a GMT / text file."""
    arg = arg.strip()
    if "=" in arg:
        name, genes = arg.split("=", 1)
        genes = tuple(g.strip() for g in genes.replace(";", ",").split(",") if g.strip())
        if not name.strip() or not genes:
            raise GeneSetError(f"a typed gene set is NAME=G1,G2,... (got {arg!r})")
        return [GeneSet(name.strip(), genes)]
    low = {k.lower(): v for k, v in BUILTIN.items()}
    if arg.lower() in low:
        return [low[arg.lower()]]
    if os.path.isfile(arg):
        return parse_gene_sets(arg)
    raise GeneSetError(f"unknown gene set {arg!r}: give NAME=G1,G2,..., a GMT or text file, or one of "
                       f"{', '.join(BUILTIN)}")


@dataclass
class SetScore:
    """A gene set matched to the data's genes and its control genes (names as the data spells them)."""

    name: str
    genes: list[str]
    controls: list[str]
    missing: list[str] = field(default_factory=list)
    source: str = "user"

    def of(self, values: np.ndarray, names: list[str], axis: int = -1) -> np.ndarray:
        """The score of each row of ``values`` (genes along ``axis``, named ``names``): mean of the set's
        genes minus mean of the controls (NaNs ignored, as scanpy's nan-means)."""
        pos = {n: i for i, n in enumerate(names)}
        try:
            gi, ci = [pos[g] for g in self.genes], [pos[g] for g in self.controls]
        except KeyError as e:
            raise GeneSetError(f"{self.name}: the data has no {e.args[0]}") from None
        v = np.asarray(values)
        with np.errstate(all="ignore"), warnings.catch_warnings():  # an all-NaN row (off tissue) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            a = np.nanmean(np.take(v, gi, axis=axis).astype(np.float64), axis=axis)
            b = np.nanmean(np.take(v, ci, axis=axis).astype(np.float64), axis=axis)
        return a - b

    def within(self, names) -> "SetScore | None":
        """This set restricted to the genes of ``names`` (e.g. those the measured spots have too): the
        same controls, less any the data lacks; ``None`` when no set gene or no control is left."""
        have = set(names)
        genes, controls = [g for g in self.genes if g in have], [g for g in self.controls if g in have]
        return SetScore(self.name, genes, controls, self.missing, self.source) if genes and controls else None

    def describe(self) -> dict:
        return {"genes": self.genes, "missing": self.missing, "controls": self.controls, "source": self.source}


def match_genes(wanted, have: list[str]) -> tuple[list[str], list[str]]:
    """``(found as ``have`` spells them, missing)`` — case-insensitive, order kept, duplicates dropped."""
    lower = {g.lower(): g for g in have}
    found, missing = [], []
    for g in dict.fromkeys(wanted):
        (found if g.lower() in lower else missing).append(lower.get(g.lower(), g))
    return list(dict.fromkeys(found)), missing


def default_bins(n_genes: int) -> int:
    """scanpy's 25 bins, fewer for a small pool (a model of a few dozen genes) so that a bin holds about
    5 genes: with 25 bins a 15-gene pool would put each gene in a bin of its own and leave no controls."""
    return 25 if n_genes >= 125 else max(2, n_genes // 5)


def control_genes(means, genes: list[str], ctrl_size: int = 50, n_bins: int | None = None,
                  seed: int = 0) -> list[str]:
    """scanpy's control genes: rank the pool's mean expression (``means``: a pandas Series gene -> mean),
    cut it into bins of ``round(len / (n_bins - 1))`` genes, and from every bin holding a set gene take
    its genes (``ctrl_size`` of them at random when more), less the set's own. ``n_bins`` default:
    :func:`default_bins`."""
    import pandas as pd

    m = pd.Series(means, dtype=np.float64)
    m = m[np.isfinite(m.to_numpy())]
    n_bins = n_bins or default_bins(len(m))
    n_items = int(np.round(len(m) / (n_bins - 1)))
    if n_items < 1:
        n_items = 1
    cut = m.rank(method="min") // n_items
    rng = np.random.default_rng(seed)
    out: set[str] = set()
    for c in np.unique(cut.loc[[g for g in genes if g in cut.index]]):
        r = list(cut.index[cut == c])
        if ctrl_size < len(r):
            r = list(rng.choice(np.array(r, dtype=object), ctrl_size, replace=False))
        out.update(g for g in r if g not in set(genes))
    order = {g: i for i, g in enumerate(m.index)}
    return sorted(out, key=order.get)


def prepare(gene_set: GeneSet, means, ctrl_size: int = 50, n_bins: int | None = None, seed: int = 0) -> SetScore:
    """Match a set to the pool (``means``: gene -> reference mean) and choose its controls; a named
    :class:`GeneSetError` when none of its genes, or no control, is in the pool."""
    import pandas as pd

    means = pd.Series(means, dtype=np.float64)
    genes, missing = match_genes(gene_set.genes, [str(g) for g in means.index])
    if not genes:
        raise GeneSetError(f"gene set {gene_set.name!r}: none of its genes ({', '.join(gene_set.genes[:8])}"
                           f"{'…' if len(gene_set.genes) > 8 else ''}) is among the {len(means)} genes here")
    ctrl = control_genes(means, genes, ctrl_size, n_bins, seed)
    if not ctrl:
        raise GeneSetError(f"gene set {gene_set.name!r}: no control genes (the pool of {len(means)} genes holds "
                           "only the set's own at its expression levels)")
    return SetScore(gene_set.name, genes, ctrl, missing, gene_set.source)
