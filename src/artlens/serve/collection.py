"""A collection served as it is: `artlens serve --collection DIR`.

    backend, update = open_collection("museum/", ArtModel.load(default_model_dir()))
    app = create_app(index=backend, ...)

`open_collection` brings DIR's index (DIR/.artlens-index) up to date with
`artlens.retrieval.index_collection`, the function `artlens index DIR` runs: files added since the
last run are embedded, removed ones drop out, unchanged ones keep their vectors. The index is made
with the served model's encoder (a fine-tuned model's own weights included), so queries and rows
share one encoder and one copy of it in memory. Its rows' pictures are then shown by row id only
(`/v1/collection/{id}/thumb`): the id is an integer checked against the index's size, and the
file is the path the index stored for that row; nothing a client sends becomes a path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

THUMB_SIDE = 160  # long side of a collection thumbnail, in pixels
THUMB_CACHE = 1024  # thumbnails kept (about 5-10 KB each at 160 px)


def thumb_url(row: int) -> str:
    return f"/v1/collection/{int(row)}/thumb"


def open_collection(
    source: str | Path,
    model,
    *,
    progress: bool = False,
    workers: int = 2,
    batch_size: int = 32,
    store_root=None,
    encoder=None,
) -> tuple[Any, Any]:
    """`(FaissBackend, CollectionUpdate)` for the image folder `source`: its index created or
    updated in place for `model` (an `ArtModel`), the search mode the index had kept. `encoder`:
    the model's encoder when already made (default: `model_encoder(model)`)."""
    from artlens.embed import model_encoder
    from artlens.retrieval import default_index_dir, index_collection
    from artlens.serve.backends import FaissBackend

    source = Path(source)
    if not source.is_dir():
        raise ValueError(f"{source}: not a folder (--collection takes a folder of images)")
    encoder = encoder or model_encoder(model)
    finetuned = bool(model.backbone_state())
    out = default_index_dir(source)
    update = index_collection(
        source, out, backbone=model.backbone_name, encoder=encoder, finetuned=finetuned,
        default_mode=_kept_mode(out, model.backbone_name, encoder.dim, finetuned), store_root=store_root,
        batch_size=batch_size, workers=workers, progress=progress,
    )
    return FaissBackend(update.index, encoder, collection=source.absolute().name), update


def _kept_mode(index_dir: Path, backbone: str, dim: int, finetuned: bool) -> str | None:
    """The default search mode of the index already there (`artlens index DIR --by artist`), when
    this backbone still offers it; None (the retrieval default) otherwise."""
    from artlens.retrieval import FEATURES, default_spaces
    from artlens.retrieval.index import META_NAME

    try:
        mode = json.loads((index_dir / META_NAME).read_text(encoding="utf-8")).get("default_mode")
    except (OSError, ValueError, AttributeError):
        return None
    modes = [*default_spaces(backbone, dim, finetuned=finetuned), FEATURES]
    return mode if isinstance(mode, str) and mode in modes else None


def summary_line(update) -> str:
    """`collection: 812 images (+3 new, 809 kept, -1 removed), searched by style -> DIR`."""
    d = update.to_dict()
    state = "updated" if d["written"] else "up to date"
    return (f"collection index {state}: {d['count']} images (+{d['added']} new, {d['kept']} kept, "
            f"-{d['removed']} removed), searched by {d['default_mode']} -> {d['index']}")


def row_thumbnail(st, row: int, make: Callable[[Path, str], bytes], cache) -> bytes:
    """The thumbnail of index row `row` (`make(path, name)` encodes it), cached by row; `ApiError`
    404 when no index is loaded, the row is out of range, or the index stores no file for it."""
    from artlens.serve.guard import ApiError

    index = st.index
    if index is None or not hasattr(index, "path_of"):
        raise ApiError(404, "not_found", "no collection is loaded: start the server with --collection DIR")
    if not 0 <= row < len(index):
        raise ApiError(404, "not_found", f"no picture with id {row} (the collection has {len(index)})")
    path = index.path_of(row)
    if path is None:
        raise ApiError(404, "not_found", f"the index stores no file for id {row}")
    return cache.get_or_make(row, lambda: make(path, f"#{row}"))
