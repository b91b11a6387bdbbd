"""Pretrained encoders from local files in their published layouts: random-initialised models in each
layout, checked against an independent implementation (transformers' ViT, DINOv2 and DINOv2 with
registers); recognition of every catalogued encoder from its tensor shapes; named errors for bad files."""

import pickle

import numpy as np
import pytest
import torch

from napari_histoexpr.errors import EncoderFileError
from napari_histoexpr.models.encoder_files import ENCODERS, load_encoder, matching_kinds, read_state
from napari_histoexpr.models.vit import ViT, ViTSpec

transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")


def _dinov2(registers: int, swiglu: bool, seed: int = 0):
    torch.manual_seed(seed)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=0, mlp_ratio=4,
            image_size=56, patch_size=14, num_register_tokens=registers, use_swiglu_ffn=swiglu, layerscale_value=0.5)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        cfg = transformers.Dinov2Config(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                                        image_size=56, patch_size=14, use_swiglu_ffn=swiglu, layerscale_value=0.5)
        model = transformers.Dinov2Model(cfg)
    with torch.no_grad():  # random LayerScale, so a wrong mapping shows
        for name, p in model.named_parameters():
            if "lambda1" in name:
                p.uniform_(0.2, 1.0)
    return model.eval()


def _on_disk(model) -> dict:
    """The tensors as transformers writes them (``save_pretrained``: the layout published on the hub)."""
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return load_file(f"{d}/model.safetensors")


def _to_timm(model, registers: int, pos_on_prefix: bool) -> dict:
    """A transformers DINOv2 checkpoint in timm's layout (written here from the two libraries' published
    names, independently of the product's converter)."""
    sd = _on_disk(model)
    out = {"patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    pos = sd["embeddings.position_embeddings"]
    if pos_on_prefix:  # class token keeps its position; registers get none (zeros)
        out["cls_token"] = sd["embeddings.cls_token"]
        out["pos_embed"] = torch.cat([pos[:, :1], torch.zeros(1, registers, pos.shape[2]), pos[:, 1:]], 1)
    else:  # timm's no_embed_class: the class token's position folded into the token
        out["cls_token"] = sd["embeddings.cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    if registers:
        out["reg_token"] = sd["embeddings.register_tokens"]
    for i in range(model.config.num_hidden_layers):
        s, d = f"encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[d + f"attn.qkv.{p}"] = torch.cat([sd[s + f"attention.attention.{n}.{p}"] for n in ("query", "key",
                                                                                                "value")])
            out[d + f"attn.proj.{p}"] = sd[s + f"attention.output.dense.{p}"]
            out[d + f"norm1.{p}"] = sd[s + f"norm1.{p}"]
            out[d + f"norm2.{p}"] = sd[s + f"norm2.{p}"]
            if model.config.use_swiglu_ffn:  # packed gate and value, as timm's SwiGLUPacked
                out[d + f"mlp.fc1.{p}"] = sd[s + f"mlp.weights_in.{p}"]
                out[d + f"mlp.fc2.{p}"] = sd[s + f"mlp.weights_out.{p}"]
            else:
                out[d + f"mlp.fc1.{p}"] = sd[s + f"mlp.fc1.{p}"]
                out[d + f"mlp.fc2.{p}"] = sd[s + f"mlp.fc2.{p}"]
        out[d + "ls1.gamma"] = sd[s + "layer_scale1.lambda1"]
        out[d + "ls2.gamma"] = sd[s + "layer_scale2.lambda1"]
    return {k: v.clone().contiguous() for k, v in out.items()}


