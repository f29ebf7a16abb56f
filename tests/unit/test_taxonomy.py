"""Label mappings shipped as YAML, and one artist naming scheme across sources."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from artlens.data.taxonomy import (
    TaxonomyError,
    apply_taxonomy,
    artist_aliases,
    artist_display_name,
    artist_slug,
    artist_styles_from_artgan,
    canonical_genre,
    canonical_style,
    fix_mojibake,
    list_taxonomies,
    load_taxonomy,
)

# ArtGAN's style_class.txt, in order (the class list the WikiArt CSVs index).
ARTGAN_STYLES = [
    "Abstract_Expressionism", "Action_painting", "Analytical_Cubism", "Art_Nouveau", "Baroque", "Color_Field_Painting",
    "Contemporary_Realism", "Cubism", "Early_Renaissance", "Expressionism", "Fauvism", "High_Renaissance", "Impressionism",
    "Mannerism_Late_Renaissance", "Minimalism", "Naive_Art_Primitivism", "New_Realism", "Northern_Renaissance", "Pointillism",
    "Pop_Art", "Post_Impressionism", "Realism", "Rococo", "Romanticism", "Symbolism", "Synthetic_Cubism", "Ukiyo_e",
]


@pytest.mark.parametrize(
    "raw,display",
    [
        ("claude-monet", "Claude Monet"),
        ("Claude_Monet", "Claude Monet"),  # ArtGAN artist class
        ("Monet, Claude", "Claude Monet"),  # ai-sd metadata
        ("Vincent_van_Gogh", "Vincent van Gogh"),
        ("vincent-van-gogh", "Vincent van Gogh"),
        ("Van Gogh, Vincent Willem", "Vincent van Gogh"),  # alias table
        ("Hokusai (Katsushika Hokusai)", "Katsushika Hokusai"),  # parenthesis dropped, then alias
        ("Bussière, Gaston", "Gaston Bussiere"),  # accents folded like WikiArt slugs
        ("eugã¨ne-grasset", "Eugene Grasset"),  # WikiArt's mojibake repaired
        ("Repin, Ilya/Ilja", "Ilya Repin"),
        ("Jones, (Android) Andrew", "Andrew Jones"),
        ("Pierre_Auguste_Renoir", "Pierre Auguste Renoir"),
        ("Renoir, Pierre-Auguste", "Pierre Auguste Renoir"),
        ("leonardo-da-vinci", "Leonardo da Vinci"),
        ("Rembrandt", "Rembrandt"),
    ],
)
def test_artist_names_agree_across_sources(raw, display):
    assert artist_display_name(raw) == display


@pytest.mark.parametrize("raw", [None, "", "   ", float("nan"), "()", "-_-"])
def test_missing_artists(raw):
    assert artist_display_name(raw) is None


def test_slug_scheme():
    assert artist_slug("Claude Monet") == "claude-monet"
    assert artist_slug("Albrecht Dürer") == "albrecht-durer"
    assert artist_slug("Hiroshige, Utagawa") == "hiroshige"


def test_alias_table_has_no_chains():
    aliases = artist_aliases()
    assert aliases and not set(aliases) & set(aliases.values())
    assert all(artist_slug(target) == target for target in aliases.values())


def test_fix_mojibake():
    assert fix_mojibake("EugÃ¨ne") == "Eugène"
    assert fix_mojibake("andrã©-lhote") == "andré-lhote"
    assert fix_mojibake("Dürer") == "Dürer"  # real accents untouched


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
@example("NONE")  # once became "None", which reads as missing
@example("nan-")
def test_display_names_are_fixed_points(raw):
    """A display name maps to itself: re-normalising a manifest never renames anyone."""
    name = artist_display_name(raw)
    if name is not None:
        assert artist_display_name(name) == name
        assert artist_slug(name) == artist_slug(raw)
        assert name.isascii()


def test_canonical_style_and_genre():
    assert canonical_style("Post-Impressionism") == "Post_Impressionism"
    assert canonical_style("Art Nouveau (Modern)") == "Art_Nouveau"
    assert canonical_style("Ukiyo-e") == "Ukiyo_e"
    assert canonical_style("Naive_Art_Primitivism") == "Naive_Art_Primitivism"
    assert canonical_genre("genre painting") == "genre_painting"
    assert canonical_style(None) is None


# ---------------------------------------------------------------------------------------------
# Taxonomies
# ---------------------------------------------------------------------------------------------


def test_shipped_taxonomies():
    assert list_taxonomies() == ["aiartbench-styles", "origin-style", "wikiart-movements"]


def test_wikiart_movements_cover_all_27_styles():
    tax = load_taxonomy("wikiart-movements")
    assert tax.labels == ["Cubism", "Impressionism", "Expressionism", "Realism", "Abstract"]
    mapped = {s for s in ARTGAN_STYLES if tax.map_value(s)}
    unmapped = set(ARTGAN_STYLES) - mapped
    # every style is either mapped or deliberately left out (plus the CSV paths' folder spelling)
    assert set(tax.unmapped) == unmapped | {"Art_Nouveau_Modern"}
    assert tax.map_value("Analytical_Cubism") == "Cubism"
    assert tax.map_value("Pointillism") == "Impressionism"
    assert tax.map_value("Fauvism") == "Expressionism"
    assert tax.map_value("New_Realism") == "Realism"
    assert tax.map_value("Color_Field_Painting") == "Abstract"
    assert tax.map_value("Baroque") is None


def test_aiartbench_styles():
    tax = load_taxonomy("aiartbench-styles")
    assert len(tax.labels) == 10
    assert tax.map_value("Ukiyo_e") == "ukiyo_e" and tax.map_value("ukiyo-e") == "ukiyo_e"
    assert tax.map_value("Northern_Renaissance") == "renaissance"
    assert tax.map_value("Art_Nouveau_Modern") == "art_nouveau"
    assert tax.map_value("Cubism") is None


def test_apply_map_and_joint():
    df = pd.DataFrame({"style": ["baroque", "Baroque", None, "Cubism"], "origin": ["ai", "human", "ai", None]})
    out = apply_taxonomy(df, "aiartbench-styles")
    assert out["aiartbench_style"].tolist()[:2] == ["baroque", "baroque"] and out["aiartbench_style"].isna().tolist()[2:] == [True, True]
    joint = apply_taxonomy(out, "origin-style", columns=("origin", "aiartbench_style"))
    assert joint["joint"].tolist()[:2] == ["AI_baroque", "baroque"]
    assert joint["joint"].isna().tolist()[2:] == [True, True]
    assert "joint" not in df.columns  # a copy, not in place


def test_unknown_and_custom_taxonomies(tmp_path):
    with pytest.raises(TaxonomyError, match="unknown taxonomy"):
        load_taxonomy("no-such-thing")
    custom = tmp_path / "mine.yaml"
    custom.write_text("name: mine\nkind: map\ncolumn: genre\ntarget: broad\ngroups:\n  nature: [landscape, marina]\n")
    out = apply_taxonomy(pd.DataFrame({"genre": ["landscape", "portrait"]}), custom)
    assert out["broad"].tolist()[0] == "nature" and pd.isna(out["broad"].iloc[1])
    clash = tmp_path / "clash.yaml"
    clash.write_text("kind: map\ngroups:\n  a: [x]\n  b: [X]\n")
    with pytest.raises(TaxonomyError, match="two groups"):
        load_taxonomy(clash)
    with pytest.raises(TaxonomyError, match="needs column"):
        apply_taxonomy(pd.DataFrame({"x": [1]}), "wikiart-movements")


def test_artist_styles_from_artgan(tmp_path):
    (tmp_path / "style_train.csv").write_bytes(
        b"Impressionism/claude-monet_a.jpg,12\r\nImpressionism/claude-monet_b.jpg,12\r\nRealism/claude-monet_c.jpg,21\r\n"
        b"Baroque/rembrandt_x.jpg,4\r\nRomanticism/ivan-aivazovsky_sea.jpg,23\r\nRealism/ivan-aivazovsky_ship.jpg,21\r\n"
    )
    (tmp_path / "style_val.csv").write_bytes(b"Baroque/rembrandt_y.jpg,4\r\n")
    styles = artist_styles_from_artgan(tmp_path)
    assert styles == {"Claude Monet": "Impressionism", "Rembrandt": "Baroque", "Ivan Aivazovsky": "Realism"}  # tie: first by name
    # with a class list the style is the row's class, not its folder
    (tmp_path / "style_class.txt").write_text("\n".join(f"{i} {s}" for i, s in enumerate(ARTGAN_STYLES)) + "\n")
    (tmp_path / "style_val.csv").write_bytes(b"Art_Nouveau_Modern/alphonse-mucha_spring.jpg,3\r\n")
    assert artist_styles_from_artgan(tmp_path)["Alphonse Mucha"] == "Art_Nouveau"
    with pytest.raises(FileNotFoundError):
        artist_styles_from_artgan(tmp_path / "empty")
