"""Is a heat map faithful? Delete what it highlights and see whether the class score falls.

The deletion runs through pytorch-grad-cam's perturbation metric (`RemoveMostRelevantFirst`).
Deleted pixels are filled with a strongly blurred copy of the image (`imputer="blur"`, default):
detail is gone, colours stay, so the score drop measures lost information rather than the shock
of a grey hole. `imputer="road"` uses ROAD's noisy linear in-painting (Rong et al. 2022) instead:
the published method, but a sparse solve per map (seconds each on a CPU). A faithful map's top
20 % should hurt more than a random 20 % of the same blobby shape.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


def random_map(shape: tuple[int, int], rng: np.random.Generator, grid: int = 7) -> np.ndarray:
    """Smooth random saliency: a (grid x grid) noise field upsampled, so the random deletion removes
    blobs like a CAM does (scattered single pixels would be trivially easy to in-paint)."""
    import cv2

    h, w = shape
    coarse = rng.random((grid, grid)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


class BlurImputer:
    """Fill the deleted pixels (mask == 0) with a Gaussian blur of the whole image."""

    def __init__(self, sigma_frac: float = 0.08):
        self.sigma_frac = sigma_frac

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import cv2

        arr = img.detach().cpu().numpy().transpose(1, 2, 0)
        sigma = max(1.0, self.sigma_frac * max(arr.shape[:2]))
        blurred = cv2.GaussianBlur(np.ascontiguousarray(arr), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
        if blurred.ndim == 2:
            blurred = blurred[:, :, None]
        blurred = torch.from_numpy(blurred.transpose(2, 0, 1).copy()).to(img.dtype)
        keep = mask.to(img.dtype)
        return img * keep + blurred * (1 - keep)


def _metric(fraction: float, imputer: str):
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    fill = {"blur": BlurImputer, "road": NoisyLinearImputer}
    if imputer not in fill:
        raise ValueError(f"unknown imputer {imputer!r} (blur or road)")
    return PerturbationConfidenceMetric(RemoveMostRelevantFirst(100 * (1 - fraction), fill[imputer]()))


@dataclass
class DeletionResult:
    score: float  # class logit on the untouched image
    cam_drop: float  # logit drop after deleting the map's top `fraction`
    random_drops: list[float]  # the same for random maps

    @property
    def random_drop(self) -> float:
        return float(np.mean(self.random_drops))


def deletion_test(
    model: torch.nn.Module,
    input_tensor: torch.Tensor,
    cam: np.ndarray,
    class_index: int,
    fraction: float = 0.2,
    n_random: int = 5,
    seed: int = 0,
    imputer: str = "blur",
) -> DeletionResult:
    """Logit drop when the top `fraction` of `cam` (at the input's size) is deleted, against random maps.

    `model(input_tensor)` gives logits; `input_tensor` is one normalised image (1, 3, H, W).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, H, W), got {tuple(input_tensor.shape)}")
    h, w = input_tensor.shape[-2:]
    if cam.shape != (h, w):
        raise ValueError(f"cam must have the input's size {(h, w)}, got {cam.shape}")
    rng = np.random.default_rng(seed)
    maps = np.stack([cam.astype(np.float32)] + [random_map((h, w), rng) for _ in range(n_random)])
    batch = input_tensor.repeat(len(maps), 1, 1, 1)
    targets = [ClassifierOutputTarget(class_index)] * len(maps)
    metric = _metric(fraction, imputer)
    model.eval()
    with torch.no_grad():
        score = float(model(input_tensor)[0, class_index])
    # PerturbationConfidenceMetric returns (score after deletion) - (score before): negative = drop.
    with warnings.catch_warnings():
        # numpy 2 deprecation inside the library's imputer (percentile of a torch tensor): noise
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array_wrap__.*")
        diffs = np.asarray(metric(batch, maps, targets, model), dtype=np.float64).reshape(-1)
    drops = (-diffs).tolist()
    return DeletionResult(score=score, cam_drop=drops[0], random_drops=drops[1:])
