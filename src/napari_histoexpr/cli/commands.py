"""The expression-side commands: info, demo, train, evaluate, predict, segment train/evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..datasets import make_demo
from ..encoders.head_training import HeadConfig, relink_encoder, train_head_steps
from ..errors import HistoExprError
from ..evaluation import evaluate_segmenter_steps, evaluate_steps
from ..infer.distributed import predict_many
from ..io.manifest import read_manifest
from ..io.sections import open_steps
from ..io.spatialdata_store import export_section
from ..segment.classes import parse_classes_arg
from ..train.calibration import calibrate_from_manifest_steps
from ..train.expression_trainer import TrainConfig, summary_line, train_from_manifest_steps
from ..train.segmenter_trainer import SegConfig, segmenter_steps
from ..viewer_app import show_demo  # the CLI's one GUI import: the demo window
from .console import drain, progress


def cmd_info(args) -> int:
    """Describe a slide and/or spot data (and check that they align)."""

    pyr, adata = drain(open_steps(args.slide, args.spots, args.counts, args.clusters, args.mpp, args.bin_um),
                       progress)
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
        for key in ("positions", "bin_um"):  # legacy ST placed without a spot file; Visium HD bins
            if info.get(key):
                out["spots"][key] = info[key]
        if args.gene:
            from ..data.gene_values import gene_values

            v = gene_values(adata, args.gene, args.mode)
            out["spots"]["gene"] = {"name": args.gene, "mode": args.mode, "mean": float(v.mean()),
                                    "max": float(v.max())}
    print(json.dumps(out, indent=2))
    return 0


def cmd_export(args) -> int:
    """Write a section to another format (SpatialData, or QuPath GeoJSON objects)."""
    if args.format == "geojson":
        return export_geojson(args)
    if not args.spots:
        raise HistoExprError("export --format spatialdata needs --spots")
    pyr, adata = drain(open_steps(args.slide, args.spots, args.counts, None, args.mpp, args.bin_um), progress)
    if pyr is None:
        raise HistoExprError("export needs an image: give --slide (the spot data has none of its own)")
    path = export_section(pyr, adata, args.out, prediction=args.prediction, overwrite=args.overwrite)
    progress(f"SpatialData store written: {path}")
    print(json.dumps({"out": str(path), "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars),
                      "prediction": args.prediction}, indent=2))
    return 0


def export_geojson(args) -> int:
    """QuPath objects: spots or grid cells (detections), a segmentation and drawn regions (annotations)."""
    from ..io.qupath import write_geojson
    from ..segment.annotations import load_regions, sidecar_path
    from ..segment.export import SPOTS_FILE, grid_objects, segmentation_objects_steps, spot_objects

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise HistoExprError(f"{out} exists (give --overwrite)")
    pyr = adata = None
    if args.slide or args.spots:
        pyr, adata = drain(open_steps(args.slide, args.spots, args.counts, None, args.mpp, args.bin_um), progress)
    genes = [g.strip() for g in args.genes.split(",") if g.strip()] if args.genes else None
    objs, counts = [], {}
    if args.regions:
        if args.regions == "sidecar" and pyr is None:
            raise HistoExprError("--regions without a file reads the slide's sidecar: give --slide")
        path = sidecar_path(pyr.path) if args.regions == "sidecar" else Path(args.regions)
        if not path.exists():
            raise HistoExprError(f"no drawn regions at {path}")
        objs += load_regions(path)
        counts["regions"] = len(objs)
    if args.segmentation:
        from ..models.segmenter import Segmenter

        if pyr is None:
            raise HistoExprError("--segmentation needs the slide (--slide)")
        seg = drain(segmentation_objects_steps(Segmenter.load(args.segmentation, args.device), pyr))
        objs += seg
        counts["segmentation_regions"] = len(seg)
    level = args.level
    if level == "auto":
        has_spots = args.prediction and (Path(args.prediction) / SPOTS_FILE).exists()
        level = "spot" if adata is not None or has_spots else "grid" if args.prediction else None
    if level == "grid":
        if not args.prediction:
            raise HistoExprError("--level grid needs --prediction")
        det = grid_objects(args.prediction, genes)
    elif level == "spot":
        det = spot_objects(adata, args.prediction, genes)
    else:
        det = []
    objs += det
    if det:
        counts[f"{level}_detections"] = len(det)
        counts["measurements"] = sorted(det[0].measurements)
    if not objs:
        raise HistoExprError("nothing to export: give --spots, --prediction, --segmentation or --regions")
    write_geojson(out, objs)
    progress(f"QuPath objects written: {out} (File > Import objects in QuPath)")
    print(json.dumps({"out": str(out), **counts}, indent=2))
    return 0


def cmd_demo(args) -> int:
    """Generate the built-in section and show it (or, headless, write a screenshot)."""

    out = Path(args.out)
    progress(f"generating the synthetic section in {out} (cached after the first run)")
    demo = make_demo(out / "section", size=args.size, seed=args.seed)
    progress(f"slide {demo.slide}, spots {demo.spots}")
    model_dir = None
    if args.epochs > 0:
        from ..demo import demo_model

        model_dir = demo_model(out, epochs=args.epochs, progress=progress)
        progress(f"model {model_dir}")
    headless = args.screenshot is not None or not os.environ.get("DISPLAY")
    screenshot = Path(args.screenshot) if args.screenshot else out / "demo.png"

    path = show_demo(demo, screenshot=screenshot if headless else None, gene=args.gene,
                     progress=progress, model_dir=model_dir)
    if path is not None:
        progress(f"screenshot written: {path}")
        print(path)
    return 0


def cmd_train(args) -> int:
    """Train an expression model on the sections of a manifest (or, with ``--encoder``, fit a head on a
    pretrained encoder's frozen features)."""
    if args.encoder:
        return _train_head(args)

    genes = [g.strip() for g in args.gene_list.split(",") if g.strip()] if args.gene_list else None
    cfg = TrainConfig(backbone=args.backbone, n_genes=args.genes, genes=genes, max_aux=args.aux_genes,
                      aux_weight=args.aux_weight, window_um=args.window_um, px=args.px,
                      epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
                      val_section=args.val_section, holdout=args.holdout, ema_epochs=args.ema_epochs,
                      augment=not args.no_augment, stain_norm=args.stain_norm, init=args.init,
                      device=args.device, seed=args.seed, subspot_um=args.subspot_um, pool=args.pool,
                      subspot_smooth=args.subspot_smooth,
                      baselines=not args.no_baselines)
    summary = drain(train_from_manifest_steps(args.manifest, args.out, cfg, resume=args.resume))
    progress(f"model written to {args.out} ({summary_line(summary)})")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


def _train_head(args) -> int:
    genes = [g.strip() for g in args.gene_list.split(",") if g.strip()] if args.gene_list else None
    cfg = HeadConfig(encoder=args.encoder, encoder_name=args.encoder_name, head=args.head, n_genes=args.genes,
                     genes=genes, device=args.device, batch_size=args.batch_size, features_cache=args.features_cache,
                     seed=args.seed, subspot=args.subspot_tokens, finetune_epochs=args.finetune_epochs,
                     finetune_lr=args.finetune_lr)
    summary = drain(train_head_steps(args.manifest, args.out, cfg))
    progress(f"model written to {args.out} ({summary['head']} head on {summary['encoder']}, fitted in "
             f"{summary['head_fit_s']:.1f} s)")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_relink(args) -> int:
    """Point a model folder at its encoder file's new place (the same file: SHA-256 checked)."""
    enc = relink_encoder(args.model, args.encoder)
    progress(f"{args.model}: encoder {enc['name']} now read from {enc['path']}")
    return 0


def cmd_calibrate(args) -> int:
    """Fit a model's uncertainty and distance on its training sections (written into the model folder)."""
    info = drain(calibrate_from_manifest_steps(args.model, args.manifest, args.device))
    if info is None:
        raise HistoExprError("too few spots under tissue in these sections to calibrate the model")
    print(json.dumps({k: info[k] for k in ("section_scores", "far", "n_spots", "sections")}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    """Per-gene Pearson of a model on held-out sections -> report.json/.md + plots."""

    report = drain(evaluate_steps(args.model, args.manifest, args.out, device=args.device,
                                  baselines=not args.no_baselines, mode=args.mode, precision=args.precision))
    print(json.dumps(report["summary"], indent=2))
    return 0


def cmd_predict(args) -> int:
    """Whole-slide prediction of one or many slides (many: on dask.distributed)."""
    from ..models.quantize import check_precision
    from ..models.runtime import resolve_device

    check_precision(args.precision, resolve_device(args.device), args.mode)  # before a cluster starts
    sets = gene_sets_of(args.score, args.model)  # a bad set fails now, not after the slide
    results = predict_many(args.model, args.slide, args.out, scheduler=args.scheduler, device=args.device,
                           stride_um=args.stride_um, batch_size=args.batch_size, workers=args.workers,
                           resume=not args.no_resume, spots=args.spots, progress=progress, mode=args.mode,
                           precision=args.precision, uncertainty=not args.no_uncertainty, scores=sets)
    for sl, res in results.items():
        for name, sc in (res.get("scores") or {}).items():
            r = f", r over the spots {sc['r_spots']:.3f}" if sc.get("r_spots") is not None else ""
            miss = f"; not in the model: {', '.join(sc['missing'])}" if sc["missing"] else ""
            progress(f"{Path(sl).name}: score {name!r} on {len(sc['genes'])} genes, {len(sc['controls'])} "
                     f"controls{r}{miss}")
    print(json.dumps(results, indent=2))
    return 0


def gene_sets_of(args: list[str] | None, model_dir) -> list:
    """The gene sets of ``--score`` arguments, checked against the model's genes (named errors)."""
    if not args:
        return []
    from ..data.gene_sets import parse_set_arg, prepare
    from ..infer.set_scores import reference_means

    sets = [s for a in args for s in parse_set_arg(a)]
    means = reference_means(model_dir)
    for s in sets:
        prepare(s, means)
    return sets


def cmd_segment_train(args) -> int:
    """Train a transcriptome-supervised segmenter on the sections of a manifest."""

    cfg = SegConfig(classes=parse_classes_arg(args.classes), features=args.features, encoder=args.encoder,
                    encoder_name=args.encoder_name, features_cache=args.features_cache,
                    encoder_config={} if args.encoder_epochs is None else {"epochs": args.encoder_epochs},
                    finetune=args.finetune, smooth_um=args.smooth_um,
                    windows_um=tuple(float(w) for w in args.windows_um.split(",")),
                    px=args.px, backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    val_section=args.val_section, device=args.device, seed=args.seed)
    summary = drain(segmenter_steps(read_manifest(args.manifest), args.out, cfg))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_segment_evaluate(args) -> int:
    """Spot-level Dice of a segmenter on held-out sections."""

    report = drain(evaluate_segmenter_steps(args.model, args.manifest, args.out, device=args.device,
                                             stride_um=args.stride_um, mode=args.mode,
                                             precision=args.precision))
    print(json.dumps(report["summary"], indent=2))
    return 0
