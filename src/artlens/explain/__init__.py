"""artlens.explain: Grad-CAM heat maps for an ArtModel (pytorch-grad-cam), and a faithfulness check.

`explain_image(model, image, task=None, target_class=None, method="gradcam", layers=None)` gives an
`Explanation` (label, prob, cam (H, W) in [0, 1], overlay PIL image); `Explainer` keeps the model
for many images. `gradcam` holds the explainer, `network` the differentiable backbone + head,
`overlay` the drawing, `faithfulness` the deletion check. Importing this package imports torch.
"""

from artlens.explain.gradcam import METHODS, Explainer, Explanation, explain_image
from artlens.explain.network import ArtNet, ExplainError, build_explain_model, tokens_to_grid

__all__ = [
    "METHODS",
    "ArtNet",
    "ExplainError",
    "Explainer",
    "Explanation",
    "build_explain_model",
    "explain_image",
    "tokens_to_grid",
]
