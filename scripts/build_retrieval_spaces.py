#!/usr/bin/env python
"""Fit the shipped retrieval spaces (src/artlens/default/retrieval.safetensors) from ../shared's WikiArt.

    .venv/bin/python scripts/build_retrieval_spaces.py [--out src/artlens/default/retrieval.safetensors]

`style`: CLIP beside an LDA of the clip-vit-b16 features over the 11 styles; `artist`: the same over
the artists with `ARTIST_MIN_WORKS` or more paintings (from the file names). The recipe (PCA
dimension, shrinkage, weight) is `artlens.retrieval.spaces`' defaults, chosen by
benchmarks/retrieval_quality.py on artist-grouped folds. The shipped example paintings are left
out (by content hash), as for the default model. The projection matrices are stored as float16
(read back as float32). Deterministic: the same data gives the same bytes.
The default model (model.safetensors, config.json) is not touched.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "wikiart-styles")
    ap.add_argument("--out", type=Path, default=REPO / "src/artlens/default/retrieval.safetensors")
    args = ap.parse_args(argv)

    from artlens import examples_dir
    from artlens.data.taxonomy import wikiart_name_fields
    from artlens.embed import embed_manifest, get_encoder
    from artlens.paths import atomic_write_bytes
    from artlens.retrieval import read_rows
    from artlens.retrieval.spaces import ARTIST_MIN_WORKS, fit_label_space, spaces_bytes

    rows = read_rows(args.root).sort_values("path").reset_index(drop=True)
    examples = {hashlib.sha256(p.read_bytes()).hexdigest() for p in examples_dir().glob("*.jpg")}
    rows = rows[~rows["sha256"].isin(examples)].reset_index(drop=True)
    rows["artist"] = wikiart_name_fields(rows["path"], "artist")
    encoder = get_encoder("clip-vit-b16")
    vectors, ok = embed_manifest(rows, encoder, progress=sys.stderr.isatty())[:2]
    rows, x = rows[ok].reset_index(drop=True), vectors[ok]
    print(f"{len(rows)} paintings, {rows['style'].nunique()} styles, {rows['artist'].nunique()} artists", file=sys.stderr)
    spaces = {
        "style": fit_label_space("style", x, rows["style"].to_numpy(), backbone="clip-vit-b16"),
        "artist": fit_label_space("artist", x, rows["artist"].to_numpy(), backbone="clip-vit-b16", min_per_class=ARTIST_MIN_WORKS),
    }
    for s in spaces.values():
        s.info["data"] = "wikiart-styles (../shared), example paintings left out"
    # float16 projections: half the bytes (under the repository's 2 MB limit), the same neighbours
    data = spaces_bytes(spaces, matrix_dtype="float16", backbone="clip-vit-b16", backbone_id=encoder.backbone_id,
                        paintings=len(rows))
    atomic_write_bytes(args.out, data)
    print(f"wrote {args.out} ({len(data) / 1e6:.1f} MB): " + ", ".join(f"{k} {v.dim}-d" for k, v in spaces.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
