"""Generated sections, Visium HD runs and cohorts with planted, known ground truth (the demo, sample
data, tests and benchmarks use them). Each builder writes real files and reuses a complete folder
written with the same parameters. The ground truth (class map, spot fractions, profiles) is written
next to the data."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .tissue import (
    CLASSES,
    DATA_VERSION,
    SyntheticTissue,
    gene_names,
    planted_profiles,
    simulate_counts,
    spot_fractions,
    visium_grid,
)
from .writers import spatial_images, visium_barcodes, write_10x_h5, write_mtx_folder, write_pyramidal_tiff


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
    bcs = visium_barcodes(len(xy), seed)
    genes = gene_names()

    outs = data.spots
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    keep = in_tissue == 1
    kept_counts = counts[keep]
    kept_bcs = [b for b, k in zip(bcs, keep) if k]
    if layout == "mtx":
        write_mtx_folder(outs / "filtered_feature_bc_matrix", kept_counts, kept_bcs, genes)
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
           **spatial_images(spatial, tissue, size)}
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
               **spatial_images(spatial, tissue, size)}
        (spatial / "scalefactors_json.json").write_text(json.dumps(sfj, indent=2))
    data.truth.mkdir(exist_ok=True)
    np.save(data.truth / "class_map_ds1.npy", tissue.class_map(1))
    return data


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


def demo_tissue(demo: "DemoData") -> SyntheticTissue:
    """The procedural tissue a :func:`make_demo` folder was written from (its ground truth)."""
    p = json.loads((demo.truth / "done.json").read_text())
    return SyntheticTissue(p["size"], p["size"], p["mpp"], p["seed"],
                           blobs=tuple(p["blobs"]) if p.get("blobs") else None)
