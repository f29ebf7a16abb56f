"""artlens.models: the backbones and the model artifact; no data loading, no training loops.

- `artmodel`: `ArtModel`, the saved model (config.json + model.safetensors), its numpy heads and
  open-set scorer; `tasks`: `TaskConfig`, a task as config.json describes it (band, attach,
  withhold), and `ModelFormatError`; `heads`: the heads as torch modules.
- `backbones`: the backbone registry (`get_spec`, `create_backbone`); `clip/`: the CLIP ViT-B/16
  backbone (ONNX build, onnxruntime runtime, torch rebuild); `simple_cnn`: the baseline CNN.
- `preprocessing`: `Preprocessing`, the one eval transform description per backbone and model.
- `weights`: where pretrained weights come from; `device`: which device inference runs on.
"""
