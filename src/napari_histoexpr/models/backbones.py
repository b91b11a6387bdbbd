"""CNN backbones in plain torch, random init, with torchvision's layer names.

torchvision's architectures (ResNet, DenseNet, EfficientNet) rebuilt here because its wheels do
not install beside the CPU torch this project pins. The parameter names match torchvision's, so
a ``state_dict`` saved from a torchvision model (e.g. an ImageNet or pathology checkpoint the user
already has) loads into these with :func:`load_init_weights`. Nothing is ever downloaded.

Each ``build_backbone(name)`` returns a module mapping ``(N, 3, H, W)`` to ``(N, F)`` features (the
global average of ``module.feature_map(x)``, a ``(N, F, H/32, W/32)`` map: every backbone here has
total stride :data:`STRIDE`) and sets ``module.num_features = F``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HistoExprError, ModelFileError
from .artifact import read_tensors

#: total stride of every backbone's feature map (input px per feature cell)
STRIDE = 32

# -------------------------------------------------------------------------------------------------
# ResNet
# -------------------------------------------------------------------------------------------------


def _conv3(cin, cout, stride=1, groups=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    def __init__(self, block, layers):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != width * block.expansion:
                down = nn.Sequential(nn.Conv2d(cin, width * block.expansion, 1, stride, bias=False),
                                     nn.BatchNorm2d(width * block.expansion))
            blocks = [block(cin, width, stride, down)]
            cin = width * block.expansion
            blocks += [block(cin, width) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each residual branch: trains faster
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def feature_map(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)


# -------------------------------------------------------------------------------------------------
# DenseNet
# -------------------------------------------------------------------------------------------------
class _DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, feats):
        x = torch.cat(feats, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, n, cin, growth, bn_size):
        super().__init__()
        for i in range(n):
            self[f"denselayer{i + 1}"] = _DenseLayer(cin + i * growth, growth, bn_size)

    def forward(self, x):
        feats = [x]
        for layer in self.values():
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class _Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    def __init__(self, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4):
        super().__init__()
        f = nn.Sequential()
        f.add_module("conv0", nn.Conv2d(3, init, 7, 2, 3, bias=False))
        f.add_module("norm0", nn.BatchNorm2d(init))
        f.add_module("relu0", nn.ReLU(inplace=True))
        f.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = init
        for i, n in enumerate(blocks):
            f.add_module(f"denseblock{i + 1}", _DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                f.add_module(f"transition{i + 1}", _Transition(c, c // 2))
                c //= 2
        f.add_module("norm5", nn.BatchNorm2d(c))
        self.features = f
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, x):
        return F.relu(self.features(x), inplace=True)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.feature_map(x), 1), 1)


# -------------------------------------------------------------------------------------------------
# EfficientNet (B0..B4)
# -------------------------------------------------------------------------------------------------
def _divisible(v: float, d: int = 8) -> int:
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


class _ConvBNAct(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class _SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = nn.SiLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


class _MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride, drop):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        mid = _divisible(cin * expand)
        layers = []
        if mid != cin:
            layers.append(_ConvBNAct(cin, mid, 1))
        layers += [_ConvBNAct(mid, mid, k, stride, groups=mid), _SqueezeExcite(mid, max(1, cin // 4)),
                   _ConvBNAct(mid, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.drop = drop

    def forward(self, x):
        out = self.block(x)
        if not self.use_res:
            return out
        if self.training and self.drop > 0:  # stochastic depth, per sample
            keep = torch.empty((x.shape[0], 1, 1, 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.drop)
            out = out * keep / (1 - self.drop)
        return out + x


_EFF_BASE = [  # expand, kernel, stride, in, out, repeats
    (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1),
]
_EFF_SCALE = {"b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4), "b4": (1.4, 1.8)}


class EfficientNet(nn.Module):
    def __init__(self, width: float, depth: float, stochastic_depth: float = 0.2):
        super().__init__()
        cfg = [(e, k, s, _divisible(i * width), _divisible(o * width), int(math.ceil(n * depth)))
               for e, k, s, i, o, n in _EFF_BASE]
        total = sum(c[-1] for c in cfg)
        layers = [_ConvBNAct(3, cfg[0][3], 3, 2)]
        idx = 0
        for e, k, s, cin, cout, n in cfg:
            stage = []
            for j in range(n):
                stage.append(_MBConv(cin if j == 0 else cout, cout, e, k, s if j == 0 else 1,
                                     stochastic_depth * idx / total))
                idx += 1
            layers.append(nn.Sequential(*stage))
        last = 4 * cfg[-1][4]
        layers.append(_ConvBNAct(cfg[-1][4], last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = last
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, x):
        return self.features(x)

    def forward(self, x):
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)


# -------------------------------------------------------------------------------------------------
BACKBONES = {
    "resnet18": partial(ResNet, BasicBlock, (2, 2, 2, 2)),
    "resnet34": partial(ResNet, BasicBlock, (3, 4, 6, 3)),
    "resnet50": partial(ResNet, Bottleneck, (3, 4, 6, 3)),
    "densenet121": partial(DenseNet, 32, (6, 12, 24, 16), 64),
    **{f"efficientnet_{k}": partial(EfficientNet, w, d) for k, (w, d) in _EFF_SCALE.items()},
}


def build_backbone(name: str) -> nn.Module:
    """A randomly initialised backbone by torchvision name (see :data:`BACKBONES`)."""

    try:
        return BACKBONES[name]()
    except KeyError:
        raise HistoExprError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def load_init_weights(backbone: nn.Module, path: str) -> dict:
    """Load a user's weights file into ``backbone`` without executing code.

    Accepts ``.safetensors`` or a torch file of tensors (loaded with ``weights_only=True``), a bare
    state dict or one under ``state_dict``/``model``; torchvision names match, ``module.``/``backbone.``
    prefixes are stripped, classifier heads are ignored. Returns ``{"loaded": n, "missing": [...]}``;
    raises :class:`~napari_histoexpr.errors.ModelFileError` when nothing matches.
    """

    sd = read_tensors(path)
    for key in ("state_dict", "model"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
    clean = {}
    for k, v in sd.items():
        for pre in ("module.", "backbone.", "encoder."):
            if k.startswith(pre):
                k = k[len(pre):]
        clean[k] = v
    own = backbone.state_dict()
    usable = {k: v for k, v in clean.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ModelFileError(f"{path}: no tensor matches the backbone's layers (is it for another "
                             f"architecture?)")
    own.update(usable)
    backbone.load_state_dict(own)
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    return {"loaded": len(usable), "missing": missing}
