"""The on-disk form of a whole-slide prediction (``histoexpr predict``'s ``prediction.zarr``), as far as
readers need it: the group attribute that marks it, and opening it read-only with its description.
Writing it is :mod:`napari_histoexpr.infer.slide`'s job; the layout is documented there and in
docs/formats.md."""

from __future__ import annotations

from pathlib import Path

#: the group attribute holding a prediction's description (genes, grid, slide, model)
PREDICTION_ATTR = "histoexpr_prediction"


def prediction_group_path(path) -> Path:
    """The ``prediction.zarr`` group of an output folder, or ``path`` itself."""
    p = Path(path)
    return p / "prediction.zarr" if (p / "prediction.zarr").is_dir() else p


def is_prediction(path) -> bool:
    """Whether ``path`` (an output folder or its ``prediction.zarr``) holds a prediction."""
    p = prediction_group_path(path)
    if not (p.is_dir() and p.suffix == ".zarr"):
        return False
    try:
        import zarr

        return PREDICTION_ATTR in zarr.open_group(str(p), mode="r").attrs
    except Exception:
        return False


def open_prediction(path):
    """``(group, attrs)``: the prediction's zarr group (read-only) and its description."""
    import zarr

    g = zarr.open_group(str(prediction_group_path(path)), mode="r")
    return g, dict(g.attrs)[PREDICTION_ATTR]
