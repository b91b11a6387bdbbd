"""Classes for a morphology segmenter, taken from the transcriptome (headless).

Three sources, all giving one label per spot (``adata.obs["seg_class"]``, categorical):

- **genes**: the user names marker genes; a spot whose strongest marker (by z-score of log1p
  normalised expression) is at or above that gene's ``quantile`` becomes "<GENE> high", other
  tissue spots "other tissue";
- **clusters**: leiden (scanpy, igraph) or k-means on the spots' expression (normalise, log1p,
  highly variable genes, PCA), or an existing per-spot label column (the manifest's ``clusters``);
- **regions** drawn by the user (polygons in level-0 px) assign or override classes of the spots
  inside them.

"Background" is always class 0 and is sampled off tissue with the tissue mask.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.gene_values import find_gene, log1p_normalised
from ..errors import HistoExprError

BACKGROUND = "background"
OTHER = "other tissue"


def classes_from_genes(adata, genes: list[str], quantile: float = 0.5) -> pd.Series:
    names = [find_gene(adata, g) for g in genes]
    x = log1p_normalised(adata, names)
    z = (x - x.mean(0)) / (x.std(0) + 1e-9)
    thr = np.quantile(x, quantile, axis=0)
    best = np.argmax(z, axis=1)
    high = x[np.arange(len(x)), best] >= thr[best]
    labels = np.where(high, np.array([f"{g} high" for g in names], dtype=object)[best], OTHER)
    return pd.Series(labels, index=adata.obs_names, name="seg_class")


def classes_from_clusters(adata, method: str = "leiden", n_clusters: int = 4, resolution: float = 0.5,
                          seed: int = 0) -> pd.Series:
    import scanpy as sc

    if adata.n_obs < 10:
        raise HistoExprError("too few spots to cluster (need at least 10)")
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    if a.n_vars > 200:
        sc.pp.highly_variable_genes(a, n_top_genes=min(2000, a.n_vars - 1))
        a = a[:, a.var["highly_variable"]].copy()
    sc.pp.pca(a, n_comps=min(30, a.n_obs - 1, a.n_vars - 1), random_state=seed)
    if method == "leiden":
        sc.pp.neighbors(a, n_neighbors=min(15, a.n_obs - 1), random_state=seed)
        sc.tl.leiden(a, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2,
                     directed=False)
        lab = a.obs["leiden"].astype(str).to_numpy()
    elif method == "kmeans":
        from sklearn.cluster import KMeans

        lab = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(a.obsm["X_pca"]).astype(str)
    else:
        raise HistoExprError(f"unknown clustering {method!r} (leiden or kmeans)")
    return pd.Series([f"cluster {v}" for v in lab], index=adata.obs_names, name="seg_class")


def classes_from_column(adata, column: str = "cluster") -> pd.Series:
    if column not in adata.obs:
        raise HistoExprError(f"the spots have no {column!r} labels (give a clusters file in the manifest)")
    s = adata.obs[column].astype(object)
    s = s.where(s.notna(), None)
    return pd.Series(s.to_numpy(), index=adata.obs_names, name="seg_class")


def apply_regions(labels: pd.Series, xy: np.ndarray, regions) -> pd.Series:
    """Assign the class of each drawn region (QuPath objects or ``(polygon (K, 2) level-0 (x, y), class)``
    pairs; holes excluded, later regions win) to the spots inside it."""
    from ..io.qupath import as_object
    from .annotations import inside_regions

    regions = [as_object(r) for r in regions]
    xy = np.asarray(xy, float)
    k = inside_regions(regions, xy[:, 0], xy[:, 1])
    out = labels.copy().astype(object)
    names = np.array([r.cls for r in regions] + [None], dtype=object)
    out[k >= 0] = names[k[k >= 0]]
    return out


def class_spec(source: str, genes=None, quantile=0.5, method="leiden", n_clusters=4, resolution=0.5,
               column="cluster") -> dict:
    """A JSON-able description of how classes were made (stored in the model, re-applied at test)."""
    return {"source": source, "genes": list(genes or []), "quantile": quantile, "method": method,
            "n_clusters": n_clusters, "resolution": resolution, "column": column}


CLASSES_HELP = "clusters (the manifest's labels) | leiden[:RES] | kmeans[:K] | genes:G1,G2[@QUANTILE]"


def parse_classes_arg(arg: str) -> dict:
    """CLI ``--classes``: ``clusters`` (the manifest's label column), ``leiden``, ``kmeans:K`` or
    ``genes:G1,G2[@Q]``."""
    if arg == "clusters":
        return class_spec("column")
    if arg == "leiden" or arg.startswith("leiden:"):
        return class_spec("clusters", method="leiden", resolution=float(arg.split(":")[1]) if ":" in arg else 0.5)
    if arg.startswith("kmeans"):
        return class_spec("clusters", method="kmeans", n_clusters=int(arg.split(":")[1]) if ":" in arg else 4)
    if arg.startswith("genes:"):
        body = arg[6:]
        q = 0.5
        if "@" in body:
            body, qs = body.rsplit("@", 1)
            q = float(qs)
        genes = [g.strip() for g in body.split(",") if g.strip()]
        if not genes:
            raise HistoExprError("--classes genes: needs at least one gene, e.g. genes:ERBB2,COL1A1")
        return class_spec("genes", genes=genes, quantile=q)
    raise HistoExprError(f"--classes {arg!r}: use clusters, leiden[:RES], kmeans[:K] or genes:G1,G2[@Q]")


def spot_classes(adata, spec: dict) -> pd.Series:
    if spec["source"] == "genes":
        return classes_from_genes(adata, spec["genes"], spec["quantile"])
    if spec["source"] == "clusters":
        return classes_from_clusters(adata, spec["method"], spec["n_clusters"], spec["resolution"])
    return classes_from_column(adata, spec.get("column", "cluster"))
