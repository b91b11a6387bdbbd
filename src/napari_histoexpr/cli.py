"""``histoexpr`` command line: batch work over the same headless core as the napari plugin.

Every command prints progress to stderr and exits non-zero with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import HistoExprError


def _progress(msg: str) -> None:
    print(f"[histoexpr] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    """Describe a slide and/or spot data (and check that they align)."""
    from .io.session import open_steps

    gen = open_steps(args.slide, args.spots, args.counts, args.clusters, args.mpp)
    try:
        while True:
            _progress(next(gen))
    except StopIteration as stop:
        pyr, adata = stop.value
    out: dict = {}
    if pyr is not None:
        out["slide"] = {
            "path": pyr.path, "backend": pyr.backend, "width": pyr.level0_shape[1],
            "height": pyr.level0_shape[0], "levels": pyr.n_levels,
            "downsamples": [round(d, 4) for d in pyr.downsamples], "tile_size": list(pyr.tile_size),
            "mpp": pyr.mpp, "mpp_source": pyr.mpp_source, "icc_applied": pyr.icc_applied,
        }
    if adata is not None:
        info = adata.uns["histoexpr"]
        out["spots"] = {
            "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars),
            "platform": info.get("platform"), "spot_diameter_px": info.get("spot_diameter_px"),
            "mpp": info.get("mpp"), "mpp_source": info.get("mpp_source"),
        }
        if args.gene:
            from .io.spots import gene_values

            v = gene_values(adata, args.gene, args.mode)
            out["spots"]["gene"] = {"name": args.gene, "mode": args.mode, "mean": float(v.mean()),
                                    "max": float(v.max())}
    print(json.dumps(out, indent=2))
    return 0


def cmd_demo(args) -> int:
    """Generate the built-in section and show it (or, headless, write a screenshot)."""
    from .data.synthetic import make_demo

    out = Path(args.out)
    _progress(f"generating the synthetic section in {out} (cached after the first run)")
    demo = make_demo(out / "section", size=args.size, seed=args.seed)
    _progress(f"slide {demo.slide}, spots {demo.spots}")
    model_dir = None
    if args.epochs > 0:
        from .viewer_app import demo_model

        model_dir = demo_model(out, epochs=args.epochs, progress=_progress)
        _progress(f"model {model_dir}")
    headless = args.screenshot is not None or not os.environ.get("DISPLAY")
    screenshot = Path(args.screenshot) if args.screenshot else out / "demo.png"
    from .viewer_app import show_demo

    path = show_demo(demo, screenshot=screenshot if headless else None, gene=args.gene,
                     progress=_progress, model_dir=model_dir)
    if path is not None:
        _progress(f"screenshot written: {path}")
        print(path)
    return 0


def _drain(gen, show=None):
    """Run a step generator to completion, printing its events; return its value."""
    show = show or _show_event
    try:
        while True:
            show(next(gen))
    except StopIteration as stop:
        return stop.value


def _show_event(ev: dict) -> None:
    stage = ev.get("stage")
    if stage == "step":
        if ev["step"] == ev["steps"] or ev["step"] % 20 == 0:
            print(f"\r[histoexpr] epoch {ev['epoch'] + 1} step {ev['step']}/{ev['steps']} "
                  f"loss {ev['loss']:.4f}", end="", file=sys.stderr, flush=True)
    elif stage == "epoch" and "val_bal_acc" in ev:  # segmenter
        print(f"\r[histoexpr] {ev['window_um']:g} µm patches, epoch {ev['epoch'] + 1}/{ev['epochs']}: "
              f"train loss {ev['train_loss']:.4f}, train acc {ev['train_acc']:.3f}, "
              f"val balanced acc {ev['val_bal_acc']:.3f}; {ev['patches_per_s']:.0f} patches/s",
              file=sys.stderr, flush=True)
    elif stage == "epoch":
        print(f"\r[histoexpr] epoch {ev['epoch'] + 1}/{ev['epochs']}: train loss {ev['train_loss']:.4f}, "
              f"val loss {ev['val_loss']:.4f}, val mean r {ev['val_mean_r']:.3f}"
              f"{' (best, saved)' if ev.get('best') else ''}; {ev['patches_per_s']:.0f} patches/s",
              file=sys.stderr, flush=True)
    elif stage == "section":
        _progress(f"{ev['section']}: {ev['n_spots']} spots, mean r {ev['mean_r']:.3f}")
    elif "msg" in ev:
        _progress(ev["msg"])


def cmd_train(args) -> int:
    """Train an expression model on the sections of a manifest."""
    from .evaluation import train_from_manifest_steps
    from .train.expression import TrainConfig

    genes = [g.strip() for g in args.gene_list.split(",") if g.strip()] if args.gene_list else None
    cfg = TrainConfig(backbone=args.backbone, n_genes=args.genes, genes=genes, max_aux=args.aux_genes,
                      aux_weight=args.aux_weight, window_um=args.window_um, px=args.px,
                      epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
                      val_section=args.val_section, augment=not args.no_augment,
                      stain_norm=args.stain_norm, init=args.init, device=args.device, seed=args.seed,
                      baselines=not args.no_baselines)
    summary = _drain(train_from_manifest_steps(args.manifest, args.out, cfg, resume=args.resume))
    _progress(f"model written to {args.out} (best epoch {summary['best_epoch'] + 1}, "
              f"validation mean r {summary['best_val_mean_r']:.3f})")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    """Per-gene Pearson of a model on held-out sections -> report.json/.md + plots."""
    from .evaluation import evaluate_steps

    report = _drain(evaluate_steps(args.model, args.manifest, args.out, device=args.device,
                                   baselines=not args.no_baselines))
    print(json.dumps(report["summary"], indent=2))
    return 0


def cmd_predict(args) -> int:
    """Whole-slide prediction of one or many slides (many: on dask.distributed)."""
    from .infer.distributed import predict_many

    results = predict_many(args.model, args.slide, args.out, scheduler=args.scheduler, device=args.device,
                           stride_um=args.stride_um, batch_size=args.batch_size, workers=args.workers,
                           resume=not args.no_resume, spots=args.spots, progress=_progress)
    print(json.dumps(results, indent=2))
    return 0


def cmd_segment_train(args) -> int:
    """Train a transcriptome-supervised segmenter on the sections of a manifest."""
    from .io.manifest import read_manifest
    from .segment.classes import parse_classes_arg
    from .segment.model import SegConfig, prepare_seg_sections, train_segmenter_steps

    cfg = SegConfig(classes=parse_classes_arg(args.classes),
                    windows_um=tuple(float(w) for w in args.windows_um.split(",")), px=args.px,
                    backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    val_section=args.val_section, device=args.device, seed=args.seed)
    secs = _drain(prepare_seg_sections(read_manifest(args.manifest), cfg))
    summary = _drain(train_segmenter_steps(secs, args.out, cfg))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_segment_evaluate(args) -> int:
    """Spot-level Dice of a segmenter on held-out sections."""
    from .segment.evaluate import evaluate_segmenter_steps

    report = _drain(evaluate_segmenter_steps(args.model, args.manifest, args.out, device=args.device,
                                             stride_um=args.stride_um))
    print(json.dumps(report["summary"], indent=2))
    return 0


# -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="histoexpr", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"napari-histoexpr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate the synthetic section and open it in napari")
    d.add_argument("--out", default="demo-output", help="output folder (default: ./demo-output)")
    d.add_argument("--size", type=int, default=4096, help="slide side in pixels (default 4096)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--gene", default="ERBB2", help="gene to colour the spots by")
    d.add_argument("--epochs", type=int, default=12,
                   help="epochs of the demo expression model (0: no model, slide and spots only)")
    d.add_argument("--screenshot", default=None,
                   help="write a PNG screenshot here and exit (default when no display)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="describe a slide and/or spot data and check they align")
    i.add_argument("--slide", default=None)
    i.add_argument("--spots", default=None, help="Space Ranger outs folder, .h5ad or ST *_selection.tsv")
    i.add_argument("--counts", default=None, help="legacy ST counts TSV")
    i.add_argument("--clusters", default=None, help="per-spot labels TSV/CSV with a 'label' column")
    i.add_argument("--mpp", type=float, default=None, help="override µm per level-0 pixel")
    i.add_argument("--gene", default=None)
    i.add_argument("--mode", default="log1p", choices=["raw", "log1p", "normalised"])
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train an expression model (BrST-Net style) on a section manifest")
    t.add_argument("--manifest", required=True, help="section manifest CSV (see docs/formats.md)")
    t.add_argument("--out", required=True, help="model folder (model.safetensors + model.json)")
    t.add_argument("--genes", type=int, default=250, help="number of target genes (top by mean; 250)")
    t.add_argument("--gene-list", default=None, help="comma-separated target genes instead of the top N")
    t.add_argument("--aux-genes", type=int, default=1000, help="max auxiliary genes (0 = no aux head)")
    t.add_argument("--aux-weight", type=float, default=0.3)
    t.add_argument("--backbone", default="resnet18",
                   help="resnet18|resnet34|resnet50|densenet121|efficientnet_b0..b4")
    t.add_argument("--init", default=None, help="backbone weights file (.safetensors or torch tensors)")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--patience", type=int, default=5, help="early stopping patience (epochs)")
    t.add_argument("--val-section", default=None, help="section for early stopping (default: last)")
    t.add_argument("--window-um", type=float, default=150.0, help="patch side in µm (default 150)")
    t.add_argument("--px", type=int, default=224, help="patch side in pixels (default 224)")
    t.add_argument("--stain-norm", action="store_true", help="Macenko-normalise patches")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--no-baselines", action="store_true")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--device", default="auto", help="auto|cpu|cuda")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="per-gene Pearson of a model on held-out sections")
    e.add_argument("--model", required=True)
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True, help="report folder (report.json, report.md, PNGs)")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-baselines", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="whole-slide expression prediction -> zarr + h5ad")
    pr.add_argument("--model", required=True)
    pr.add_argument("--slide", required=True, action="append",
                    help="slide file (repeat for several slides; each gets OUT/<slide name>/)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--spots", default=None, help="spots of a single slide: also predict at the spots "
                    "and report Pearson r against the measured values")
    pr.add_argument("--stride-um", type=float, default=None, help="grid step in µm (default: window/2)")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--workers", type=int, default=4, help="reader threads per slide")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--scheduler", default=None,
                    help="dask.distributed scheduler address (default: a LocalCluster, one worker per GPU)")
    pr.add_argument("--no-resume", action="store_true", help="start again instead of continuing")
    pr.set_defaults(func=cmd_predict)

    sg = sub.add_parser("segment", help="transcriptome-supervised morphology segmenter")
    ssub = sg.add_subparsers(dest="segment_command", required=True)
    st = ssub.add_parser("train", help="train on a section manifest")
    st.add_argument("--manifest", required=True)
    st.add_argument("--classes", required=True,
                    help="clusters (the manifest's labels) | leiden[:RES] | kmeans[:K] | genes:G1,G2[@QUANTILE]")
    st.add_argument("--out", required=True)
    st.add_argument("--windows-um", default="50,100", help="patch sizes in µm (comma-separated)")
    st.add_argument("--px", type=int, default=64)
    st.add_argument("--backbone", default="resnet18")
    st.add_argument("--epochs", type=int, default=10)
    st.add_argument("--batch-size", type=int, default=64)
    st.add_argument("--lr", type=float, default=1e-3)
    st.add_argument("--val-section", default=None)
    st.add_argument("--device", default="auto")
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=cmd_segment_train)
    se = ssub.add_parser("evaluate", help="spot-level Dice on held-out sections")
    se.add_argument("--model", required=True)
    se.add_argument("--manifest", required=True)
    se.add_argument("--out", required=True)
    se.add_argument("--stride-um", type=float, default=None)
    se.add_argument("--device", default="auto")
    se.set_defaults(func=cmd_segment_evaluate)

    from .cli_slide import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info" and not (args.slide or args.spots):
        parser.error("info needs --slide and/or --spots")
    try:
        return int(args.func(args) or 0)
    except HistoExprError as e:
        print(f"histoexpr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("histoexpr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
