"""``histoexpr`` command line: batch work over the same headless core as the napari plugin.

Every command prints progress to stderr and exits non-zero with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import HistoExprError
from .commands import (
    cmd_calibrate,
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_info,
    cmd_predict,
    cmd_relink,
    cmd_segment_evaluate,
    cmd_segment_train,
    cmd_train,
)
from .console import add_encoder_options, drain, progress
from .slide_level_commands import add_parsers as add_slide_level_parsers

__all__ = ["build_parser", "drain", "main", "progress"]

from ..data.gene_sets import BUILTIN as BUILTIN_SETS
from ..models.catalog import BACKBONE_NAMES as BACKBONES
from ..models.catalog import DEVICES, HEADS, PRECISIONS
from ..segment.classes import CLASSES_HELP
from ..train.expression_trainer import TrainConfig
from ..train.segmenter_trainer import FEATURES, SegConfig

DEVICE_HELP = f"{'|'.join(DEVICES)} (auto: CUDA, then Apple mps, then CPU)"
MODES = ("dense", "patch")
PRECISION_HELP = ("auto (default): the device's float arithmetic (bf16 on CUDA and on CPUs with native bf16, "
                  "else fp32); int8: dense mode on an x86 CPU, the backbone quantised to int8 and calibrated on "
                  "the slide (~1.7x faster on AVX2 CPUs, maps r >= 0.99 against fp32)")
MODE_HELP = ("dense (default): one backbone pass per region, its feature map pooled per cell/spot; "
             "patch: every window cut and predicted on its own (the exact reference, slower)")


def build_parser() -> argparse.ArgumentParser:
    TC, SC = TrainConfig(), SegConfig()
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
    i.add_argument("--spots", default=None, help="Space Ranger outs folder (Visium or Visium HD), .h5ad, "
                   "ST *_selection.tsv, ST counts TSV or ST pipeline folder")
    i.add_argument("--bin-um", type=float, default=None, help="Visium HD bin size to open: 2, 8 or 16 (default 8)")
    i.add_argument("--counts", default=None, help="legacy ST counts TSV")
    i.add_argument("--clusters", default=None, help="per-spot labels TSV/CSV with a 'label' column")
    i.add_argument("--mpp", type=float, default=None, help="override µm per level-0 pixel")
    i.add_argument("--gene", default=None)
    i.add_argument("--mode", default="log1p", choices=["raw", "log1p", "normalised"])
    i.set_defaults(func=cmd_info)

    x = sub.add_parser("export", help="write a section (slide, spots, measured table, predicted maps) to "
                       "another format: SpatialData, or QuPath objects (GeoJSON)")
    x.add_argument("--format", required=True, choices=["spatialdata", "geojson"],
                   help="spatialdata: a SpatialData .zarr store (napari-spatialdata, squidpy); needs the "
                        "spatialdata package. geojson: QuPath objects (File > Import objects) in level-0 px: "
                        "spots or grid cells as detections with one measurement per gene, segmentation "
                        "and drawn regions as annotations (docs/qupath.md)")
    x.add_argument("--slide", default=None, help="slide (default: a Space Ranger or ST folder's own image)")
    x.add_argument("--spots", default=None, help="spot data, as for info (spatialdata: required; geojson: "
                   "the measured values, one detection per spot)")
    x.add_argument("--counts", default=None, help="legacy ST counts TSV")
    x.add_argument("--mpp", type=float, default=None, help="override µm per level-0 pixel")
    x.add_argument("--bin-um", type=float, default=None, help="Visium HD bin size (default 8)")
    x.add_argument("--prediction", default=None, help="a histoexpr predict output folder to include "
                   "(geojson: its predictions at the spots, from predict --spots, or its grid cells)")
    x.add_argument("--level", default="auto", choices=["auto", "spot", "grid"],
                   help="geojson detections: one per spot, or one per grid cell of --prediction (default: "
                        "spots when there are any)")
    x.add_argument("--genes", default=None, help="geojson: comma-separated genes to write (default: the "
                   "prediction's genes, else the 20 highest-mean measured genes)")
    x.add_argument("--segmentation", default=None, metavar="MODEL",
                   help="geojson: segment the slide with this segmenter and add one annotation per class region")
    x.add_argument("--regions", nargs="?", const="sidecar", default=None, metavar="GEOJSON",
                   help="geojson: add drawn regions (default file: the slide's .histoexpr.geojson sidecar)")
    x.add_argument("--device", default="auto", help=DEVICE_HELP)
    x.add_argument("--out", required=True, help="the store or file to write (section.zarr, section.geojson)")
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=cmd_export)

    t = sub.add_parser("train", help="train an expression model (BrST-Net style) on a section manifest")
    t.add_argument("--manifest", required=True, help="section manifest CSV (see docs/formats.md)")
    t.add_argument("--out", required=True, help="model folder (model.safetensors + model.json)")
    t.add_argument("--genes", type=int, default=TC.n_genes, help=f"number of target genes (top by mean; {TC.n_genes})")
    t.add_argument("--gene-list", default=None, help="comma-separated target genes instead of the top N")
    t.add_argument("--aux-genes", type=int, default=TC.max_aux, help="max auxiliary genes (0 = no aux head)")
    t.add_argument("--aux-weight", type=float, default=TC.aux_weight)
    t.add_argument("--backbone", default=TC.backbone,
                   help=f"CNN backbone: {'|'.join(BACKBONES)} (default {TC.backbone})")
    t.add_argument("--init", default=None, help="backbone weights file (.safetensors or torch tensors)")
    t.add_argument("--epochs", type=int, default=TC.epochs)
    t.add_argument("--batch-size", type=int, default=TC.batch_size)
    t.add_argument("--optimizer", default=TC.optimizer, choices=["adamw", "sgd"])
    t.add_argument("--lr", type=float, default=TC.lr)
    t.add_argument("--weight-decay", type=float, default=TC.weight_decay)
    t.add_argument("--patience", type=int, default=TC.patience,
                   help="early stopping patience (epochs; with --val-section or --holdout)")
    t.add_argument("--val-section", default=None,
                   help="hold this section out for early stopping (default: fit on every section, fixed schedule)")
    t.add_argument("--holdout", action="store_true",
                   help="hold out the last section (15 %% of the spots of a single one) for early stopping")
    t.add_argument("--ema-epochs", type=float, default=TC.ema_epochs,
                   help="without a held-out set the saved model is an exponential moving average of the "
                        f"weights over about this many epochs (0 = the last weights; default {TC.ema_epochs:g})")
    t.add_argument("--window-um", type=float, default=TC.window_um, help=f"patch side in µm (default {TC.window_um:g})")
    t.add_argument("--px", type=int, default=TC.px, help=f"patch side in pixels (default {TC.px})")
    t.add_argument("--subspot-um", type=float, default=None, metavar="UM",
                   help="train a sub-spot model: expression for every UM-µm cell, fitted so the mean of the "
                        "cells inside each spot matches the spot (its patch: the spot plus a cell of context "
                        "on each side, 32 px per cell; --window-um and --px are then ignored)")
    t.add_argument("--subspot-smooth", type=float, default=TC.subspot_smooth, metavar="CELLS",
                   help="a sub-spot cell's value is read through a Gaussian of this sigma over its neighbours, "
                        f"in cells (0 = none; default {TC.subspot_smooth:g}: it removed most cell-to-cell noise)")
    t.add_argument("--pool", type=int, default=TC.pool, metavar="K",
                   help="train on pseudo-spots of K x K neighbouring spots (expression averaged, footprint "
                        "their union), e.g. to judge a sub-spot model on real single spots (default 1)")
    t.add_argument("--stain-norm", action="store_true", help="Macenko-normalise patches")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--no-baselines", action="store_true")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--device", default=TC.device, help=DEVICE_HELP)
    t.add_argument("--seed", type=int, default=TC.seed)
    t.add_argument("--encoder", default=None, metavar="PATH",
                   help="instead of training a CNN, fit a head on the frozen features of this pretrained encoder "
                        "(a weights file or a Hugging Face folder: UNI, Virchow2, H-optimus, Phikon, ...; see "
                        "docs/encoders.md); patches are cut at the encoder's own window and size")
    add_encoder_options(t)
    t.add_argument("--head", default="ridge", choices=HEADS,
                   help="with --encoder: ridge (standardise, PCA 256, ridge with alpha by inner cross-validation; "
                        "the HEST-Benchmark protocol) or mlp (one hidden layer of 256)")
    t.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                   help="with --encoder and the ridge head: then fine-tune the encoder with the head for N epochs "
                        "(the best held-out epoch kept, the frozen start included; the fine-tuned encoder is "
                        "written into --out). Default 0: the encoder stays frozen")
    t.add_argument("--finetune-lr", type=float, default=1e-5,
                   help="peak learning rate of the encoder and head when fine-tuning (one-cycle; default 1e-5)")
    t.add_argument("--subspot-tokens", action="store_true",
                   help="with --encoder: fit the head on the mean of the encoder's patch tokens (a ViT; a CNN's "
                        "feature cells) inside each spot, so maps have one value per token (8 µm for a /16 ViT "
                        "at 0.5 µm/px) while spots are predicted as they were measured")
    t.set_defaults(func=cmd_train)
    rl = sub.add_parser("relink", help="point a model fitted on a pretrained encoder at the encoder file's new place")
    rl.add_argument("--model", required=True, help="model folder")
    rl.add_argument("--encoder", required=True, help="the same encoder file (its SHA-256 is checked) where it is now")
    rl.set_defaults(func=cmd_relink)

    ca = sub.add_parser("calibrate", help="fit a model's uncertainty and out-of-distribution score on its "
                        "training sections (done by train; for models made before it existed)")
    ca.add_argument("--model", required=True, help="expression model folder (trust.json/.safetensors written into it)")
    ca.add_argument("--manifest", required=True, help="the sections the model was trained on")
    ca.add_argument("--device", default="auto", help=DEVICE_HELP)
    ca.set_defaults(func=cmd_calibrate)

    e = sub.add_parser("evaluate", help="per-gene Pearson of a model on held-out sections")
    e.add_argument("--model", required=True)
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True, help="report folder (report.json, report.md, PNGs)")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    e.add_argument("--no-baselines", action="store_true")
    e.add_argument("--mode", default="dense", choices=MODES, help=MODE_HELP)
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
    pr.add_argument("--workers", type=int, default=None,
                    help="reader threads per slide (default 1 on CPU, where more only oversubscribe the "
                         "cores the model uses; 4 on a GPU)")
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    pr.add_argument("--scheduler", default=None,
                    help="dask.distributed scheduler address (default: a LocalCluster, one worker per GPU)")
    pr.add_argument("--no-resume", action="store_true", help="start again instead of continuing")
    pr.add_argument("--mode", default="dense", choices=MODES, help=MODE_HELP)
    pr.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    pr.add_argument("--no-uncertainty", action="store_true",
                    help="do not write a calibrated model's uncertainty and distance maps")
    pr.add_argument("--score", action="append", default=None, metavar="SET",
                    help="add a gene-set score map (scanpy score_genes: set mean minus matched controls): "
                         "NAME=G1,G2,..., a GMT or text file of sets, or a built-in set ("
                         + ", ".join(f"'{k}'" for k in BUILTIN_SETS) + "); repeat for several; with --spots "
                         "the r of predicted vs measured scores is reported")
    pr.set_defaults(func=cmd_predict)

    sg = sub.add_parser("segment", help="transcriptome-supervised morphology segmenter")
    ssub = sg.add_subparsers(dest="segment_command", required=True)
    st = ssub.add_parser("train", help="train on a section manifest")
    st.add_argument("--manifest", required=True)
    st.add_argument("--classes", required=True,
                    help=CLASSES_HELP)
    st.add_argument("--out", required=True)
    st.add_argument("--features", default=SC.features, choices=FEATURES,
                    help="expression (default): the backbone of an expression model (--encoder, else one is "
                         "trained on the same sections first, into OUT/encoder) with a class head; scratch: "
                         "patch classifiers trained on the classes alone (--windows-um, --px, --backbone)")
    st.add_argument("--encoder", default=None, metavar="PATH",
                    help="an expression model folder whose backbone gives the features, or a pretrained encoder "
                         "(weights file or Hugging Face folder, or a model folder of a head fitted on one): its "
                         "frozen features are cached and only the class head is fitted (seconds)")
    add_encoder_options(st)
    st.add_argument("--encoder-epochs", type=int, default=None,
                    help="epochs of the expression model trained when no --encoder is given "
                         f"(default: histoexpr train's, {TC.epochs})")
    st.add_argument("--finetune", action="store_true",
                    help="expression features: also fine-tune the backbone (--epochs) instead of keeping it frozen")
    st.add_argument("--smooth-um", type=float, default=SC.smooth_um,
                    help="average class probabilities over a square neighbourhood this wide (µm) before "
                         f"taking each cell's class (0: none; default {SC.smooth_um:g})")
    st.add_argument("--windows-um", default=",".join(f"{w:g}" for w in SC.windows_um),
                    help="scratch: patch sizes in µm (comma-separated)")
    st.add_argument("--px", type=int, default=SC.px)
    st.add_argument("--backbone", default=SC.backbone, help=f"CNN backbone: {'|'.join(BACKBONES)}")
    st.add_argument("--epochs", type=int, default=SC.epochs)
    st.add_argument("--batch-size", type=int, default=SC.batch_size)
    st.add_argument("--lr", type=float, default=SC.lr)
    st.add_argument("--val-section", default=None)
    st.add_argument("--device", default=SC.device, help=DEVICE_HELP)
    st.add_argument("--seed", type=int, default=SC.seed)
    st.set_defaults(func=cmd_segment_train)
    se = ssub.add_parser("evaluate", help="spot-level Dice on held-out sections")
    se.add_argument("--model", required=True)
    se.add_argument("--manifest", required=True)
    se.add_argument("--out", required=True)
    se.add_argument("--stride-um", type=float, default=None)
    se.add_argument("--mode", default="dense", choices=MODES, help=MODE_HELP)
    se.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    se.add_argument("--device", default="auto", help=DEVICE_HELP)
    se.set_defaults(func=cmd_segment_evaluate)

    add_slide_level_parsers(sub)
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
