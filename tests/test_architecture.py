"""The shape of the package: the headless core imports without Qt or torch, the names and defaults the
CLI and panels offer are the models' and configs' own, and the reader claims only what it reads."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_histoexpr

PKG = Path(napari_histoexpr.__file__).parent
#: modules that hold torch networks or GUI code by design
TORCH_OR_GUI = ("napari_histoexpr.widgets", "napari_histoexpr.viewer_app", "napari_histoexpr.models.backbones",
                "napari_histoexpr.models.expression", "napari_histoexpr.models.segmenter",
                "napari_histoexpr.models.slide_nets", "napari_histoexpr.models.runtime",
                "napari_histoexpr.models.quantize")


def core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages([str(PKG)], "napari_histoexpr.")]
    return sorted(n for n in names if not n.startswith(TORCH_OR_GUI))


def test_core_imports_without_qt_or_torch():
    mods = core_modules()
    assert "napari_histoexpr.cli" in mods and "napari_histoexpr.infer.region" in mods and len(mods) > 40
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('torch', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'napari', 'vispy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_help_needs_no_torch():
    code = ("import sys\nfrom napari_histoexpr.cli import build_parser\nbuild_parser().format_help()\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_offered_names_match_the_models():
    from napari_histoexpr.models.backbones import BACKBONES
    from napari_histoexpr.models.catalog import BACKBONE_NAMES, DEVICES
    from napari_histoexpr.models.runtime import resolve_device

    assert tuple(BACKBONES) == BACKBONE_NAMES
    assert str(resolve_device("cpu")) == "cpu"
    for dev in DEVICES[1:]:
        try:
            resolve_device(dev)
        except napari_histoexpr.errors.HistoExprError as e:
            assert dev in str(e)  # an absent accelerator is a named error, never a raw torch one


def test_cli_defaults_are_the_config_defaults():
    from napari_histoexpr.cli import build_parser
    from napari_histoexpr.train.expression_trainer import TrainConfig
    from napari_histoexpr.train.segmenter_trainer import SegConfig

    t = build_parser().parse_args(["train", "--manifest", "m.csv", "--out", "o"])
    c = TrainConfig()
    assert (t.genes, t.epochs, t.lr, t.batch_size, t.window_um, t.px, t.backbone, t.aux_genes) == \
        (c.n_genes, c.epochs, c.lr, c.batch_size, c.window_um, c.px, c.backbone, c.max_aux)
    s = build_parser().parse_args(["segment", "train", "--manifest", "m.csv", "--classes", "clusters", "--out", "o"])
    d = SegConfig()
    assert (tuple(float(w) for w in s.windows_um.split(",")), s.px, s.epochs, s.lr, s.features, s.encoder,
            s.finetune) == (d.windows_um, d.px, d.epochs, d.lr, d.features, d.encoder, d.finetune)


def test_panel_defaults_are_the_config_defaults(make_napari_viewer):
    from napari_histoexpr.train.expression_trainer import TrainConfig
    from napari_histoexpr.train.segmenter_trainer import SegConfig
    from napari_histoexpr.widgets.segmenter_panel import SegmenterPanel
    from napari_histoexpr.widgets.train_expression import TrainExpressionWidget

    viewer = make_napari_viewer()
    tp, c = TrainExpressionWidget(viewer), TrainConfig()
    got = tp.config()
    assert (got.n_genes, got.epochs, got.lr, got.batch_size, got.window_um, got.px, got.backbone, got.max_aux) == \
        (c.n_genes, c.epochs, c.lr, c.batch_size, c.window_um, c.px, c.backbone, c.max_aux)
    sp, d = SegmenterPanel(viewer), SegConfig()
    got = sp.config()
    assert (got.windows_um, got.px, got.epochs, got.features, got.encoder, got.finetune) == \
        (d.windows_um, d.px, d.epochs, d.features, d.encoder, d.finetune)
    with pytest.raises(TypeError, match="no setting"):
        tp.configure(not_a_setting=1)


def test_reader_claims_only_what_it_reads():
    import yaml

    from napari_histoexpr.io.slides import SLIDE_SUFFIXES

    manifest = yaml.safe_load((PKG / "napari.yaml").read_text())
    reader = manifest["contributions"]["readers"][0]
    patterns = set(reader["filename_patterns"])
    assert "*" not in patterns and reader["accepts_directories"]
    assert {f"*{s}" for s in SLIDE_SUFFIXES if s.count(".") == 1} <= patterns
