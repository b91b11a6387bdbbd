"""Slide-level models on generated cohorts (real files: pyramidal TIFF slides, bulk TSVs, survival):
HE2RNA per-gene r across held-out slides, G-HANet C-index with/without the genomic reconstruction
(over several fold splits), multi-task vs single-task per tissue. Prints JSON; writes each report
(report.json + PNG) under --out.

    python benchmarks/slide_level.py [--slides 60] [--size 1280] [--device cuda] [--seeds 0,1,2]

The encoder is an expression model trained here on two generated Visium-like sections (as a user
would encode a cohort with their own model's backbone), or --encoder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def train_encoder(out: Path, device: str) -> Path:
    from napari_histoexpr.cli import main as cli
    from napari_histoexpr.datasets import PLANTED_GENES, make_demo
    from napari_histoexpr.io.manifest import Section, write_manifest

    model = out / "encoder"
    if (model / "model.json").exists():
        return model
    demos = [make_demo(out / f"sections/s{i}", size=2048, mpp=1.0, seed=11 + i) for i in range(2)]
    secs = [Section(section=f"s{i}", patient=f"p{i}", image=d.slide, spots=d.spots) for i, d in enumerate(demos)]
    genes = [g for gs in PLANTED_GENES.values() for g in gs]
    rc = cli(["train", "--manifest", str(write_manifest(out / "sections.csv", secs)), "--out", str(model),
              "--gene-list", ",".join(genes), "--aux-genes", "10", "--window-um", "100", "--px", "64",
              "--epochs", "16", "--lr", "1e-3", "--patience", "16", "--device", device, "--seed", "0"])
    assert rc == 0
    return model


def main(argv=None) -> int:
    from napari_histoexpr.datasets import PLANTED_GENES, make_cohort
    from napari_histoexpr.metrics import concordance_index
    from napari_histoexpr.slide_level.bags import load_bags
    from napari_histoexpr.slide_level.cohort import bulk_matrix, read_cohort
    from napari_histoexpr.slide_level.features import extract_cohort_steps
    from napari_histoexpr.slide_level.ghanet import evaluate_ghanet_steps
    from napari_histoexpr.slide_level.he2rna import evaluate_he2rna_steps
    from napari_histoexpr.slide_level.multitask import evaluate_multitask_steps
    from napari_histoexpr.slide_level.report import (
        write_bulk_report,
        write_multitask_report,
        write_survival_report,
    )
    from napari_histoexpr.steps import drain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmark-output/slide_level")
    ap.add_argument("--slides", type=int, default=60)
    ap.add_argument("--size", type=int, default=1280, help="slide side in px at 1 µm/px")
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--seeds", default="0,1,2", help="fold splits / model seeds for G-HANet")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res, t = {"slides": args.slides, "size_um": args.size}, time.perf_counter()
    encoder = args.encoder or train_encoder(out, args.device)
    res["encoder_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    a = make_cohort(out / "cohort_a", n_slides=args.slides, size=args.size, seed=7)
    n_small = args.slides // 4
    b = make_cohort(out / "cohort_b", tissues={"breast": args.slides - n_small, "lung": n_small},
                    size=args.size, seed=8)
    res["cohorts_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    for c in (a, b):
        drain(extract_cohort_steps(read_cohort(c), str(encoder), c.parent / "features", device=args.device))
    res["features_s"] = round(time.perf_counter() - t, 1)

    slides = read_cohort(a)
    B = bulk_matrix(slides)
    bags = load_bags(slides, a.parent / "features")
    res["tiles_per_slide"] = float(np.mean([len(x.feats) for x in bags]))
    genes = list(B.columns)
    planted = [g for gs in PLANTED_GENES.values() for g in gs]
    t = time.perf_counter()
    rep = drain(evaluate_he2rna_steps(slides, bags, B[genes].to_numpy(), genes, k=5, seed=0, device=args.device))
    logb = {s.id: dict(zip(genes, np.log1p(B.loc[s.id, genes].to_numpy(float)))) for s in slides}
    write_bulk_report(rep, out / "he2rna", logb)
    res["he2rna"] = {"s": round(time.perf_counter() - t, 1),
                     "planted_mean_r_over_folds": {g: round(rep["per_gene_mean_r"][g], 3) for g in planted},
                     "planted_min_r": round(min(rep["per_gene_mean_r"][g] for g in planted), 3),
                     "unplanted_mean_r": round(float(np.mean([rep["per_gene_mean_r"][g] for g in genes
                                                              if g not in planted])), 3),
                     "summary": rep["summary"]}

    truth = __import__("pandas").read_csv(a.parent / "truth.csv").set_index("id").loc[[s.id for s in slides]]
    res["ghanet"] = {"oracle_c_index": concordance_index([s.time for s in slides], truth["risk"],
                                                         [s.event for s in slides]),
                     "events": int(sum(s.event for s in slides)), "runs": {}}
    for seed in [int(x) for x in args.seeds.split(",")]:
        t = time.perf_counter()
        rep = drain(evaluate_ghanet_steps(slides, bags, B, dict(PLANTED_GENES), k=5, seed=seed,
                                           device=args.device))
        if seed == 0:
            write_survival_report(rep, out / "ghanet")
        res["ghanet"]["runs"][seed] = {**{k: round(v, 3) for k, v in rep["summary"].items()},
                                       "s": round(time.perf_counter() - t, 1)}
    runs = res["ghanet"]["runs"].values()
    res["ghanet"]["mean_c_index"] = round(float(np.mean([r["c_index_mean"] for r in runs])), 3)
    res["ghanet"]["mean_c_index_no_reconstruction"] = round(float(np.mean(
        [r["c_index_no_reconstruction_mean"] for r in runs])), 3)

    slides = read_cohort(b)
    B = bulk_matrix(slides)
    bags = load_bags(slides, b.parent / "features")
    genes = list(B.columns)
    t = time.perf_counter()
    rep = drain(evaluate_multitask_steps(slides, bags, B[genes].to_numpy(), genes, k=5, seed=0,
                                          device=args.device, epochs=100))
    write_multitask_report(rep, out / "multitask")
    res["multitask"] = {"s": round(time.perf_counter() - t, 1), "per_tissue": {
        t_: {"n_slides": d["n_slides"], **{v: {"sample_r": round(d[v]["sample_r_mean"], 3),
                                              "gene_r_all": round(d[v]["gene_r_mean"], 3),
                                              "gene_r_planted": round(float(np.mean([d[v]["gene_r"][g]
                                                                                     for g in planted])), 3)}
                                          for v in ("multi_task", "single_task")}}
        for t_, d in rep["per_tissue"].items()}}
    print(json.dumps(res, indent=2))
    (out / "results.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
