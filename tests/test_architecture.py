"""The shape of the package: the headless core imports without Qt or torch, the names and defaults the
CLI and panels offer are the models' and configs' own, and the reader claims only what it reads."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_histoexpr
from layering import LAYERS, violations

PKG = Path(napari_histoexpr.__file__).parent
#: modules that hold torch networks or GUI code by design
TORCH_OR_GUI = ("napari_histoexpr.widgets", "napari_histoexpr.viewer_app", "napari_histoexpr.models.backbones",
                "napari_histoexpr.models.expression", "napari_histoexpr.models.segmenter",
                "napari_histoexpr.models.slide_nets", "napari_histoexpr.models.runtime",
                "napari_histoexpr.models.quantize", "napari_histoexpr.models.vit",
                "napari_histoexpr.models.encoder_files", "napari_histoexpr.models.encoder_net",
                "napari_histoexpr.models.trust_head")


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
    from napari_histoexpr.models.catalog import BACKBONE_NAMES, DEVICES, ENCODER_NAMES
    from napari_histoexpr.models.encoder_files import ENCODERS
    from napari_histoexpr.models.runtime import resolve_device

    assert tuple(BACKBONES) == BACKBONE_NAMES and tuple(ENCODERS) == ENCODER_NAMES
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


def test_layers_one_way_and_one_name_per_module():
    """docs/architecture.md's rules hold for the package as it is."""
    found = violations(PKG)
    assert found == {k: [] for k in found}, found


def _plant(tmp_path, rel: str, code: str):
    import shutil

    root = tmp_path / "napari_histoexpr"
    shutil.copytree(PKG, root, ignore=shutil.ignore_patterns("__pycache__"))
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text((target.read_text() if target.exists() else "") + code)
    return root


def test_a_planted_upward_import_is_found(tmp_path):
    # inside a function, as a contributor dodging a cycle would write it: it still counts
    root = _plant(tmp_path, "io/manifest.py", "\n\ndef _planted():\n    from ..widgets.layers import find_layer\n"
                                              "    return find_layer\n")
    found = violations(root)
    assert found["upward imports"] == ["io.manifest->widgets.layers"]
    assert any({"io", "widgets"} <= set(c) for c in found["package cycles"])  # widgets import io


def test_a_planted_cycle_private_import_and_shared_name_are_found(tmp_path):
    root = _plant(tmp_path, "data/gene_values.py", "\n\nfrom ..datasets.tissue import _hash01  # noqa\n")
    (root / "infer" / "manifest.py").write_text("from ..io.manifest import Section\n")
    (root / "io" / "cyclic.py").write_text("from ..data.gene_values import find_gene\n")
    (root / "data" / "gene_values.py").write_text((root / "data" / "gene_values.py").read_text()
                                                  + "from ..io.cyclic import find_gene as _x  # noqa\n")
    found = violations(root)
    assert "data.gene_values<-_hash01" in [p.removeprefix("napari_histoexpr.") for p in found["private imports"]]
    assert "manifest.py" in found["shared file names"]
    assert ["napari_histoexpr.data.gene_values", "napari_histoexpr.io.cyclic"] in found["module cycles"]
    assert any({"data", "io"} <= set(c) for c in found["package cycles"])
    assert "data.gene_values->datasets.tissue" not in found["upward imports"]  # same layer


def test_every_top_level_name_has_a_layer():
    names = {p.stem if p.suffix == ".py" else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert names <= set().union(*LAYERS), names - set().union(*LAYERS)
