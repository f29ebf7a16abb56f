"""`artlens embed --engine ray`: the local engine's embedding store, filled by a pool of Ray actors.

The driver owns the store: it looks up what is already there (a rerun computes nothing twice),
sends only the missing images through the pipeline, and writes the vectors as they stream back,
one shard every `shard_size`, so an interrupted run keeps what it finished. The result is the
local `embed_manifest`'s: `vectors, ok_mask, errors` with `.stats` and `.hashes`.
"""

from __future__ import annotations

import time
from functools import partial

from artlens.embed import EmbeddingStore, EmbedResult, EmbedStats, Encoder, get_encoder
from artlens.embed.extract import collect_result, first_rows, given_hashes
from artlens.engine.cluster import RayOptions
from artlens.engine.pipeline import describe_encoder, map_paths, run
from artlens.engine.stages import EmbedWorker, hash_batch


def _progress(enabled: bool, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("embedding on Ray"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled or total == 0)


def ray_embed_manifest(
    df,
    backbone: str,
    store_root=None,
    *,
    backbone_state=None,
    preprocessing=None,
    device: str = "cpu",
    options: RayOptions | None = None,
    progress: bool = False,
    shard_size: int = 256,
    compact_over: int = 64,
    flush_s: float | None = 30.0,
    info: dict | None = None,
) -> EmbedResult:
    """`embed_manifest(df, backbone, store_root, ...)` on Ray: same store, same result.

    `backbone_state` / `preprocessing`: a fine-tuned model's backbone (as `get_encoder` takes
    them); they travel to the actors through the object store. `device`: where the actors run the
    encoder (`cuda` needs `options.gpus_per_worker`). `info`: the encoder's description when the
    caller already has it (`RayEmbedder.info`), else it is read on a worker."""
    import pandas as pd

    if isinstance(backbone, Encoder):
        raise TypeError("the Ray engine builds its encoders on the workers: pass the backbone name (and state)")
    options = options or RayOptions()
    t_start = time.perf_counter()
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame({"path": [str(p) for p in df]})
    elif "path" not in df.columns:
        raise ValueError("the manifest has no 'path' column")
    paths = [str(p) for p in df["path"]]
    n = len(paths)
    hashes = given_hashes(df)
    reasons: dict[int, str] = {}

    enc_kwargs = {"backbone_name": backbone, "backbone_state": backbone_state, "preprocessing": preprocessing,
                  "device": device}
    info = info or describe_encoder(partial(get_encoder, **enc_kwargs), options)
    store = EmbeddingStore(store_root, info["backbone_id"], dim=info["dim"], shard_size=shard_size, backbone=info["name"])
    stats = EmbedStats(backbone_id=info["backbone_id"], dim=info["dim"], rows=n)
    stats.shards_ignored = list(store.invalid)

    # 1. content hashes for rows that came without one, in Ray tasks
    todo = [i for i in range(n) if hashes[i] is None]
    for batch in map_paths([paths[i] for i in todo], hash_batch, options, ids=todo):
        for i, h, err in zip(batch["idx"], batch["sha256"], batch["error"]):
            if err:
                reasons[int(i)] = err
            else:
                hashes[int(i)] = h

    # 2. what the store lacks, one path per distinct image
    first_row = first_rows(hashes)
    missing = [h for h in first_row if h not in store]
    stats.unique, stats.reused = len(first_row), len(first_row) - len(missing)

    # 3. decode and embed on Ray; the vectors go to the store as they arrive
    bad: dict[str, str] = {}
    if missing:
        t0 = time.perf_counter()
        kwargs = {"encoder_kwargs": enc_kwargs}
        # Written every shard_size vectors and every flush_s seconds, and on the way out (Ctrl-C,
        # a failed run): a rerun starts from what this one finished.
        with store.autoflush(flush_s), _progress(progress, len(missing)) as bar:
            job = bar.add_task("embed", total=len(missing))
            for batch in run([paths[first_row[h]] for h in missing], info, EmbedWorker, kwargs, options):
                good = [j for j, e in enumerate(batch["error"]) if not e]
                for j, e in zip(batch["idx"], batch["error"]):
                    if e:
                        bad[missing[int(j)]] = e
                if good:
                    store.add([missing[int(batch["idx"][j])] for j in good], batch["vector"][good])
                bar.advance(job, len(batch["idx"]))
        stats.compute_seconds = time.perf_counter() - t0
        stats.computed = len(missing) - len(bad)
        for i, h in enumerate(hashes):  # an unreadable image fails every row that shares its content
            if h in bad:
                reasons[i] = bad[h]
    return collect_result(store, paths, hashes, reasons, stats, t_start, compact_over)


class RayEmbedder:
    """A backbone that embeds on Ray, in the shape `index_collection(embedder=...)` takes: its
    identity (`backbone_id`, `dim`, `name`, read once on a worker: the driver loads no model) and
    `embed_manifest(rows, store_root=, progress=)`, which is `ray_embed_manifest`.

        update = index_collection("museum/", embedder=RayEmbedder("clip-vit-b16", options=RayOptions(workers=8)))
    """

    def __init__(self, backbone: str, *, backbone_state=None, preprocessing=None, device: str = "cpu",
                 options: RayOptions | None = None):
        self.backbone = backbone
        self.options = options or RayOptions()
        self._kwargs = {"backbone_state": backbone_state, "preprocessing": preprocessing, "device": device}
        self.info = describe_encoder(partial(get_encoder, backbone_name=backbone, **self._kwargs), self.options)
        self.backbone_id, self.dim, self.name = self.info["backbone_id"], int(self.info["dim"]), self.info["name"]

    @classmethod
    def for_model(cls, model, *, device: str = "cpu", options: RayOptions | None = None) -> "RayEmbedder":
        """The encoder an ArtModel predicts with (`artlens.embed.model_encoder`'s), on Ray."""
        state = model.backbone_state() or None
        return cls(model.backbone_name, backbone_state=state, preprocessing=model.preprocessing if state else None,
                   device=device, options=options)

    def embed_manifest(self, df, *, store_root=None, progress: bool = False, flush_s: float | None = 30.0) -> EmbedResult:
        return ray_embed_manifest(df, self.backbone, store_root, options=self.options, progress=progress,
                                  flush_s=flush_s, info=self.info, **self._kwargs)

    def __repr__(self) -> str:
        return f"RayEmbedder({self.backbone_id!r}, dim={self.dim}, workers={self.options.workers})"