def _pixels(n=3, px=56, seed=1):
    return torch.rand(n, 3, px, px, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("registers,swiglu,pos_on_prefix", [(0, False, True), (0, True, True), (4, True, False),
                                                            (4, True, True), (8, False, False)])
def test_timm_layout_vit_matches_transformers(tmp_path, registers, swiglu, pos_on_prefix):
    from safetensors.torch import save_file

    ref = _dinov2(registers, swiglu)
    x = _pixels()
    with torch.no_grad():
        hidden = ref(pixel_values=x).last_hidden_state  # after the final norm: (N, 1 + registers + patches, D)
    path = tmp_path / "encoder.safetensors"
    save_file(_to_timm(ref, registers, pos_on_prefix), str(path))
    enc = load_encoder(path)  # fits no catalogued encoder: a generic ViT, heads = width / 64
    assert enc.kind.name == "vit" and "not a known encoder" in enc.info["note"]
    assert enc.kind.vit.registers == registers and enc.kind.vit.swiglu == swiglu
    assert enc.kind.vit.pos_on_prefix == pos_on_prefix and enc.kind.vit.layerscale
    with torch.no_grad():
        tokens = enc.net.tokens(x)
        np.testing.assert_allclose(tokens.numpy(), hidden.numpy(), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(enc.net(x).numpy(), hidden[:, 0].numpy(), atol=2e-5, rtol=1e-4)
        # Virchow2's embedding: class token + mean of the patch tokens (registers left out)
        v2 = ViT(ViTSpec(**{**enc.kind.vit.__dict__, "pool": "cls+mean"}))
        v2.load_state_dict(enc.net.state_dict())
        want = torch.cat([hidden[:, 0], hidden[:, 1 + registers:].mean(1)], 1)
        np.testing.assert_allclose(v2(x).numpy(), want.numpy(), atol=2e-5, rtol=1e-4)
        # patch tokens as a feature map (the live view's sub-spot cells)
        fmap = enc.net.patch_tokens(x)
        assert fmap.shape == (3, 128, 4, 4)
        np.testing.assert_allclose(fmap[:, :, 1, 2].numpy(), hidden[:, 1 + registers + 6].numpy(), atol=2e-5,
                                   rtol=1e-4)


def test_prefixed_torch_checkpoint_of_a_timm_vit_loads(tmp_path):
    ref = _dinov2(0, False, seed=3)
    state = {f"module.backbone.{k}": v for k, v in _to_timm(ref, 0, True).items()}
    state["module.head.weight"] = torch.zeros(10, 128)  # a classifier beside the backbone is ignored
    torch.save({"state_dict": state, "epoch": 7}, tmp_path / "ckpt.pth")
    enc = load_encoder(tmp_path / "ckpt.pth")
    x = _pixels(2)
    with torch.no_grad():
        np.testing.assert_allclose(enc.net(x).numpy(), ref(pixel_values=x).last_hidden_state[:, 0].numpy(),
                                   atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["vit", "dinov2", "dinov2-swiglu"])
def test_hugging_face_folders_match_transformers(tmp_path, kind):
    torch.manual_seed(5)
    if kind == "vit":  # Phikon's layout: transformers ViTModel
        cfg = transformers.ViTConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, image_size=64, patch_size=16)
        model = transformers.ViTModel(cfg, add_pooling_layer=True)
    else:  # Phikon-v2's layout: transformers Dinov2Model
        model = _dinov2(0, kind.endswith("swiglu"))
    model.eval().save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "config.json").is_file() and (tmp_path / "enc" / "model.safetensors").is_file()
    enc = load_encoder(tmp_path / "enc")
    assert enc.kind.name == ("phikon" if kind == "vit" else "phikon-v2")
    x = _pixels(2, px=model.config.image_size)
    with torch.no_grad():
        want = model(pixel_values=x).last_hidden_state[:, 0]
        np.testing.assert_allclose(enc.net(x).numpy(), want.numpy(), atol=3e-5, rtol=1e-4)
    with pytest.raises(EncoderFileError, match="takes 224 x 224 px"):
        enc.embed(_pixels(1, px=64))


@pytest.mark.parametrize("name", [k for k, v in ENCODERS.items() if v.layout == "timm-vit"])
def test_every_catalogued_vit_is_recognised_from_its_shapes(name):
    kind = ENCODERS[name]
    with torch.device("meta"):
        state = ViT(kind.vit).state_dict()
    got = [k.name for k in matching_kinds(state)]
    twins = {"h-optimus-0", "h-optimus-1"}
    assert got == ([n for n in ENCODERS if n in twins] if name in twins else [name]), got


class _OpenClipPooler(torch.nn.Module):
    """open_clip's AttentionalPooler as its source states it, on torch.nn.MultiheadAttention (the
    reference for the product's own pooler)."""

    def __init__(self, dim, context_dim, heads, n_queries):
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(n_queries, dim))
        self.attn = torch.nn.MultiheadAttention(dim, heads, kdim=context_dim, vdim=context_dim)
        self.ln_q = torch.nn.LayerNorm(dim)
        self.ln_k = torch.nn.LayerNorm(context_dim)

    def forward(self, x):
        x = self.ln_k(x).permute(1, 0, 2)  # NLD -> LND
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[1], 1)
        return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)


