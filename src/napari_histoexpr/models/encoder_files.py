"""Pretrained pathology encoders from the user's own weight files, in the layouts they are published in.

An encoder is an architecture, a weights file and a preprocessing: the input size in px, the slide
resolution it was trained at (µm per px), the normalisation mean/std, and which tokens make the
embedding. :data:`ENCODERS` lists the known ones. :func:`load_encoder` reads a file or folder without
executing code (safetensors, or ``torch.load(weights_only=True)``), recognises its layout from tensor
names and shapes (and a Hugging Face folder's ``config.json``), matches it against the catalogue, and
returns an :class:`Encoder`. Where the shapes fit several entries (e.g. H-optimus-0 and H-optimus-1),
the user names one and the file is checked against it. Every failure is an
:class:`~napari_histoexpr.errors.EncoderFileError` saying what was expected.

Layouts:

- ``timm-vit``: timm's ``VisionTransformer`` state dict (UNI, UNI2-h, Virchow2, H-optimus-0/1,
  Prov-GigaPath, DINO ViT-S/16 and ViT-S/8), run by :class:`~napari_histoexpr.models.vit.ViT`;
- ``hf-vit`` / ``hf-dinov2``: a Hugging Face folder (``config.json`` + ``model.safetensors``) of a
  ``ViTModel`` (Phikon) or ``Dinov2Model`` (Phikon-v2), converted to the same module;
- ``torchvision-resnet``: a torchvision ResNet state dict, bare or with ``model.`` / ``module.`` /
  ``backbone.`` / ``encoder.`` prefixes (Lightning's ``state_dict``), run by the project's own ResNet;
- ``open_clip-coca``: a CoCa model's checkpoint in open_clip's layout (CONCH's ``pytorch_model.bin``):
  its image tower ``visual.trunk`` (a timm ViT) + ``visual.attn_pool_contrast`` + ``visual.ln_contrast``
  is run by :class:`~napari_histoexpr.models.vit.CoCaVisual`; the text tower is not read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import EncoderFileError
from .vit import CoCaVisual, ViT, ViTSpec, spec_from_state

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class EncoderKind:
    """A known encoder: its architecture and preprocessing, and where its weights come from."""

    name: str
    layout: str  # timm-vit, hf-vit, hf-dinov2, torchvision-resnet, open_clip-coca
    px: int = 224  # input px
    um_per_px: float = 0.5  # the slide resolution it was trained at (20x)
    mean: tuple = IMAGENET[0]
    std: tuple = IMAGENET[1]
    vit: ViTSpec | None = None  # timm-vit, open_clip-coca: the (trunk's) architecture; hf: from config.json
    pooled_dim: int | None = None  # open_clip-coca: the attentional pooler's width (the embedding)
    backbone: str | None = None  # torchvision-resnet: resnet18 / resnet50
    tokens: str = "class token"
    source: str = ""
    license: str = ""
    file: str = ""  # the exact file the product expects

    @property
    def window_um(self) -> float:
        return self.px * self.um_per_px

    @property
    def dim(self) -> int | None:
        return self.pooled_dim or (self.vit.embed_dim if self.vit else None)


def _vit(dim, depth, heads, patch, hidden, **kw) -> ViTSpec:
    return ViTSpec(dim=dim, depth=depth, heads=heads, patch=patch, img=224, hidden=hidden, **kw)


#: the encoders this product knows, by name (docs/encoders.md says more of each)
ENCODERS: dict[str, EncoderKind] = {k.name: k for k in (
    EncoderKind("uni", "timm-vit", vit=_vit(1024, 24, 16, 16, 4096, layerscale=True),
                source="MahmoodLab/UNI (Hugging Face, gated)", license="CC-BY-NC-ND 4.0, non-commercial research",
                file="pytorch_model.bin (timm state dict, ViT-L/16, LayerScale)"),
    EncoderKind("uni2-h", "timm-vit", vit=_vit(1536, 24, 24, 14, 8192, swiglu=True, registers=8, layerscale=True,
                                              pos_on_prefix=False),
                source="MahmoodLab/UNI2-h (Hugging Face, gated)", license="CC-BY-NC-ND 4.0, non-commercial research",
                file="pytorch_model.bin (timm state dict, ViT-H/14, SwiGLU, 8 registers)"),
    EncoderKind("virchow2", "timm-vit", vit=_vit(1280, 32, 16, 14, 6832, swiglu=True, registers=4, layerscale=True,
                                                pool="cls+mean"),
                tokens="class token + mean of the patch tokens (2560)",
                source="paige-ai/Virchow2 (Hugging Face, gated)", license="CC-BY-NC-ND 4.0, non-commercial research",
                file="pytorch_model.bin or model.safetensors (timm state dict, ViT-H/14, SwiGLU, 4 registers)"),
    EncoderKind("h-optimus-0", "timm-vit", mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
                vit=_vit(1536, 40, 24, 14, 8192, swiglu=True, registers=4, layerscale=True, pos_on_prefix=False),
                source="bioptimus/H-optimus-0 (Hugging Face)", license="Apache 2.0",
                file="pytorch_model.bin or model.safetensors (timm state dict, ViT-g/14, 4 registers)"),
    EncoderKind("h-optimus-1", "timm-vit", mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
                vit=_vit(1536, 40, 24, 14, 8192, swiglu=True, registers=4, layerscale=True, pos_on_prefix=False),
                source="bioptimus/H-optimus-1 (Hugging Face, gated)", license="non-commercial (see its model card)",
                file="pytorch_model.bin or model.safetensors (timm state dict, ViT-g/14, 4 registers)"),
    EncoderKind("gigapath", "timm-vit", vit=_vit(1536, 40, 24, 16, 8192, swiglu=True, layerscale=True),
                source="prov-gigapath/prov-gigapath tile encoder (Hugging Face, gated)", license="Apache 2.0",
                file="pytorch_model.bin (timm state dict, ViT-g/16 tile encoder)"),
    EncoderKind("dino-vit-s16", "timm-vit", mean=(0.70322989, 0.53606487, 0.66096631),
                std=(0.21716536, 0.26081574, 0.20723464), vit=_vit(384, 12, 6, 16, 1536),
                source="Lunit benchmark-ssl-pathology (DINO ViT-S/16)", license="see its repository",
                file="a .pth / .safetensors timm state dict (ViT-S/16)"),
    EncoderKind("dino-vit-s8", "timm-vit", mean=(0.70322989, 0.53606487, 0.66096631),
                std=(0.21716536, 0.26081574, 0.20723464), vit=_vit(384, 12, 6, 8, 1536),
                source="Lunit benchmark-ssl-pathology (DINO ViT-S/8)", license="see its repository",
                file="a .pth / .safetensors timm state dict (ViT-S/8)"),
    EncoderKind("conch", "open_clip-coca", px=448, um_per_px=0.25, mean=OPENAI_CLIP[0], std=OPENAI_CLIP[1],
                vit=ViTSpec(dim=768, depth=12, heads=12, patch=16, img=448, hidden=3072), pooled_dim=512,
                tokens="attentional pool of every token (512; encode_image(proj_contrast=False, normalize=False))",
                source="MahmoodLab/CONCH (Hugging Face, gated)", license="CC-BY-NC-ND 4.0, non-commercial research",
                file="pytorch_model.bin (the open_clip CoCa checkpoint; only its visual.* tensors are read)"),
    EncoderKind("phikon", "hf-vit", source="owkin/phikon (Hugging Face)", license="Owkin non-commercial",
                file="a folder: config.json + model.safetensors (transformers ViTModel, ViT-B/16)"),
    EncoderKind("phikon-v2", "hf-dinov2", source="owkin/phikon-v2 (Hugging Face)", license="Owkin non-commercial",
                file="a folder: config.json + model.safetensors (transformers Dinov2Model, ViT-L)"),
    EncoderKind("resnet50-imagenet", "torchvision-resnet", backbone="resnet50", tokens="global average pool (2048)",
                source="torchvision ResNet50_Weights.IMAGENET1K_V2 (HEST-Benchmark's baseline)", license="BSD-3-Clause",
                file="resnet50-*.pth (torchvision state dict)"),
    EncoderKind("resnet18-ssl", "torchvision-resnet", backbone="resnet18", tokens="global average pool (512)",
                source="self-supervised ResNet-18 checkpoints (e.g. Ciga et al., Lightning state_dict)",
                license="see its repository",
                file="a .ckpt / .pth / .safetensors state dict, keys optionally under model. / module. / backbone."),
)}

_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.", "vit.", "dinov2.")


@dataclass
class Encoder:
    """A loaded encoder: ``net`` maps a normalised ``(N, 3, px, px)`` batch to ``(N, dim)`` embeddings."""

    kind: EncoderKind
    net: nn.Module
    path: Path
    sha256: str
    dim: int
    info: dict = field(default_factory=dict)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in [0, 1] -> the encoder's normalised input."""
        mean = torch.tensor(self.kind.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.kind.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.kind.px or x.shape[-2] != self.kind.px:
            raise EncoderFileError(f"{self.kind.name} takes {self.kind.px} x {self.kind.px} px inputs, "
                                   f"got {x.shape[-2]} x {x.shape[-1]}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``x`` (``(N, 3, px, px)`` in [0, 1])."""
        self._check(x)
        return self.net(self.normalise(x))

    @property
    def cells(self) -> int:
        """Side of :meth:`cell_map`'s grid: a ViT's patch tokens per side, a CNN's feature cells (32 px)."""
        patch = getattr(getattr(self.net, "spec", None), "patch", None)
        return self.kind.px // (patch or 32)

    @property
    def cell_dim(self) -> int:
        """Channels of :meth:`cell_map` (a ViT's token width; Virchow2's embedding is twice that)."""
        spec = getattr(self.net, "spec", None)
        return spec.dim if spec is not None else self.dim

    def cell_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, dim, cells, cells)``: a ViT's patch tokens, or a CNN's last feature map, of ``x``."""
        self._check(x)
        return cell_map_of(self.net, self.normalise(x))


def cell_map_of(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """An encoder network's cell map of a normalised batch: a ViT's patch tokens, a CNN's feature map."""
    return net.patch_tokens(z) if hasattr(net, "patch_tokens") else net.feature_map(z)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a weights file (a folder: of its config.json and weights together)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name in _FOLDER_FILES)
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


