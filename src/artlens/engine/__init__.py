"""artlens.engine: where collection-sized work runs. The local engine is the stages themselves
(`Predictor.iter_predict`, `embed_manifest`); this package runs the same arrows on Ray.

    from artlens.engine import RayOptions, ray_iter_predict, ray_embed_manifest
    rows = ray_iter_predict(paths, options=RayOptions(workers=4))          # Predictor's rows
    vectors, ok, errors = ray_embed_manifest(manifest, "clip-vit-b16",      # embed_manifest's result
                                             options=RayOptions(address="auto", workers=16))
    index_collection("museum/", embedder=RayEmbedder("clip-vit-b16", options=RayOptions(workers=4)))  # artlens.retrieval

An engine changes where work runs, never what it returns: the same answers, the same embedding
store (so `artlens index` and training reuse it), unreadable files reported and never fatal.
Ray is the optional extra `artlens[ray]`: importing this package does not import it.
"""

from artlens.engine.cluster import INSTALL_HINT, EngineError, RayOptions

__all__ = ["INSTALL_HINT", "EngineError", "RayEmbedder", "RayOptions", "ray_embed_manifest", "ray_iter_predict",
           "ray_predict_paths"]


def __getattr__(name: str):
    if name in ("ray_iter_predict", "ray_predict_paths"):
        from artlens.engine import predict

        return getattr(predict, name)
    if name in ("ray_embed_manifest", "RayEmbedder"):
        from artlens.engine import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'artlens.engine' has no attribute {name!r}")
