"""Architectures hpm trains itself, each with an FC, l2 or Adv-DPNP prototype classifier:

=====================  ==========================================================================================
``cifar_resnet``       CIFAR ResNets of He et al. (2016), 6n+2 layers, stage widths ``w, 2w, 4w``
``preact_resnet18``    the pre-activation ResNet-18 of the fast adversarial training literature (Wong, Rice &
                       Kolter 2020; Rice, Wong & Kolter 2020): 512-d features, 11.2 M parameters
=====================  ==========================================================================================

A zoo backbone is named in ``config.json`` as ``{"source": "hpm", "name": "cifar_resnet", "options":
{"depth": 20, "width": 16, "num_classes": 10, "classifier": "fc"}}`` (``preact_resnet18`` takes
``num_classes`` and ``classifier`` only). Its weights exist nowhere else, so checkpoints store them, or name the
checkpoint that does; the spec rebuilds the architecture they belong to.

The ``l2`` classifier scores ``-||z - c_j||_2`` against learnable centres (the paper's Fig. 1 model, the
same score as :class:`hpm.heads.NCMHead`, Eq. 18). To fit hpm's ``features + fc + head`` layout it is
exported as an NCM head holding the centres plus the linear layer ``W = 2C, b = -|c_j|^2``: that layer's
logits equal ``-||z - c_j||^2 + |z|^2``, so it predicts exactly what the l2 classifier predicts and its
cross-entropy is the cross-entropy of the squared distances (the FC oracle of an l2 model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HPMError
from ..heads import neg_l2_distance

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CLASSIFIERS = ("fc", "l2", "dpnp")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class L2Classifier(nn.Module):
    """Scores ``-||z - c_j||_2`` against learnable class centres ``c [k, d]`` (Eq. 18 with trained centres)."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.in_features, self.out_features = num_features, num_classes
        self.centres = nn.Parameter(torch.randn(num_classes, num_features) * 0.01)

    def forward(self, z: Tensor) -> Tensor:
        return neg_l2_distance(z, self.centres)

    def as_linear(self) -> nn.Linear:
        """The linear layer with the same argmax: ``2 c_j . z - |c_j|^2`` (module docstring)."""
        c = self.centres.detach()
        fc = nn.Linear(self.in_features, self.out_features).to(c.device)
        with torch.no_grad():
            fc.weight.copy_(2 * c)
            fc.bias.copy_(-(c * c).sum(1))
        return fc


class PrototypeClassifier(nn.Module):
    """Adv-DPNP's unified prototypes: class prototypes ``c_j = r d_j / |d_j|`` on a sphere of radius ``r`` that are
    also the classifier's weights, scores ``z . c_j`` (no bias). With equal prototype norms the softmax of these
    scores is the softmax of ``-|z - c_j|^2 / 2`` (the ``|z|^2`` term is the same for every class), so the weights
    are the anchors the alignment loss pulls features to. ``r`` is a buffer: saved with the weights."""

    def __init__(self, num_features: int, num_classes: int, radius: float = 4.0):
        super().__init__()
        self.in_features, self.out_features = num_features, num_classes
        self.directions = nn.Parameter(torch.randn(num_classes, num_features))
        self.register_buffer("radius", torch.tensor(float(radius)))

    @property
    def prototypes(self) -> Tensor:
        """``C [k, d]``, every row of norm ``r``."""
        return self.radius * F.normalize(self.directions, dim=1)

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.prototypes.t()

    def as_linear(self) -> nn.Linear:
        """The bias-free linear layer ``W = C`` (the same scores)."""
        c = self.prototypes.detach()
        fc = nn.Linear(self.in_features, self.out_features, bias=False).to(c.device)
        with torch.no_grad():
            fc.weight.copy_(c)
        return fc


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs in [0, 1] (normalisation inside), stage widths ``w, 2w, 4w``."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, classifier: str = "fc"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise HPMError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110); got {depth}")
        if width < 1 or num_classes < 2:
            raise HPMError(f"need width >= 1 and num_classes >= 2; got {width}, {num_classes}")
        n = (depth - 2) // 6
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, ch = [], width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(ch, out_ch, 2 if stage > 0 and i == 0 else 1))
                ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.num_features = ch
        self.classifier = _classifier(classifier, ch, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``[B, 4w]``."""
        x = self.blocks(self.stem((x - self.mean) / self.std))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def _classifier(kind: str, num_features: int, num_classes: int) -> nn.Module:
    """The final layer a zoo network ends in: ``fc``, ``l2`` or ``dpnp``."""
    if kind not in CLASSIFIERS:
        raise HPMError(f"classifier must be one of {', '.join(CLASSIFIERS)}; got {kind!r}")
    return {"fc": nn.Linear, "l2": L2Classifier, "dpnp": PrototypeClassifier}[kind](num_features, num_classes)


class PreActBlock(nn.Module):
    """He et al.'s (2016b) pre-activation block: BN-ReLU before each 3x3 convolution; a 1x1 projection of the
    pre-activated input (no BN) when the shape changes, the identity otherwise."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 for 32x32 inputs in [0, 1] (normalisation inside), the architecture of Wong et al.'s and
    Rice et al.'s code: a 3x3 stem of 64 channels, four stages of two :class:`PreActBlock` with 64/128/256/512
    channels (strides 1, 2, 2, 2), a final BN-ReLU, global average pooling to 512 features, the classifier."""

    def __init__(self, num_classes: int = 10, classifier: str = "fc"):
        super().__init__()
        if num_classes < 2:
            raise HPMError(f"need num_classes >= 2; got {num_classes}")
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        blocks, ch = [], 64
        for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [PreActBlock(ch, out_ch, stride), PreActBlock(out_ch, out_ch, 1)]
            ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(ch)
        self.num_features = ch
        self.classifier = _classifier(classifier, ch, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``[B, 512]``."""
        x = F.relu(self.bn(self.blocks(self.stem((x - self.mean) / self.std))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


ZooNet = CifarResNet | PreActResNet18


class _Features(nn.Module):
    """``forward_features`` of a zoo model as a module (what :class:`hpm.HPMClassifier` calls ``features``)."""

    def __init__(self, net: ZooNet):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)


ARCHITECTURES: dict[str, type[ZooNet]] = {"cifar_resnet": CifarResNet, "preact_resnet18": PreActResNet18}
OPTIONS = {"cifar_resnet": {"depth", "width", "num_classes", "classifier"},
           "preact_resnet18": {"num_classes", "classifier"}}


def build(name: str | None, options: dict) -> ZooNet:
    """A randomly initialised zoo architecture from its ``config.json`` name and options."""
    if name not in ARCHITECTURES:
        raise HPMError(f"unknown hpm architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    known = OPTIONS[name]
    unknown = set(options) - known
    if unknown:
        raise HPMError(f"{name}: unknown options {sorted(unknown)}; known: {sorted(known)}")
    return ARCHITECTURES[name](**options)


def split(net: ZooNet) -> tuple[nn.Module, nn.Linear]:
    """``(features, fc)`` of a zoo model; an l2 classifier becomes its equivalent linear layer."""
    fc = net.classifier if isinstance(net.classifier, nn.Linear) else net.classifier.as_linear()
    features = _Features(net)
    net.classifier = nn.Identity()  # the head slot lives in HPMClassifier from here on
    return features, fc
