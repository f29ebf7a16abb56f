"""artlens.embed: encoders (onnxruntime for CLIP, torch for CNNs) and the content-hash keyed
embedding store. Importing this package is cheap: torch and onnxruntime load only when an
encoder is built."""

from artlens.embed.encoders import Encoder, OnnxEncoder, TorchEncoder, get_encoder, l2_normalize, model_encoder
from artlens.embed.extract import EmbedResult, EmbedStats, embed_manifest, file_sha256
from artlens.embed.store import EmbeddingStore, StoreError, default_store_root

__all__ = [
    "model_encoder",
    "EmbedResult",
    "EmbedStats",
    "EmbeddingStore",
    "Encoder",
    "OnnxEncoder",
    "StoreError",
    "TorchEncoder",
    "default_store_root",
    "embed_manifest",
    "file_sha256",
    "get_encoder",
    "l2_normalize",
]
