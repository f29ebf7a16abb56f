"""The dataset layer on the real data in ../shared/datasets.

Only `test_wikiart_styles_full_scan` decodes a whole folder (7,809 images, ~25 s on 2 cores);
the others read the layouts without decoding or scan a handful of files.
"""

from __future__ import annotations

import pandas as pd
import pytest

from artlens.data.manifest import scan
from artlens.data.sources import read_source
from artlens.data.taxonomy import artist_styles_from_artgan, load_taxonomy

pytestmark = pytest.mark.integration


def test_wikiart_styles_full_scan(shared_datasets):
    res = scan(shared_datasets / "wikiart-styles", name_pattern="wikiart", workers=2)
    m = res.manifest
    assert len(m) == 7809 and res.errors.empty
    assert m["style"].nunique() == 11
    assert m["artist"].notna().all() and m["artist"].nunique() == 626
    counts = m["artist"].value_counts()
    assert counts["Marc Chagall"] == 257 and counts["Utagawa Kuniyoshi"] == 248 and counts["Katsushika Hokusai"] == 202
    dup = res.duplicates
    assert dup["group"].nunique() >= 20
    conflicts = dup[dup["conflict"]]
    assert conflicts["group"].nunique() >= 10  # several works are filed under two styles
    assert conflicts.groupby("group")["style"].nunique().max() >= 2
    # a known case: one Picasso under Cubism and Naive_Art_Primitivism
    picasso = dup[dup["path"].str.endswith("pablo-picasso_man-and-woman-1958.jpg")]
    assert set(picasso["style"]) == {"Cubism", "Naive_Art_Primitivism"} and picasso["group"].nunique() == 1


def test_ai_sd_artists_labels(shared_datasets, tmp_path):
    root = shared_datasets / "ai-sd-artists"
    records, adapter = read_source(root)
    assert adapter.name == "ai_sd_artists" and len(records) == 2892
    assert (records["origin"] == "ai").all() and records["artist"].notna().all()
    assert records["generator"].str.startswith("stable-diffusion-1.5").all()
    # decode a few through a metadata file pointing at the real images
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False).iloc[::400]
    meta["file"] = [str(root / f) for f in meta["file"]]
    meta.to_csv(tmp_path / "metadata.csv", index=False)
    res = scan(tmp_path, workers=1, options={"artist_styles": str(shared_datasets / "artgan-labels")})
    assert len(res.manifest) == len(meta) and res.errors.empty
    assert (res.manifest["origin"] == "ai").all() and res.manifest["artist"].notna().all()
    assert set(res.manifest["generator"]) <= {"stable-diffusion-1.5/deliberate-2.0", "stable-diffusion-1.5/dreamshaper-3.2", "stable-diffusion-1.5"}


def test_artgan_artist_styles(shared_datasets):
    styles = artist_styles_from_artgan(shared_datasets / "artgan-labels")
    assert len(styles) > 1000
    assert styles["Claude Monet"] == "Impressionism" and styles["Rembrandt"] == "Baroque"
    assert styles["Katsushika Hokusai"] == "Ukiyo_e"
    # every ArtGAN style folds into a movement or is deliberately left out
    tax = load_taxonomy("wikiart-movements")
    for style in set(styles.values()):
        assert tax.map_value(style) or style in tax.unmapped


def test_wikiart_styles_with_artgan_csvs(shared_datasets):
    records, _ = read_source(
        shared_datasets / "wikiart-styles", "wikiart_csv", labels=str(shared_datasets / "artgan-labels")
    )
    assert len(records) == 7809
    assert records["genre"].notna().sum() > 1000  # genre labels joined by path
    assert set(records["split"].dropna()) == {"train", "val"}
    # ArtGAN's artist classes and the file-name slugs name the same people
    from artlens.data.taxonomy import artist_display_name

    labelled = records[records["artist"].notna()]
    assert len(labelled) > 50
    from_name = labelled["path"].map(lambda p: artist_display_name(p.rsplit("/", 1)[1].split("_", 1)[0]))
    assert (labelled["artist"].map(artist_display_name) == from_name).all()


def test_louvre_genre_levels(shared_datasets):
    records, adapter = read_source(shared_datasets / "louvre-genre", levels="{split}/{genre}")
    assert adapter.name == "folder" and len(records) == 1150
    assert set(records["genre"]) == {"genre_painting", "landscape", "still_life", "portrait"}
    assert set(records["split"]) == {"train", "val"}


FAMILIES = {"flux", "dalle", "sd1", "ldm", "dalle-mini", "sdxl", "glide", "disco", "sd2", "unknown"}


@pytest.mark.parametrize("folder, count", [("ai-generators", 5258), ("human-sketches", 185), ("human-photos", 1151)])
def test_metadata_csv_sets_full_scan(shared_datasets, folder, count):
    res = scan(shared_datasets / folder, workers=2)
    m = res.manifest
    assert res.layout == "metadata_csv" and len(m) == count and res.errors.empty
    assert m["path"].str.startswith(str(shared_datasets / folder)).all()
    if folder == "ai-generators":
        assert (m["origin"] == "ai").all() and set(m["family"]) == FAMILIES
        assert m["generator"].notna().all() and m["provenance"].notna().all()
        assert m["artist"].notna().sum() > 2000 and "Aaron Horkey" in set(m["artist"])
    else:
        assert (m["origin"] == "human").all() and m["kind"].notna().all() and "family" not in m.columns
        kinds = {"human-sketches": {"pencil sketch"}, "human-photos": {"photograph, landscape", "photograph, pedestrian"}}
        assert set(m["kind"]) == kinds[folder]


def test_ai_sd_artists_family_matches_ai_generators(shared_datasets):
    records, adapter = read_source(shared_datasets / "ai-sd-artists")
    assert adapter.name == "ai_sd_artists" and (records["family"] == "sd1").all()
