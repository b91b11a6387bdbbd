"""Expression values of spots: gene lookup with suggestions, raw / log1p / normalised values, shared
genes, display limits (numpy and AnnData only)."""

from __future__ import annotations

import difflib

import numpy as np
import scipy.sparse as sp

from ..errors import UnknownGeneError

VALUE_MODES = ("raw", "log1p", "normalised")


def find_gene(adata, gene: str) -> str:
    """Exact, then case-insensitive match of ``gene``; :class:`UnknownGeneError` otherwise."""
    names = adata.var_names
    if gene in names:
        return gene
    lower = {n.lower(): n for n in names}
    if gene.lower() in lower:
        return lower[gene.lower()]
    if "gene_ids" in adata.var and gene in set(adata.var["gene_ids"].astype(str)):
        return str(adata.var_names[adata.var["gene_ids"].astype(str) == gene][0])
    close = difflib.get_close_matches(gene.upper(), [n.upper() for n in names], n=3, cutoff=0.6)
    upper = {n.upper(): n for n in names}
    raise UnknownGeneError(gene, [upper[c] for c in close])


def gene_values(adata, gene: str, mode: str = "raw", target_sum: float = 1e4) -> np.ndarray:
    """Per-spot values of ``gene``: ``raw`` counts, ``log1p`` counts, or ``normalised``
    (counts per ``target_sum`` then log1p, as ``scanpy.pp.normalize_total`` + ``log1p``)."""
    if mode not in VALUE_MODES:
        raise ValueError(f"mode must be one of {VALUE_MODES}, not {mode!r}")
    g = find_gene(adata, gene)
    col = adata[:, g].X
    v = np.asarray(col.todense() if sp.issparse(col) else col, dtype=np.float64).ravel()
    if mode == "log1p":
        return np.log1p(v)
    if mode == "normalised":
        return log1p_normalised(adata, [g], target_sum)[:, 0].astype(np.float64)
    return v


def log1p_normalised(adata, genes: list[str], target_sum: float = 1e4) -> np.ndarray:
    """``(spots, genes)`` log1p of counts per ``target_sum`` (totals over all genes of the spot)."""
    X = adata.X
    tot = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    tot[tot == 0] = 1.0  # an empty spot stays 0
    sub = X[:, adata.var_names.get_indexer(genes)]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    return np.log1p(sub / tot[:, None] * target_sum).astype(np.float32)


def shared_genes(genes: list[str], adata) -> list[str]:
    """``genes`` (in their order) that ``adata`` measures."""
    have = set(map(str, adata.var_names))
    return [g for g in genes if g in have]


def percentile_limits(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(v, [low, high])
    if hi <= lo:
        hi = lo + (1.0 if lo == 0 else abs(lo) * 1e-3)
    return (float(lo), float(hi))


def top_genes(adata, n: int = 50) -> list[str]:
    """Genes with the highest mean count (useful defaults for pickers)."""
    means = np.asarray(adata.X.mean(axis=0)).ravel()
    order = np.argsort(-means)[:n]
    return [str(adata.var_names[i]) for i in order]