def test_conch_layout_coca_image_tower_matches_its_reference(tmp_path):
    """A CoCa checkpoint in open_clip's layout (CONCH's): the embedding is the contrastive pooler over
    every trunk token, then its layer norm (encode_image(proj_contrast=False, normalize=False)); the
    trunk is a transformers DINOv2 written in timm's names, the pooler torch's MultiheadAttention. The
    text tower and the caption pooler in the file are not read; CONCH's full size is recognised."""
    from napari_histoexpr.models.vit import CoCaVisual

    trunk = _dinov2(0, False)
    torch.manual_seed(3)
    pool, pool_caption, ln = _OpenClipPooler(64, 128, 8, 1), _OpenClipPooler(32, 128, 8, 4), torch.nn.LayerNorm(64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    state = {f"visual.trunk.{k}": v for k, v in _to_timm(trunk, 0, True).items()}
    state.update({f"visual.attn_pool_contrast.{k}": v for k, v in pool.state_dict().items()})
    state.update({f"visual.attn_pool_caption.{k}": v for k, v in pool_caption.state_dict().items()})
    state.update({f"visual.ln_contrast.{k}": v for k, v in ln.state_dict().items()})
    state.update({"visual.proj_contrast": torch.randn(64, 64), "text.token_embedding.weight": torch.randn(50, 32),
                  "logit_scale": torch.tensor(2.0)})
    torch.save(state, tmp_path / "pytorch_model.bin")
    enc = load_encoder(tmp_path / "pytorch_model.bin")
    assert enc.kind.layout == "open_clip-coca" and enc.dim == 64 and enc.cell_dim == 128 and enc.kind.px == 56
    assert enc.kind.mean == ENCODERS["conch"].mean and "not CONCH's size" in enc.info["note"]
    x = _pixels(2, px=56)
    with torch.no_grad():
        want = ln(pool(trunk(pixel_values=x).last_hidden_state)[:, 0])
        np.testing.assert_allclose(enc.net(x).numpy(), want.numpy(), atol=3e-5, rtol=1e-4)
        tokens = trunk(pixel_values=x).last_hidden_state[:, 1:].transpose(1, 2).reshape(2, 128, 4, 4)
        np.testing.assert_allclose(enc.net.patch_tokens(x).numpy(), tokens.numpy(), atol=3e-5, rtol=1e-4)
    with torch.device("meta"):  # CONCH's own size: ViT-B/16 at 448 px, a 512-wide pooler
        full = {f"visual.{k}": v for k, v in CoCaVisual(ENCODERS["conch"].vit, 512).state_dict().items()}
    full["text.token_embedding.weight"] = torch.empty(32007, 768, device="meta")
    assert [k.name for k in matching_kinds(full)] == ["conch"]
    assert ENCODERS["conch"].window_um == 112.0


def test_torchvision_resnet_checkpoints(tmp_path):
    from napari_histoexpr.models.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone("resnet18").eval()
    with torch.no_grad():
        for m in net.modules():  # non-trivial batch-norm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    lightning = {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "global_step": 10}
    lightning["state_dict"]["model.fc.weight"] = torch.zeros(2, 512)
    torch.save(lightning, tmp_path / "ssl.ckpt")
    enc = load_encoder(tmp_path / "ssl.ckpt")
    assert enc.kind.name == "resnet18-ssl" and enc.dim == 512
    x = _pixels(2, px=224)
    with torch.no_grad():
        np.testing.assert_allclose(enc.net(x).numpy(), net(x).numpy(), atol=1e-5)
    with pytest.raises(EncoderFileError, match="does not hold resnet50-imagenet"):
        load_encoder(tmp_path / "ssl.ckpt", "resnet50-imagenet")


def test_bad_encoder_files_are_named(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(EncoderFileError, match="not found"):
        load_encoder(tmp_path / "missing.safetensors")
    ref = _dinov2(0, False)
    save_file(_to_timm(ref, 0, True), str(tmp_path / "vit.safetensors"))
    data = (tmp_path / "vit.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EncoderFileError, match="truncated or corrupt"):
        load_encoder(tmp_path / "cut.safetensors")
    torch.save(_to_timm(ref, 0, True), tmp_path / "vit.pth")
    blob = (tmp_path / "vit.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(EncoderFileError, match="truncated or corrupt"):
        load_encoder(tmp_path / "cut.pth")
    torch.save(ref, tmp_path / "pickled.pt")  # a whole pickled module: code, not tensors
    with pytest.raises(EncoderFileError, match="needs Python code"):
        load_encoder(tmp_path / "pickled.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(EncoderFileError):
        load_encoder(tmp_path / "plain.pkl")
    save_file({"layer.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EncoderFileError, match="no known encoder layout"):
        load_encoder(tmp_path / "other.safetensors")
    with pytest.raises(EncoderFileError, match="does not hold uni"):
        load_encoder(tmp_path / "vit.safetensors", "uni")
    with pytest.raises(EncoderFileError, match="unknown encoder 'unii'"):
        load_encoder(tmp_path / "vit.safetensors", "unii")
    partial = _to_timm(ref, 0, True)
    del partial["blocks.1.mlp.fc2.weight"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(EncoderFileError, match="missing blocks.1.mlp.fc2.weight"):
        load_encoder(tmp_path / "partial.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(EncoderFileError, match="needs config.json"):
        load_encoder(tmp_path / "folder")
    state, config = read_state(tmp_path / "vit.pth")
    assert config is None and "patch_embed.proj.weight" in state
