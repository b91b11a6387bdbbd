"""Sphinx configuration of the API reference (built by scripts/docs.sh, warnings as errors)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
os.environ.setdefault("QT_API", "pyqt6")

project = "napari-histoexpr"
author = "napari-histoexpr developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# the core's third-party types are not documented here: say their names, do not resolve them
autodoc_type_aliases = {}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
default_role = "code"
templates_path = ["_templates"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "napari-histoexpr API"
suppress_warnings = ["autosummary.import_cycle"]
