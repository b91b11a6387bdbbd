"""``histoexpr features | bulk | survival | multitask``: the slide-level models on a cohort manifest."""

from __future__ import annotations

import argparse
import json

from ..errors import HistoExprError
from ..slide_level.bags import choose_bulk_genes, load_bags
from ..slide_level.cohort import bulk_matrix, read_cohort
from ..slide_level.features import extract_cohort_steps
from ..slide_level.ghanet import default_groups, evaluate_ghanet_steps, read_groups, train_ghanet
from ..slide_level.he2rna import evaluate_he2rna_steps, train_he2rna
from ..slide_level.multitask import evaluate_multitask_steps, train_multitask
from ..slide_level.report import write_bulk_report, write_multitask_report, write_survival_report
from .console import add_encoder_options, progress
from .console import drain as drain_with


def _show(ev: dict) -> None:
    stage = ev.get("stage")
    if stage == "epoch":
        if ev["epoch"] == ev["epochs"] or ev["epoch"] % 25 == 0:
            extra = f", recon {ev['recon_loss']:.4f}" if "recon_loss" in ev else ""
            progress(f"{ev['model']}: epoch {ev['epoch']}/{ev['epochs']} loss {ev['train_loss']:.4f}{extra}")
    elif stage == "fold":
        vals = ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if k not in ("stage", "fold", "folds")
                         and isinstance(v, float))
        progress(f"fold {ev['fold'] + 1}/{ev['folds']}: {vals}")
    elif "msg" in ev:
        progress(ev["msg"])


def _drain(gen):
    return drain_with(gen, _show)


def _inputs(args, bulk: bool = True):
    slides = read_cohort(args.cohort)
    bags = load_bags(slides, args.features)
    B = bulk_matrix(slides, getattr(args, "bulk_table", None)) if bulk else None
    return slides, bags, B


def _genes(args, B):
    names = [g.strip() for g in (args.genes or "").split(",") if g.strip()]
    return choose_bulk_genes(B, args.n_genes, names or None)


def _train_kw(args) -> dict:
    return {"epochs": args.epochs, "lr": args.lr, "n_components": args.components, "device": args.device,
            "hidden": args.hidden, "seed": args.seed}


def _saved(model, args, what: str) -> int:
    model.save(args.out)
    progress(f"{what} saved to {args.out}")
    return 0


def _reported(path, shown: dict) -> int:
    print(json.dumps(shown, indent=2))
    progress(f"report: {path}")
    return 0


def cmd_features(args) -> int:
    res = _drain(extract_cohort_steps(read_cohort(args.cohort), args.encoder, args.out, args.tile_um, args.px,
                                      args.device, args.seed, args.scheduler, args.cluster, progress,
                                      args.encoder_name))
    print(json.dumps(res, indent=2))
    return 0


def cmd_bulk_train(args) -> int:
    _, bags, B = _inputs(args)
    genes = _genes(args, B)
    model = _drain(train_he2rna(bags, B[genes].to_numpy(), genes, supertiles_n=args.supertiles, **_train_kw(args)))
    return _saved(model, args, f"HE2RNA model ({len(genes)} genes, {len(bags)} slides)")


def cmd_bulk_evaluate(args) -> int:
    import numpy as np


    slides, bags, B = _inputs(args)
    genes = _genes(args, B)
    rep = _drain(evaluate_he2rna_steps(slides, bags, B[genes].to_numpy(), genes, k=args.folds,
                                       supertiles_n=args.supertiles, **_train_kw(args)))
    logb = {s.id: dict(zip(genes, np.log1p(B.loc[s.id, genes].to_numpy(float)))) for s in slides}
    return _reported(write_bulk_report(rep, args.out, logb), rep["summary"])


def _groups(args, B):
    return read_groups(args.groups) if args.groups else default_groups(B, seed=args.seed)


def cmd_survival_train(args) -> int:
    import numpy as np


    slides, bags, B = _inputs(args)
    if any(s.time is None or s.event is None for s in slides):
        raise HistoExprError("survival training needs time and event for every slide of the cohort")
    model = _drain(train_ghanet(bags, np.array([s.time for s in slides]), np.array([s.event for s in slides]), B,
                                _groups(args, B), recon_weight=args.recon_weight, **_train_kw(args)))
    return _saved(model, args, f"G-HANet model ({len(model.groups)} genomic groups, {len(bags)} slides)")


def cmd_survival_evaluate(args) -> int:
    slides, bags, B = _inputs(args)
    rep = _drain(evaluate_ghanet_steps(slides, bags, B, _groups(args, B), k=args.folds,
                                       ablation=not args.no_ablation, recon_weight=args.recon_weight,
                                       **_train_kw(args)))
    return _reported(write_survival_report(rep, args.out), rep["summary"])


def cmd_multitask_train(args) -> int:
    slides, bags, B = _inputs(args)
    genes = _genes(args, B)
    model = _drain(train_multitask(bags, B[genes].to_numpy(), genes, [s.tissue or "" for s in slides],
                                   **_train_kw(args)))
    return _saved(model, args, f"multi-task model ({', '.join(model.tissues)}; {len(genes)} genes)")


