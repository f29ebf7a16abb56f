"""The model artifact: a directory with `model.safetensors` and `config.json`.

Loading reads JSON and safetensors only (no pickle, no code), checks every tensor's shape against
the config, and refuses anything it does not understand with `ModelFormatError`. Heads are evaluated
in numpy so that prediction over ONNX embeddings never imports torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from artlens.metrics import l2_normalize, softmax
from artlens.models.tasks import ModelFormatError, TaskConfig, validate_links
from artlens.paths import atomic_write_bytes, atomic_write_text

FORMAT = "artlens-model"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_HEAD_KEY = re.compile(r"^heads\.(?P<task>[A-Za-z0-9_+\-]+)\.(?P<idx>\d+)\.(?P<kind>weight|bias)$")


class ArtModel:
    """Config + tensors. `mode` is `probe` (heads over a pretrained backbone) or `finetune`."""

    def __init__(self, config: dict[str, Any], tensors: dict[str, np.ndarray]):
        self.config = config
        self.tensors = tensors
        self.tasks = [TaskConfig(**t) for t in config["tasks"]]
        self._validate()

    # ------------------------------------------------------------------ properties
    @property
    def mode(self) -> str:
        return self.config.get("mode", "probe")

    @property
    def backbone_name(self) -> str:
        return self.config["backbone"]["name"]

    @property
    def feature_dim(self) -> int:
        return int(self.config["backbone"]["feature_dim"])

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"model has no task {name!r} (it has {', '.join(self.task_names)})")

    @property
    def preprocessing(self):
        """The model's eval `Preprocessing`: config.json's block, the backbone registry's for keys it lacks."""
        from artlens.models.preprocessing import Preprocessing

        return Preprocessing.from_config(self.config.get("preprocessing"), self.backbone_name)

    def backbone_state(self) -> dict[str, np.ndarray]:
        """Fine-tuned backbone weights (empty for probe models)."""
        return {k[len("backbone."):]: v for k, v in self.tensors.items() if k.startswith("backbone.")}

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        cfg = self.config
        if cfg.get("format") != FORMAT:
            raise ModelFormatError(f"config.json: format is {cfg.get('format')!r}, expected {FORMAT!r}")
        if int(cfg.get("version", -1)) > VERSION:
            raise ModelFormatError(f"config.json: version {cfg.get('version')} is newer than this artlens ({VERSION})")
        if cfg.get("mode") not in ("probe", "finetune"):
            raise ModelFormatError(f"config.json: unknown mode {cfg.get('mode')!r}")
        try:
            dim = int(cfg["backbone"]["feature_dim"])
            str(cfg["backbone"]["name"])
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError("config.json: backbone needs a name and a feature_dim") from None
        if cfg.get("preprocessing") is not None:
            try:
                self.preprocessing
            except ValueError as exc:
                raise ModelFormatError(f"config.json: {exc}") from None
        names = self.task_names
        if not names or len(set(names)) != len(names):
            raise ModelFormatError("config.json: tasks must be a non-empty list with distinct names")
        validate_links(self.tasks)
        for key in self.tensors:
            m = _HEAD_KEY.match(key)
            if m and m["task"] not in names:
                raise ModelFormatError(f"model.safetensors: tensor {key} belongs to no task in config.json")
            # `openset.<task>.*`: data of an open-set rule (e.g. class centroids for "unknown artist").
            if not (m or key.startswith(("backbone.", "openset.")) or key in ("norm.mean", "norm.std")):
                raise ModelFormatError(f"model.safetensors: unexpected tensor {key}")
        for t in self.tasks:
            prev = dim
            layers = self._linear_layers(t.name)
            widths = [*t.hidden, len(t.labels)]
            if len(layers) != len(widths):
                raise ModelFormatError(
                    f"task {t.name!r}: config says {len(widths)} linear layers, weights have {len(layers)}"
                )
            for (w, b), width in zip(layers, widths):
                if w.shape != (width, prev) or b.shape != (width,):
                    raise ModelFormatError(
                        f"task {t.name!r}: weight shape {w.shape} does not match {width}x{prev} "
                        f"({len(t.labels)} labels in config.json)"
                    )
                prev = width
        for key in ("norm.mean", "norm.std"):
            if key in self.tensors and self.tensors[key].shape != (dim,):
                raise ModelFormatError(f"model.safetensors: {key} has shape {self.tensors[key].shape}, expected ({dim},)")
        if "norm.std" in self.tensors and not np.all(self.tensors["norm.std"] > 0):
            raise ModelFormatError("model.safetensors: norm.std must be positive")

    def _linear_layers(self, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
        idx = sorted(
            {int(m["idx"]) for k in self.tensors if (m := _HEAD_KEY.match(k)) and m["task"] == task}
        )
        out = []
        for i in idx:
            try:
                out.append((self.tensors[f"heads.{task}.{i}.weight"], self.tensors[f"heads.{task}.{i}.bias"]))
            except KeyError as exc:
                raise ModelFormatError(f"model.safetensors: missing tensor {exc.args[0]}") from None
        return out

    # ------------------------------------------------------------------ inference (numpy)
    def normalise(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if "norm.mean" in self.tensors:
            x = (x - self.tensors["norm.mean"]) / self.tensors["norm.std"]
        return x

    def head_logits(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Raw logits per task for backbone features `(N, feature_dim)`."""
        x0 = self.normalise(features)
        if x0.ndim != 2 or x0.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (N, {self.feature_dim}), got {x0.shape}")
        out = {}
        for t in self.tasks:
            x = x0
            layers = self._linear_layers(t.name)
            for j, (w, b) in enumerate(layers):
                x = x @ w.T + b
                if j < len(layers) - 1:
                    x = np.maximum(x, 0.0)
            out[t.name] = x
        return out

    def band_decision(self, task: str, probs: np.ndarray) -> tuple[list[str | None], np.ndarray]:
        """For a task with a `band`: per row the answer (None: unsure) and P(band label)."""
        t = self.task(task)
        band = t.band
        if not band:
            raise ValueError(f"task {task!r} has no decision band")
        j = t.labels.index(band["label"])
        other = next(lab for lab in t.labels if lab != band["label"])
        p = np.asarray(probs)[:, j]
        out = [band["label"] if x >= band["accept"] else other if x <= band["reject"] else None for x in p]
        return out, p

    # ------------------------------------------------------------------ open-set rule
    # Prediction and calibration both score through these, so a calibrated threshold means at
    # prediction exactly what it meant when it was chosen (see artlens.train.openset).
    OPEN_SET_METHODS = ("max_prob", "energy", "centroid", "background")

    @staticmethod
    def open_set_score(
        method: str,
        *,
        logits: np.ndarray | None = None,
        probs: np.ndarray | None = None,
        features: np.ndarray | None = None,
        centroids: np.ndarray | None = None,
        background_logits: np.ndarray | None = None,
        energy_temperature: float = 1.0,
    ) -> np.ndarray:
        """Known score per row of one open-set method (higher = more like a known class).

        `max_prob`: top probability; `energy`: T * logsumexp(z / T) of the raw logits (negative free
        energy); `centroid`: max cosine to the class centroids; `background`: the best known class's
        share of softmax([logits, background logits]), background (N,) or (N, n classes).
        """
        if method == "max_prob":
            return np.asarray(probs, dtype=np.float64).max(axis=1)
        if method == "energy":
            z = np.asarray(logits, dtype=np.float64) / energy_temperature
            m = z.max(axis=1, keepdims=True)
            return energy_temperature * (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))
        if method == "centroid":
            if centroids is None:
                raise ValueError("the centroid method needs class centroids")
            return (l2_normalize(features) @ l2_normalize(centroids).T).max(axis=1).astype(np.float64)
        if method == "background":
            if background_logits is None:
                raise ValueError("the background method needs the background logits")
            zk = np.asarray(logits, np.float64)
            z = np.concatenate([zk, np.asarray(background_logits, np.float64).reshape(len(zk), -1)], axis=1)
            return softmax(z, axis=1)[:, : zk.shape[1]].max(axis=1)
        raise ValueError(f"unknown open-set method {method!r} (choose from {', '.join(ArtModel.OPEN_SET_METHODS)})")

    def known_scores(
        self,
        task: str,
        features: np.ndarray,
        logits: np.ndarray | None = None,
        *,
        method: str | None = None,
        centroids: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per row the known score of the task's open-set rule, or of `method`.

        `logits`/`probs`: the task's raw logits and probabilities when already computed;
        `centroids` stands in for the stored `openset.<task>.centroids`.
        """
        t = self.task(task)
        rule = t.unknown or {}
        method = method or rule.get("method", "max_prob")
        if logits is None:
            logits = self.head_logits(features)[task]
        if method == "max_prob" and probs is None:
            probs = softmax(logits / t.temperature)
        if method == "centroid" and centroids is None:
            centroids = self.tensors.get(f"openset.{task}.centroids")
        bg = None
        if method == "background":
            w = self.tensors.get(f"openset.{task}.background.weight")  # (n background classes, dim)
            if w is not None:
                bg = self.normalise(features) @ w.T + self.tensors[f"openset.{task}.background.bias"]
        temp = float(rule.get("energy_temperature", 1.0)) if method == "energy" else 1.0
        return self.open_set_score(method, logits=logits, probs=probs, features=features, centroids=centroids,
                                   background_logits=bg, energy_temperature=temp)

    def open_set_reject(self, task: str, features: np.ndarray, logits: np.ndarray | None = None,
                        probs: np.ndarray | None = None) -> np.ndarray | None:
        """Boolean mask of rows the task's open-set rule sends to `unknown` (None when it has no rule).

        Energy rules store a threshold on the energy (= -score) and reject above it; the others
        reject scores below theirs.
        """
        rule = self.task(task).unknown
        if not rule:
            return None
        method = rule.get("method", "max_prob")
        thr = float(rule["threshold"])
        score = self.known_scores(task, features, logits, method=method, probs=probs)
        return -score > thr if method == "energy" else score < thr

    def predict_proba(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated probabilities per task (temperature-scaled softmax)."""
        return self.probabilities(self.head_logits(features))

    def probabilities(self, logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {t.name: softmax(logits[t.name] / t.temperature) for t in self.tasks}

    # ------------------------------------------------------------------ torch bridge
    def torch_heads(self):
        """An `nn.Module` (MultiTaskHeads) holding the same weights, for training and Grad-CAM."""
        import torch

        from artlens.models.heads import MultiTaskHeads

        norm = None
        if "norm.mean" in self.tensors:
            norm = (torch.from_numpy(self.tensors["norm.mean"]), torch.from_numpy(self.tensors["norm.std"]))
        heads = MultiTaskHeads(self.feature_dim, {t.name: asdict(t) for t in self.tasks}, norm=norm)
        state = {
            k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.tensors.items() if k.startswith("heads.")
        }
        heads.load_state_dict(state, strict=False)
        missing = [k for k in heads.heads.state_dict() if f"heads.{k}" not in state]
        if missing:
            raise ModelFormatError(f"model.safetensors: missing head tensors {missing[:3]}")
        return heads

    @classmethod
    def from_torch(
        cls,
        config: dict[str, Any],
        heads,
        backbone_state: dict | None = None,
    ) -> "ArtModel":
        """Build from trained torch modules. `heads` is a MultiTaskHeads; its norm buffers are kept."""
        tensors: dict[str, np.ndarray] = {}
        for k, v in heads.heads.state_dict().items():
            tensors[f"heads.{k}"] = v.detach().cpu().float().numpy()
        if getattr(heads, "norm_mean", None) is not None:
            tensors["norm.mean"] = heads.norm_mean.detach().cpu().float().numpy()
            tensors["norm.std"] = heads.norm_std.detach().cpu().float().numpy()
        for k, v in (backbone_state or {}).items():
            tensors[f"backbone.{k}"] = v.detach().cpu().numpy()
        return cls(new_config(config), tensors)

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config["tasks"] = [asdict(t) for t in self.tasks]
        stored: dict[str, np.ndarray] = {}
        for k, v in self.tensors.items():
            if _stored_int8(k):
                stored[k], stored[k + SCALE_SUFFIX] = _quantize_rows(v)
            else:
                stored[k] = np.ascontiguousarray(v)
        blob = save(stored, metadata={"format": FORMAT})
        atomic_write_bytes(directory / WEIGHTS_NAME, blob)
        atomic_write_text(directory / CONFIG_NAME, json.dumps(self.config, indent=2, sort_keys=False) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ArtModel":
        from safetensors import SafetensorError
        from safetensors.numpy import load

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not directory.is_dir():
            raise ModelFormatError(f"{directory}: not a model directory")
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ModelFormatError(f"{directory}: missing {p.name}")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{cfg_path}: not valid JSON ({exc})") from None
        except RecursionError:
            raise ModelFormatError(f"{cfg_path}: not valid JSON (nested too deeply)") from None
        if not isinstance(config, dict) or not isinstance(config.get("tasks"), list):
            raise ModelFormatError(f"{cfg_path}: expected an object with a list of tasks")
        try:
            tensors = load(w_path.read_bytes())
        except (SafetensorError, ValueError, OSError) as exc:
            raise ModelFormatError(f"{w_path}: not a valid safetensors file ({exc})") from None
        tensors = _dequantize(tensors, w_path)
        try:
            return cls(config, tensors)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{directory}: {exc}") from None
        except (TypeError, KeyError) as exc:
            raise ModelFormatError(f"{directory}: invalid config.json ({exc})") from None
        except RecursionError:  # a deeply nested field, met by validation or an error message's repr
            raise ModelFormatError(f"{cfg_path}: field {_deepest_field(config)!r} is nested too deeply") from None


def _deepest_field(config: dict) -> str:
    """The top-level key of `config` with the most deeply nested value (iterative: no recursion)."""
    def depth(v) -> int:
        deepest, stack = 0, [(v, 1)]
        while stack:
            v, d = stack.pop()
            deepest = max(deepest, d)
            if isinstance(v, dict):
                stack.extend((x, d + 1) for x in v.values())
            elif isinstance(v, list):
                stack.extend((x, d + 1) for x in v)
        return deepest

    return max(config, key=lambda k: depth(config[k]), default="?")


SCALE_SUFFIX = "_scale"  # `<key>_scale`: the per-row float32 scale of an int8-stored tensor


def _stored_int8(key: str) -> bool:
    """Tensors written as int8 with one float32 scale per row: the open-set background logits (one
    row of 2816 per kept-out artist; 3.7 MB in float32) only feed a score compared with a threshold,
    and on the shipped model's 7,809 paintings int8 rows move that score by at most 0.0015 and flip
    no answer. Loading turns them back into float32."""
    return key.startswith("openset.") and key.endswith(".background.weight")


def _quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(w, np.float32)
    scale = np.abs(w).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q), scale.astype(np.float32)


def _dequantize(tensors: dict[str, np.ndarray], where: Path) -> dict[str, np.ndarray]:
    """float32 tensors: float16 ones widened (models written before int8 storage), int8 ones times
    their `<key>_scale` (checked: one finite positive scale per row)."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] in tensors:
            continue
        if v.dtype == np.int8:
            scale = tensors.get(k + SCALE_SUFFIX)
            if (scale is None or v.ndim != 2 or scale.shape != (v.shape[0],) or scale.dtype != np.float32
                    or not np.all(np.isfinite(scale)) or not np.all(scale > 0)):
                raise ModelFormatError(f"{where}: {k} is int8 without a valid {k + SCALE_SUFFIX} "
                                       f"(one positive float32 per row)")
            out[k] = v.astype(np.float32) * scale[:, None]
        else:
            out[k] = v.astype(np.float32) if v.dtype == np.float16 else v
    return out


def new_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill the fixed fields of a config.json."""
    from artlens import __version__

    out = {"format": FORMAT, "version": VERSION, "mode": "probe"}
    out.update(config)
    out["tasks"] = [asdict(t) if isinstance(t, TaskConfig) else dict(t) for t in out["tasks"]]
    out.setdefault("recipe", {})
    out.setdefault("metrics", {})
    out.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    out.setdefault("artlens_version", __version__)
    return out
