"""Model artifacts: ``MODEL_DIR/model.safetensors`` + ``model.json``, loaded without executing code.

``model.json`` describes everything needed to rebuild the network and use it (architecture,
genes, target transform, input window) and is versioned; weights are plain tensors in safetensors.
Both files are written to temporary names and renamed, so an interrupted save never leaves a
half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelFileError
from ..files import atomic_write_bytes, atomic_write_json

FORMAT = "napari-histoexpr-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


def read_tensors(path: str | os.PathLike) -> dict:
    """Tensors from ``.safetensors`` or a torch file loaded with ``weights_only=True``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except ModelFileError:
        raise
    except Exception as e:  # corrupt, truncated, or a pickle with code in it
        raise ModelFileError(f"cannot load {path.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path.name}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def save_artifact(model_dir: str | os.PathLike, state_dict: dict, meta: dict) -> Path:
    """Write weights + metadata atomically (weights first, metadata last marks completion)."""
    from safetensors.torch import save

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = save(tensors)
    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION,
                weights_sha256=hashlib.sha256(blob).hexdigest())
    atomic_write_bytes(model_dir / WEIGHTS, blob)
    atomic_write_json(model_dir / META, meta)
    return model_dir


def load_artifact(model_dir: str | os.PathLike, kind: str | None = None) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a saved model; named errors for anything wrong with it."""
    from safetensors.torch import load

    model_dir = Path(model_dir)
    if model_dir.is_file():
        model_dir = model_dir.parent
    mj, mw = model_dir / META, model_dir / WEIGHTS
    if not mj.is_file() or not mw.is_file():
        raise ModelFileError(f"{model_dir}: not a model folder (needs {META} and {WEIGHTS})")
    try:
        meta = json.loads(mj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{mj}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{mj}: not a napari-histoexpr model (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{mj}: format version {meta.get('format_version')} is not supported by "
                             f"this version of napari-histoexpr (reads {FORMAT_VERSION})")
    if kind is not None and meta.get("kind") != kind:
        raise ModelFileError(f"{model_dir}: is a {meta.get('kind')!r} model, expected {kind!r}")
    blob = mw.read_bytes()
    if meta.get("weights_sha256") and hashlib.sha256(blob).hexdigest() != meta["weights_sha256"]:
        raise ModelFileError(f"{mw}: checksum mismatch: the weights file is corrupt or was replaced")
    try:
        state = load(blob)
    except Exception as e:
        raise ModelFileError(f"{mw}: corrupt safetensors file ({e})") from e
    return state, meta


@contextmanager
def meta_fields(where: str | os.PathLike):
    """Building a model from its ``model.json``: a missing field or one of the wrong type or value
    becomes a :class:`ModelFileError` naming the folder (not a raw KeyError/TypeError)."""
    try:
        yield
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise ModelFileError(f"{where}: {META} has a missing or malformed field "
                             f"({type(e).__name__}: {str(e)[:200]})") from e


def load_state_strict(module, state: dict, where: str) -> None:
    """``module.load_state_dict`` with a named error listing what does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise ModelFileError(
            f"{where}: weights do not fit the architecture in model.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {shapes[:3]})")
    module.load_state_dict(state)