def cmd_multitask_evaluate(args) -> int:
    slides, bags, B = _inputs(args)
    genes = _genes(args, B)
    rep = _drain(evaluate_multitask_steps(slides, bags, B[genes].to_numpy(), genes, k=args.folds,
                                          single_task=not args.no_single_task, **_train_kw(args)))
    shown = {t: {v: {k: d[v][k] for k in ("sample_r_mean", "gene_r_mean")} for v in ("multi_task", "single_task")
                 if v in d} for t, d in rep["per_tissue"].items()}
    return _reported(write_multitask_report(rep, args.out), shown)


def _common(p: argparse.ArgumentParser, out_help: str, epochs: int, lr: float, hidden: int,
            genes: bool = True, evaluate: bool = False) -> None:
    p.add_argument("--cohort", required=True, help="cohort CSV: id,slide,patient,bulk,time,event,tissue")
    p.add_argument("--features", required=True, help="folder of tile features (`histoexpr features --out`)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--bulk-table", default=None, help="slides x genes table instead of per-slide bulk files")
    if genes:
        p.add_argument("--genes", default=None, help="comma-separated genes (default: the N most variable)")
        p.add_argument("--n-genes", type=int, default=250, help="number of most variable genes (default 250)")
    if evaluate:
        p.add_argument("--folds", type=int, default=5, help="patient-level folds (default 5)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--components", type=int, default=32,
                   help="principal components of the tile features (0: all features)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def add_parsers(sub) -> None:
    f = sub.add_parser("features", help="encode the tissue tiles of every cohort slide once (zarr per slide)")
    f.add_argument("--cohort", required=True)
    f.add_argument("--encoder", required=True,
                   help="an expression model folder, a pretrained encoder's weights file or Hugging Face folder "
                        "(UNI, Virchow2, H-optimus, Phikon, ...: docs/encoders.md), or BACKBONE[:WEIGHTS_FILE] "
                        "(e.g. resnet50:imagenet.safetensors)")
    add_encoder_options(f, cache=False)
    f.add_argument("--out", required=True, help="features folder (one <id>.zarr per slide; resumable)")
    f.add_argument("--tile-um", type=float, default=None,
                   help="tile side in µm (default: the model's or encoder's window, else 112 = 224 px at 0.5 µm/px)")
    f.add_argument("--px", type=int, default=None,
                   help="tile side in pixels (default: the model's or encoder's, else 224)")
    f.add_argument("--device", default="auto")
    f.add_argument("--seed", type=int, default=0, help="seed of a randomly initialised encoder")
    f.add_argument("--scheduler", default=None, help="dask.distributed scheduler address")
    f.add_argument("--cluster", action="store_true", help="start a local dask cluster (one worker per GPU)")
    f.set_defaults(func=cmd_features)

    for name, help_, train, evaluate, kw in (
            ("bulk", "HE2RNA: bulk expression from tiles, tile scores as virtual spatialization",
             cmd_bulk_train, cmd_bulk_evaluate, dict(epochs=150, lr=1e-3, hidden=128)),
            ("survival", "G-HANet: genome-informed survival (bulk RNA in training, slide only at inference)",
             cmd_survival_train, cmd_survival_evaluate, dict(epochs=40, lr=5e-4, hidden=64, genes=False)),
            ("multitask", "MTM-style multi-task expression across tissues (per-tissue scale/shift)",
             cmd_multitask_train, cmd_multitask_evaluate, dict(epochs=100, lr=1e-3, hidden=128))):
        p = sub.add_parser(name, help=help_)
        ps = p.add_subparsers(dest=f"{name}_command", required=True)
        t = ps.add_parser("train", help="train on the whole cohort and save the model folder")
        _common(t, "model folder (model.safetensors + model.json)", **kw)
        e = ps.add_parser("evaluate", help="patient-level k-fold cross-validation -> report.json + PNG")
        _common(e, "report folder (report.json + PNG)", evaluate=True, **kw)
        if name == "survival":
            for q in (t, e):
                q.add_argument("--groups", default=None,
                               help="genomic groups: JSON {group: [genes]}, GMT, or CSV gene,group "
                                    "(default: 4 co-expressed groups of the most variable genes)")
                q.add_argument("--recon-weight", type=float, default=3.0,
                               help="weight of the genomic reconstruction loss (0: without it)")
            e.add_argument("--no-ablation", action="store_true", help="skip the run without reconstruction")
        if name == "bulk":
            for q in (t, e):
                q.add_argument("--supertiles", type=int, default=0,
                               help="pool each slide's tiles into N spatial super-tiles first, as HE2RNA did "
                                    "for whole slides of thousands of tiles (0: tiles as they are)")
        if name == "multitask":
            e.add_argument("--no-single-task", action="store_true", help="skip the per-tissue single-task models")
        t.set_defaults(func=train)
        e.set_defaults(func=evaluate)
