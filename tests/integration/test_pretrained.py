"""The offline ImageNet weights load correctly: each CNN names known photos right.

No photo ships with artlens, so the known images come from installed packages: scikit-learn's
`china.jpg` (a Chinese temple) and matplotlib's `grace_hopper.jpg` (the classic torchvision test
photo: Grace Hopper in a navy uniform). Predictions measured with these weights (top-5, prob):

china.jpg
  efficientnet-lite0  palace .30, bell cote .17, monastery .07, lakeside .06, boathouse .04
  efficientnet-lite1  palace .55, monastery .14, castle .05, boathouse .03, bell cote .03
  efficientnet-lite2  palace .38, castle .06, bell cote .06, monastery .03, church .03
  mobilenet-v2        palace .69, monastery .17, stupa .03, bell cote .03, boathouse .02
grace_hopper.jpg
  efficientnet-lite0  academic gown .24, mortarboard .21, military uniform .18, vestment .05, Windsor tie .04
  efficientnet-lite1  comic book .09, military uniform .09, book jacket .05, academic gown .04, Windsor tie .04
  efficientnet-lite2  military uniform .10, suit .09, Windsor tie .06, bow tie .06, comic book .03
  mobilenet-v2        bow tie .51, military uniform .18, mortarboard .11, suit .06, academic gown .04
A wrongly loaded model (weights shifted or missing) gives none of these.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from artlens.models.backbones import create_backbone, create_classifier, get_spec
from artlens.models.weights import MissingWeightsError, resolve_weights

pytestmark = pytest.mark.integration

OFFLINE_CNNS = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "mobilenet-v2"]
PALACE, MILITARY_UNIFORM = 698, 652


def _images():
    import matplotlib.cbook
    from sklearn.datasets import load_sample_image

    china = Image.fromarray(load_sample_image("china.jpg"))
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return china, hopper


@pytest.fixture(scope="module")
def known_images():
    try:
        return _images()
    except Exception as exc:  # pragma: no cover - both ship with the pinned dependencies
        pytest.skip(f"sample images unavailable: {exc}")


@pytest.mark.parametrize("name", OFFLINE_CNNS)
def test_offline_cnn_names_known_photos(name, known_images, monkeypatch):
    monkeypatch.setenv("ARTLENS_OFFLINE", "1")  # must work with no network
    torch.set_num_threads(2)
    try:
        source = resolve_weights(name)
    except MissingWeightsError as exc:
        pytest.skip(str(exc))
    assert source.kind == "package"
    model = create_classifier(name)
    x = torch.from_numpy(get_spec(name).preprocessing.batch(known_images))
    with torch.no_grad():
        probs = model(x).softmax(1)
    china, hopper = probs
    assert int(china.argmax()) == PALACE, f"{name}: china.jpg top-1 is class {int(china.argmax())}"
    assert china[PALACE] > 0.25
    assert MILITARY_UNIFORM in hopper.topk(5).indices.tolist()

    # The feature backbone is the same network without its classifier.
    features = create_backbone(name)
    with torch.no_grad():
        f = features(x)
    assert f.shape == (2, get_spec(name).feature_dim)
    fc = model.get_classifier() if hasattr(model, "get_classifier") else model.classifier[-1]
    with torch.no_grad():
        assert torch.allclose(fc(f).softmax(1), probs, atol=1e-5)
