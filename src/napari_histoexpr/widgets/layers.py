"""Building and updating napari layers from core objects (the only place layers are touched)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def find_layer(viewer, key: str):
    """The layer this plugin made for ``key`` (stored in ``metadata['histoexpr']['key']``)."""
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}) or {}
        if meta.get("histoexpr", {}).get("key") == key:
            return layer
    return None


def upsert_layer(viewer, layer_data: tuple, key: str):
    """Add a layer from a LayerData tuple, or update the existing one made for ``key`` in place.

    Points layers are updated in place (data, features, colours, size), so user settings such as
    visibility and position in the layer list survive. Images whose pyramid changed are replaced at
    the same index.
    """
    data, kwargs, kind = layer_data
    kwargs = dict(kwargs)
    meta = dict(kwargs.pop("metadata", {}) or {})
    meta.setdefault("histoexpr", {})
    meta["histoexpr"] = dict(meta["histoexpr"], key=key)
    existing = find_layer(viewer, key)
    if existing is not None and kind == "points" and existing._type_string == "points":
        update_points(existing, data, kwargs)
        existing.metadata = meta
        return existing
    if existing is not None and kind == "image" and existing._type_string == "image" \
            and _same_image_geometry(existing, data, kwargs):
        existing.data = data
        for attr in ("scale", "translate", "name"):
            if attr in kwargs:
                setattr(existing, attr, kwargs[attr])
        existing.metadata = meta
        return existing
    index = None
    if existing is not None:
        index = viewer.layers.index(existing)
        viewer.layers.remove(existing)
    add = getattr(viewer, f"add_{kind}")
    layer = add(data, metadata=meta, **kwargs)
    if index is not None:
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


def _same_image_geometry(layer, data, kwargs) -> bool:
    new_levels = data if isinstance(data, list) else [data]
    old_levels = layer.data if layer.multiscale else [layer.data]
    if len(new_levels) != len(old_levels) or bool(kwargs.get("rgb")) != bool(layer.rgb):
        return False
    return all(tuple(a.shape) == tuple(b.shape) for a, b in zip(new_levels, old_levels))


def update_points(layer, data: np.ndarray, kwargs: dict) -> None:
    """Replace a Points layer's points, features and colouring in place."""
    features = kwargs.get("features")
    if features is None:
        features = pd.DataFrame(index=range(len(data)))
    if len(layer.data) != len(data) or not np.array_equal(layer.data, data):
        layer.selected_data = set()
        layer.data = np.asarray(data)
    layer.features = features
    if "size" in kwargs:
        layer.size = kwargs["size"]
    face = kwargs.get("face_color")
    if face is not None and isinstance(face, str) and face in features.columns:
        layer.face_colormap = kwargs.get("face_colormap", "viridis")
        layer.face_color = face
        if kwargs.get("face_contrast_limits") is not None:
            layer.face_contrast_limits = kwargs["face_contrast_limits"]
        layer.refresh_colors(update_color_mapping=False)
    elif face is not None:
        layer.face_color = face
    if "name" in kwargs:
        layer.name = kwargs["name"]
    layer.refresh()
