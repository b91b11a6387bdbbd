"""Calibrating an expression model's uncertainty and distance (:mod:`napari_histoexpr.models.trust`) on
its training spots: run after every training (``histoexpr train``, heads on encoders, fine-tuning) and on
its own for models made before it existed (``histoexpr calibrate MODEL --manifest TRAINING``)."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..data.section_data import SectionData, prepare_sections_steps
from ..errors import TrainingError
from ..io.manifest import as_sections
from ..models.trust import MIN_SPOTS, fit_trust, save_trust, spatial_groups


def head_outputs(model, F: np.ndarray) -> np.ndarray:
    """The model's predictions (log1p) from its pooled features ``F`` (its head alone)."""
    import torch

    with torch.inference_mode():
        y = np.concatenate([model.net.head(torch.from_numpy(F[i:i + 4096]).to(model.device)).float().cpu().numpy()
                            for i in range(0, len(F), 4096)])
    return model.scale_output(y)


def runs_dense(model) -> bool:
    """Whether the model's maps and spot values come from dense feature maps (a CNN at spot level), so
    that its calibration reads features that way too."""
    branches = model.dense_branches()
    return (model.subspot is None and len(branches) == 1 and branches[0].exact
            and getattr(model.net, "fully_convolutional", True))


def dense_features_steps(model, sources, sections: list[SectionData]) -> Generator[dict, None, list]:
    """The pooled features at the spots of ``sections`` read from the dense feature map of each
    section's slide (``sources``: their manifest entries, in the same order)."""
    from ..io.sections import load_section

    feats = []
    for src, s in zip(sources, sections):
        yield {"stage": "calibrate", "msg": f"features of {s.name} for the calibration"}
        pyr, _ = load_section(src)
        try:
            feats.append(model.features_centres_dense(pyr, s.xy))
        finally:
            pyr.close()
    return feats


def calibrate_steps(model, model_dir: str | os.PathLike, sections: list[SectionData],
                    features: list[np.ndarray] | None = None, sources=None) -> Generator[dict, None, dict | None]:
    """Fit the trust head of ``model`` (an :class:`~napari_histoexpr.models.expression.ExpressionModel`)
    on the spots of ``sections`` and write it into ``model_dir``. The features are read as the model's
    maps read them: from the dense feature map of each slide when the model runs densely and the
    sections' manifest entries (``sources``) are given, else from the spots' patches (``features``:
    those per section, when already computed). Yields progress; returns ``trust.json``'s content, or
    ``None`` (and says so) when there are too few spots to calibrate."""
    missing = [g for g in model.genes if g not in sections[0].genes] if sections else model.genes
    if missing:
        raise TrainingError(f"the calibration sections lack {len(missing)} of the model's genes "
                            f"(e.g. {missing[0]}); calibrate on the sections the model was trained on")
    n = sum(len(s) for s in sections)
    if n < MIN_SPOTS:
        yield {"stage": "calibrate", "msg": f"{n} spots are too few to calibrate the uncertainty (at least "
                                            f"{MIN_SPOTS}); the model has no uncertainty layers"}
        return None
    yield {"stage": "calibrate", "msg": f"calibrating the uncertainty on {n} spots of {len(sections)} section(s)"}
    dense = sources is not None and runs_dense(model)
    if dense:
        features = yield from dense_features_steps(model, sources, sections)
    elif features is None:
        features = [model.predict(s.patches, features=True) for s in sections]
    F = np.concatenate(features).astype(np.float32)
    Y = np.concatenate([s.select(model.genes) for s in sections])
    if len(sections) > 1:
        groups = np.concatenate([[i] * len(s) for i, s in enumerate(sections)])
    else:
        groups = spatial_groups(sections[0].xy)
    tensors, info = fit_trust(F, head_outputs(model, F), Y, groups)
    info = dict(info, sections=[s.name for s in sections], features="dense" if dense else "patches")
    save_trust(model_dir, tensors, info)
    yield {"stage": "calibrate", "msg": f"uncertainty calibrated: training sections score "
                                        f"{min(info['section_scores']):.2f}-{max(info['section_scores']):.2f}"}
    return info


def calibrate_from_manifest_steps(model_dir: str | os.PathLike, manifest, device: str = "auto"
                                  ) -> Generator[dict, None, dict]:
    """Open ``manifest``'s sections, cut their spots as the model reads them, calibrate (CLI)."""
    from ..models.expression import ExpressionModel

    model = ExpressionModel.load(model_dir, device)
    cfg = model.meta.get("training", {}).get("config", {})
    sources = as_sections(manifest)
    data, _, _ = yield from prepare_sections_steps(sources, model.window_um, model.px,
                                                   cfg.get("min_tissue", 0.3), bool(model.meta.get("stain_norm")))
    return (yield from calibrate_steps(model, Path(model_dir), data, sources=sources))
