"""Loading any slide-level model folder by the kind its model.json names."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelFileError
from ..models.artifact import META


def load_slide_model(model_dir: str | os.PathLike, device: str = "auto"):
    """A HE2RNA, G-HANet or multi-task model, by the kind its model.json names."""

    p = Path(model_dir)
    p = p.parent if p.is_file() else p
    try:
        kind = json.loads((p / META).read_text()).get("kind")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{p}: not a model folder ({e})") from e
    if kind == "he2rna":
        from .he2rna import HE2RNA
        return HE2RNA.load(p, device)
    if kind == "ghanet":
        from .ghanet import GHANet
        return GHANet.load(p, device)
    if kind == "mtm":
        from .multitask import MultiTask
        return MultiTask.load(p, device)
    raise ModelFileError(f"{p}: a {kind!r} model is not a slide-level model (he2rna, ghanet, mtm)")
