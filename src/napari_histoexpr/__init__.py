"""napari-histoexpr: histology–expression exploration in napari.

The headless core (``io``, ``data``, ``metrics``, ...) imports without Qt or torch; widgets live in
``napari_histoexpr.widgets`` and are only imported by napari.
"""

__version__ = "0.1.0"