_FOLDER_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def read_state(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """``(tensors, config)`` of a weights file or a Hugging Face folder, read without executing code;
    the keys of a checkpoint's nested ``state_dict`` / ``model`` and common prefixes are unwrapped."""
    path = Path(path)
    config = None
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise EncoderFileError(f"{path}: a folder encoder needs config.json beside its weights "
                                   "(a Hugging Face model folder)")
        try:
            config = json.loads(cfg.read_text())
        except (OSError, ValueError) as e:
            raise EncoderFileError(f"{cfg}: unreadable config.json ({e})") from e
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise EncoderFileError(f"{path}: no model.safetensors or pytorch_model.bin in the folder")
        path = weights
    elif not path.is_file():
        raise EncoderFileError(f"encoder file not found: {path}")
    state = _read_tensors(path)
    for key in ("state_dict", "model", "teacher", "student"):
        if isinstance(state.get(key), dict) and not any(torch.is_tensor(v) for v in state.values()):
            state = state[key]
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not state:
        raise EncoderFileError(f"{path}: holds no tensors")
    return _strip_prefixes(state), config


def _read_tensors(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise EncoderFileError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from e
    import pickle
    import zipfile

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise EncoderFileError(f"{path}: this file needs Python code to load (a pickled model, not only tensors); "
                               "it is not loaded. Save its state_dict (or convert it to safetensors) and "
                               f"point at that ({str(e).splitlines()[0][:160]})") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise EncoderFileError(f"{path}: not a readable torch weights file, truncated or corrupt "
                               f"({type(e).__name__}: {str(e)[:160]})") from e
    if not isinstance(obj, dict):
        raise EncoderFileError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _strip_prefixes(state: dict) -> dict:
    """Drop a prefix every key shares (``module.``, ``model.``, ``backbone.``, ...), repeatedly; keys
    outside the network (a classifier or projection head beside a ``backbone.``) are dropped with it."""
    while True:
        for pre in _PREFIXES:
            inside = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
            if inside and (len(inside) == len(state) or _looks_like_network(inside)):
                state = inside
                break
        else:
            return state


def _looks_like_network(state: dict) -> bool:
    return any(k in state for k in ("patch_embed.proj.weight", "conv1.weight", "embeddings.cls_token",
                                    "embeddings.patch_embeddings.projection.weight"))


def layout_of(state: dict, config: dict | None) -> str:
    """The layout a state dict is in (a named error if none is known)."""
    if config is not None:
        kind = config.get("model_type")
        if kind in ("vit", "dinov2"):
            return f"hf-{kind}"
        raise EncoderFileError(f"config.json says model_type {kind!r}; known Hugging Face encoders are 'vit' "
                               "(Phikon) and 'dinov2' (Phikon-v2)")
    if "visual.trunk.patch_embed.proj.weight" in state and "visual.attn_pool_contrast.query" in state:
        return "open_clip-coca"
    if "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state:
        return "timm-vit"
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "torchvision-resnet"
    sample = ", ".join(sorted(state)[:4])
    raise EncoderFileError(f"no known encoder layout in this file (its first tensors: {sample}); expected a timm "
                           "ViT (patch_embed.proj.weight, blocks.N...), a torchvision ResNet (conv1.weight, "
                           "layer1...), an open_clip CoCa checkpoint (visual.trunk..., CONCH) or a Hugging Face "
                           "folder (config.json + model.safetensors)")


def _vit_shapes(spec: ViTSpec) -> dict:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ViT(spec).state_dict().items()}


#: the prefix of a CoCa checkpoint's image tower, and of its trunk (a timm ViT)
_VISUAL, _TRUNK = "visual.", "visual.trunk."


def _trunk(state: dict) -> dict:
    """The timm-layout ViT of a state dict: itself, or a CoCa checkpoint's ``visual.trunk``."""
    if _TRUNK + "patch_embed.proj.weight" not in state:
        return state
    return {k[len(_TRUNK):]: v for k, v in state.items() if k.startswith(_TRUNK)}


def _coca_shapes(kind: "EncoderKind") -> dict:
    with torch.device("meta"):
        net = CoCaVisual(kind.vit, kind.pooled_dim)
        return {_VISUAL + k: tuple(v.shape) for k, v in net.state_dict().items()}


def matching_kinds(state: dict, config: dict | None = None) -> list[EncoderKind]:
    """The catalogue entries whose architecture fits the file's tensors exactly."""
    layout = layout_of(state, config)
    if layout.startswith("hf-"):
        return [k for k in ENCODERS.values() if k.layout == layout]
    if layout == "torchvision-resnet":
        from .backbones import build_backbone

        out = []
        for k in (k for k in ENCODERS.values() if k.layout == layout):
            own = build_backbone(k.backbone).state_dict()
            if all(n in state and tuple(state[n].shape) == tuple(v.shape) for n, v in own.items()
                   if not n.endswith("num_batches_tracked")):
                out.append(k)
        return out
    pos = _TRUNK + "pos_embed" if layout == "open_clip-coca" else "pos_embed"
    shapes = {k: tuple(v.shape) for k, v in state.items() if k != pos}

    def fits(kind):  # the position embeddings may cover the prefix tokens or not, at any grid
        own = _coca_shapes(kind) if layout == "open_clip-coca" else _vit_shapes(kind.vit)
        want = {k: v for k, v in own.items() if k != pos}
        return want.items() <= shapes.items() and pos in state
    return [k for k in ENCODERS.values() if k.layout == layout and fits(k)]


def load_encoder(path: str | os.PathLike, name: str | None = None, device="cpu") -> Encoder:
    """Load the encoder in ``path`` (a file, or a Hugging Face folder). ``name`` (one of
    :data:`ENCODERS`) is needed where the shapes fit several known encoders, and is checked against
    the file; ``name=None`` with a timm ViT that fits no entry loads it as a generic ViT (class token,
    ImageNet normalisation, 224 px at 0.5 µm/px) and says so in ``info``."""
    path = Path(path)
    state, config = read_state(path)
    fits = matching_kinds(state, config)
    if name is not None:
        if name not in ENCODERS:
            raise EncoderFileError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
        kind = ENCODERS[name]
        if kind not in fits:
            got = ", ".join(k.name for k in fits) or "none of the known encoders"
            raise EncoderFileError(f"{path} does not hold {name} ({kind.file}); its tensors fit {got}")
    elif len(fits) == 1:
        kind = fits[0]
    elif len({(k.layout, k.vit, k.backbone, k.mean, k.std) for k in fits}) == 1 and fits:
        kind = fits[0]  # the same architecture and preprocessing (H-optimus-0 / -1): the first name
    elif fits:
        raise EncoderFileError(f"{path} fits several encoders ({', '.join(k.name for k in fits)}): name one")
    else:
        kind = None
    info = {}
    if kind is None and layout_of(state, config) == "timm-vit":
        spec = spec_from_state(state)
        kind = EncoderKind("vit", "timm-vit", vit=spec, source="a ViT file of no known encoder")
        info["note"] = (f"not a known encoder: loaded as a ViT-{spec.dim}/{spec.patch} with {spec.heads} heads "
                        "(width / 64), class token, ImageNet normalisation; name it if it is one")
    elif kind is None and layout_of(state, config) == "open_clip-coca":
        spec = spec_from_state(_trunk(state))
        pooled = int(state[_VISUAL + "attn_pool_contrast.query"].shape[-1])
        kind = replace(ENCODERS["conch"], name="coca", vit=spec, pooled_dim=pooled, px=spec.img,
                       um_per_px=ENCODERS["conch"].window_um / spec.img, source="a CoCa file of no known encoder")
        info["note"] = (f"not CONCH's size: loaded as a CoCa image tower (ViT-{spec.dim}/{spec.patch}, {pooled}-wide "
                        f"pooler, {spec.img} px for CONCH's {ENCODERS['conch'].window_um:g} µm, CLIP normalisation)")
    elif kind is None:
        layout = layout_of(state, config)
        known = ", ".join(k.name for k in ENCODERS.values() if k.layout == layout)
        raise EncoderFileError(f"{path}: a {layout} file that fits none of the known encoders ({known})")
    if kind.layout in ("timm-vit", "open_clip-coca"):  # the file says how its position embeddings are laid out
        found = spec_from_state(_trunk(state), heads=kind.vit.heads, swiglu=kind.vit.swiglu)
        kind = replace(kind, vit=replace(kind.vit, pos_on_prefix=found.pos_on_prefix, img=found.img))
    net, dim = _build(kind, state, config, path)
    net = net.to(device).eval()
    return Encoder(kind=kind, net=net, path=path, sha256=file_sha256(path), dim=dim, info=info)


def _build(kind: EncoderKind, state: dict, config: dict | None, path: Path) -> tuple[nn.Module, int]:
    if kind.layout == "timm-vit":
        net = ViT(kind.vit)
        _load_exact(net, state, path, kind)
        return net, kind.vit.embed_dim
    if kind.layout == "open_clip-coca":
        net = CoCaVisual(kind.vit, kind.pooled_dim)
        _load_exact(net, {k[len(_VISUAL):]: v for k, v in state.items() if k.startswith(_VISUAL)}, path, kind)
        return net, kind.pooled_dim
    if kind.layout.startswith("hf-"):
        spec, converted = hf_to_timm(state, config, path)
        net = ViT(spec)
        _load_exact(net, converted, path, kind)
        return net, spec.embed_dim
    from .backbones import build_backbone

    net = build_backbone(kind.backbone)
    own = net.state_dict()
    net.load_state_dict({k: state[k] if k in state else v for k, v in own.items()})
    return net, int(net.num_features)


def _load_exact(net: nn.Module, state: dict, path: Path, kind: EncoderKind) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise EncoderFileError(f"{path} is not a complete {kind.name} ({kind.file}): "
                               + (f"missing {', '.join(missing[:4])}" if missing else "")
                               + (f" wrong shape {', '.join(wrong[:4])}" if wrong else ""))
    net.load_state_dict({k: state[k].float() for k in own})


def hf_to_timm(state: dict, config: dict, path: Path) -> tuple[ViTSpec, dict]:
    """A Hugging Face ``ViTModel`` / ``Dinov2Model`` state dict and config as a :class:`ViTSpec` and a
    timm-layout state dict."""
    try:
        dim, depth = int(config["hidden_size"]), int(config["num_hidden_layers"])
        heads, patch = int(config["num_attention_heads"]), int(config["patch_size"])
        img = int(config.get("image_size", 224))
        eps = float(config.get("layer_norm_eps", 1e-12 if config["model_type"] == "vit" else 1e-6))
        act = config.get("hidden_act", "gelu")
    except (KeyError, TypeError, ValueError) as e:
        raise EncoderFileError(f"{path}: config.json lacks a needed field ({e})") from e
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh") and not config.get("use_swiglu_ffn"):
        raise EncoderFileError(f"{path}: activation {act!r} is not supported (gelu or SwiGLU)")
    dinov2 = config["model_type"] == "dinov2"
    swiglu = bool(config.get("use_swiglu_ffn", False))
    out = {"cls_token": state.get("embeddings.cls_token"), "pos_embed": state.get("embeddings.position_embeddings"),
           "patch_embed.proj.weight": state.get("embeddings.patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": state.get("embeddings.patch_embeddings.projection.bias"),
           "norm.weight": state.get("layernorm.weight"), "norm.bias": state.get("layernorm.bias")}
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        try:
            out[dst + "attn.qkv.weight"] = torch.cat([state[att + f"{n}.weight"] for n in ("query", "key", "value")])
            out[dst + "attn.qkv.bias"] = torch.cat([state[att + f"{n}.bias"] for n in ("query", "key", "value")])
        except KeyError as e:
            raise EncoderFileError(f"{path}: not a complete {config['model_type']} model (missing {e})") from e
        names = {"attn.proj": "attention.output.dense"}
        if dinov2:
            names.update({"norm1": "norm1", "norm2": "norm2"})
            if swiglu and src + "mlp.weights_in.weight" in state:  # packed, gate first (as published)
                names.update({"mlp.fc1": "mlp.weights_in", "mlp.fc2": "mlp.weights_out"})
            elif swiglu:  # transformers 5's in-memory names, if a user saved those
                for p in ("weight", "bias"):
                    out[dst + f"mlp.fc1.{p}"] = torch.cat([state[src + f"mlp.gate_proj.{p}"],
                                                           state[src + f"mlp.up_proj.{p}"]])
                names["mlp.fc2"] = "mlp.down_proj"
            else:
                names.update({"mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"})
            out[dst + "ls1.gamma"] = state.get(src + "layer_scale1.lambda1")
            out[dst + "ls2.gamma"] = state.get(src + "layer_scale2.lambda1")
        else:
            names.update({"norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                          "mlp.fc2": "output.dense"})
        for d, s in names.items():
            for p in ("weight", "bias"):
                out[dst + f"{d}.{p}"] = state.get(src + f"{s}.{p}")
    out = {k: v for k, v in out.items() if v is not None}
    hidden = int(out["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in out else 0
    spec = ViTSpec(dim=dim, depth=depth, heads=heads, patch=patch, img=img, hidden=hidden, swiglu=swiglu,
                   layerscale=dinov2, pos_on_prefix=True, eps=eps,
                   qkv_bias=bool(config.get("qkv_bias", True)))
    if "pos_embed" in out and int(out["pos_embed"].shape[1]) != spec.grid ** 2 + 1:
        spec = replace(spec, img=int(round((int(out["pos_embed"].shape[1]) - 1) ** 0.5)) * patch)
    return spec, out
