"""artlens.data: datasets into manifests, and manifests into splits; nothing here runs a model.

- `images`: the one safe image decoder (`load_image`, `ImageDecodeError`, size limits, extensions).
- `walk`: every recursive folder listing (`walk_files`).
- `sources/`: dataset layout adapters (folder, CSVs, WikiArt, AI-ArtBench, ...) -> records.
- `columns`: the manifest's column contract; `manifest`: `scan`, `read_manifest`, `write_manifest`;
  `decode`: decoding and hashing in a crash-tolerant process pool; `duplicates`: exact and near
  duplicates; `summary`: counts for reports and ``--json``; `rows`: `read_rows`, the rows of a
  manifest, a folder or an image, for every command.
- `taxonomy` (+ `taxonomies/*.yaml`): label vocabularies and artist names.
- `splits`: grouped, stratified train/val/test splits; `artist_split`: the artist task's known /
  unknown artists and folds.
"""
