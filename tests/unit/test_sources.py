"""Every source adapter on a small replica of its published layout (generated images)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from artlens.data.manifest import scan
from artlens.data.sources import (
    SourceError,
    compile_name_pattern,
    detect_source,
    get_source,
    labels_from_names,
    list_sources,
    read_source,
)
from artlens.data.sources.folder import parse_levels
from tests.conftest import make_image


def by_name(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index(df["path"].map(os.path.basename))


def test_registry_lists_every_layout():
    assert set(list_sources()) >= {
        "folder", "aiartbench", "wikiart_csv", "best_artworks", "painting91", "painter_by_numbers", "csv", "ai_sd_artists",
        "metadata_csv",
    }
    with pytest.raises(SourceError, match="unknown layout"):
        get_source("nope")
    assert get_source("wikiart-csv").name == "wikiart_csv"  # hyphens accepted


def test_unknown_option_is_refused(tmp_path):
    make_image(tmp_path / "A" / "x.jpg")
    with pytest.raises(SourceError, match="no option"):
        read_source(tmp_path, "folder", colour="blue")


def test_missing_root(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        detect_source(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# folder
# ---------------------------------------------------------------------------------------------


def test_folder_single_level(tmp_path):
    make_image(tmp_path / "Baroque" / "a.jpg")
    make_image(tmp_path / "Cubism" / "deeper" / "b.jpg", seed=1)
    make_image(tmp_path / "loose.jpg", seed=2)
    (tmp_path / "Baroque" / "README.txt").write_text("not an image")
    (tmp_path / "Baroque" / ".hidden.jpg").write_bytes(b"")
    frame, adapter = read_source(tmp_path)
    assert adapter.name == "folder"
    df = by_name(frame)
    assert sorted(df.index) == ["a.jpg", "b.jpg", "loose.jpg"]
    assert df.loc["a.jpg", "style"] == "Baroque" and df.loc["b.jpg", "style"] == "Cubism"
    assert pd.isna(df.loc["loose.jpg", "style"])


def test_folder_split_levels_detected_and_named(tmp_path):
    make_image(tmp_path / "train" / "portrait" / "a.jpg")
    make_image(tmp_path / "validation" / "landscape" / "b.jpg", seed=1)
    df = by_name(read_source(tmp_path)[0])
    assert df.loc["b.jpg", "split"] == "val" and df.loc["b.jpg", "style"] == "landscape"
    df = by_name(read_source(tmp_path, "folder", levels="{split}/{genre}")[0])
    assert df.loc["a.jpg", "genre"] == "portrait" and "style" not in df.columns
    df = by_name(read_source(tmp_path, "folder", levels="{}/{genre}")[0])
    assert "split" not in df.columns and df.loc["a.jpg", "genre"] == "portrait"


def test_folder_nested_labels(tmp_path):
    make_image(tmp_path / "Impressionism" / "claude-monet" / "a.jpg")
    df = by_name(read_source(tmp_path, "folder", levels="{style}/{artist}")[0])
    assert (df.loc["a.jpg", "style"], df.loc["a.jpg", "artist"]) == ("Impressionism", "claude-monet")
    res = scan(tmp_path, "folder", workers=1, options={"levels": "{style}/{artist}"})
    assert res.manifest["artist"].tolist() == ["Claude Monet"]  # the scan names people consistently


def test_folder_single_label_name(tmp_path):
    make_image(tmp_path / "still_life" / "a.jpg")
    df = read_source(tmp_path, "folder", label="genre")[0]
    assert df["genre"].tolist() == ["still_life"]


@pytest.mark.parametrize("bad", ["{split}/{split}", "{a b}", "a/{"])
def test_bad_levels(bad):
    with pytest.raises(SourceError):
        parse_levels(bad)


# ---------------------------------------------------------------------------------------------
# AI-ArtBench
# ---------------------------------------------------------------------------------------------


def test_aiartbench(tmp_path):
    root = tmp_path / "Real_AI_SD_LD_Dataset"
    make_image(root / "train" / "baroque" / "a.jpg")
    make_image(root / "train" / "AI_LD_baroque" / "b.jpg", seed=1)
    make_image(root / "test" / "AI_SD_ukiyo_e" / "c.jpg", seed=2)
    make_image(root / "test" / "ukiyo_e" / "d.jpg", seed=3)
    frame, adapter = read_source(root)
    assert adapter.name == "aiartbench"
    df = by_name(frame)
    assert df.loc["a.jpg", ["style", "origin", "split"]].tolist() == ["baroque", "human", "train"]
    assert pd.isna(df.loc["a.jpg", "generator"])
    assert df.loc["b.jpg", ["style", "origin", "generator"]].tolist() == ["baroque", "ai", "latent-diffusion"]
    assert df.loc["c.jpg", ["style", "generator", "split"]].tolist() == ["ukiyo_e", "stable-diffusion", "test"]
    # joint labels the AI-ArtBench way
    m = scan(root, workers=1, taxonomies=["origin-style"]).manifest
    assert sorted(m["joint"]) == ["AI_baroque", "AI_ukiyo_e", "baroque", "ukiyo_e"]


def test_aiartbench_without_split_level(tmp_path):
    make_image(tmp_path / "AI_SD_realism" / "a.jpg")
    make_image(tmp_path / "realism" / "b.jpg", seed=1)
    assert detect_source(tmp_path).name == "aiartbench"
    df = by_name(read_source(tmp_path)[0])
    assert df["split"].isna().all() and df.loc["a.jpg", "origin"] == "ai"


# ---------------------------------------------------------------------------------------------
# WikiArt + ArtGAN CSVs
# ---------------------------------------------------------------------------------------------


def make_artgan_replica(root, labels):
    """WikiArt images and ArtGAN label files with their real quirks (CRLF, header, double comma)."""
    files = {
        "Impressionism/claude-monet_water-lilies-1916.jpg": 0,
        "Impressionism/edgar-degas_dancers.jpg": 1,
        "Realism/vincent-van-gogh_pine-trees-1884.jpg": 2,
        "Baroque/rembrandt_night-watch.jpg": 3,  # in no CSV
    }
    for i, rel in enumerate(files):
        make_image(root / rel, seed=i)
    labels.mkdir(parents=True, exist_ok=True)
    (labels / "style_class.txt").write_text("0 Abstract_Expressionism\n1 Impressionism\n2 Realism\n")
    (labels / "genre_class").write_text("0 landscape\n1 genre_painting\n")
    (labels / "artist_class").write_text("0 Claude_Monet\n1 Vincent_van_Gogh\n")
    (labels / "style_train.csv").write_bytes(
        b"Impressionism/claude-monet_water-lilies-1916.jpg,1\r\nRealism/vincent-van-gogh_pine-trees-1884.jpg,2\r\n"
        b"Realism/somebody_missing-on-disk.jpg,2\r\n"
    )
    (labels / "style_val.csv").write_bytes(b"Impressionism/edgar-degas_dancers.jpg,1\r\n")
    (labels / "genre_train.csv").write_bytes(b"Impressionism/claude-monet_water-lilies-1916.jpg,0\r\n")
    (labels / "genre_val.csv").write_bytes(b"Impressionism/edgar-degas_dancers.jpg,1\r\n")
    (labels / "artist_train").write_text("(Path to image),, (Groundtruth class) \n\nRealism/vincent-van-gogh_pine-trees-1884.jpg,,1\n")
    (labels / "artist_val").write_text("(Path to image),, (Groundtruth class)\n\nImpressionism/claude-monet_water-lilies-1916.jpg,,0\n")


def test_wikiart_csv_joins_the_three_tasks(tmp_path):
    root, labels = tmp_path / "wikiart", tmp_path / "labels"
    make_artgan_replica(root, labels)
    res = scan(root, "wikiart_csv", workers=1, options={"labels": str(labels)})
    df = by_name(res.manifest)
    monet = df.loc["claude-monet_water-lilies-1916.jpg"]
    assert (monet["style"], monet["genre"], monet["artist"], monet["split"]) == ("Impressionism", "landscape", "Claude Monet", "train")
    degas = df.loc["edgar-degas_dancers.jpg"]
    assert (degas["genre"], degas["split"], degas["artist"]) == ("genre_painting", "val", "Edgar Degas")  # artist from the file name
    gogh = df.loc["vincent-van-gogh_pine-trees-1884.jpg"]
    assert gogh["artist"] == "Vincent van Gogh"  # ArtGAN's Vincent_van_Gogh and the slug agree
    night = df.loc["rembrandt_night-watch.jpg"]
    assert night["style"] == "Baroque" and pd.isna(night["split"])  # folder style when no CSV lists it
    assert any("not under" in n for n in res.notes)
    assert res.errors.empty


def test_wikiart_csv_detected_when_csvs_sit_in_the_root(tmp_path):
    make_artgan_replica(tmp_path, tmp_path)
    assert detect_source(tmp_path).name == "wikiart_csv"
    df = by_name(read_source(tmp_path, split_from="genre")[0])
    assert df.loc["claude-monet_water-lilies-1916.jpg", "split"] == "train"


def test_wikiart_csv_needs_labels(tmp_path):
    make_image(tmp_path / "Baroque" / "a.jpg")
    with pytest.raises(SourceError, match="no ArtGAN CSVs"):
        read_source(tmp_path, "wikiart_csv")


# ---------------------------------------------------------------------------------------------
# Best Artworks of All Time
# ---------------------------------------------------------------------------------------------


def test_best_artworks(tmp_path):
    (tmp_path / "artists.csv").write_text(
        "id,name,years,genre,nationality,bio,wikipedia,paintings\n"
        '0,Vincent van Gogh,1853 - 1890,Post-Impressionism,Dutch,"Bio, with comma",http://x,877\n'
        "1,Albrecht Dürer,1471 - 1528,\"Northern Renaissance,Early Renaissance\",German,bio,http://y,328\n",
        encoding="utf-8",
    )
    make_image(tmp_path / "images" / "images" / "Vincent_van_Gogh" / "Vincent_van_Gogh_1.jpg")
    make_image(tmp_path / "images" / "images" / "Albrecht_Dürer" / "Albrecht_Dürer_1.jpg", seed=1)
    make_image(tmp_path / "resized" / "resized" / "Vincent_van_Gogh_1.jpg", seed=5)  # not read: images/ exists
    frame, adapter = read_source(tmp_path)
    assert adapter.name == "best_artworks" and len(frame) == 2
    m = by_name(scan(tmp_path, workers=1).manifest)
    gogh = m.loc["Vincent_van_Gogh_1.jpg"]
    assert (gogh["artist"], gogh["style"], gogh["nationality"]) == ("Vincent van Gogh", "Post_Impressionism", "Dutch")
    durer = m.loc["Albrecht_Dürer_1.jpg"]
    assert durer["artist"] == "Albrecht Durer" and pd.isna(durer["style"])
    assert durer["movements"] == "Northern_Renaissance,Early_Renaissance"


def test_best_artworks_flat_resized(tmp_path):
    (tmp_path / "artists.csv").write_text("id,name,years,genre,nationality,bio,wikipedia,paintings\n0,Edgar Degas,x,Impressionism,French,b,w,1\n")
    make_image(tmp_path / "resized" / "Edgar_Degas_12.jpg")
    df = read_source(tmp_path)[0]
    assert df["artist"].tolist() == ["Edgar Degas"] and df["style"].tolist() == ["Impressionism"]


# ---------------------------------------------------------------------------------------------
# Painting-91
# ---------------------------------------------------------------------------------------------


def test_painting91_mat_files(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "Paintings91"
    names = ["REMBRANDT_1.jpg", "REMBRANDT_2.jpg", "PABLO_PICASSO_1.jpg", "PABLO_PICASSO_2.JPG"]
    for i, n in enumerate(names):
        make_image(base / "Images" / n, seed=i)
    cells = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cells[i, 0] = np.array([n])
    onehot = np.zeros((4, 91))
    onehot[[0, 1], 5] = 1
    onehot[[2, 3], 60] = 1
    (base / "Labels").mkdir()
    savemat(base / "Labels" / "image_names.mat", {"image_names": cells})
    savemat(base / "Labels" / "labels.mat", {"labels": onehot})
    savemat(base / "Labels" / "trainset.mat", {"trainset": np.array([[1], [0], [1], [0]], dtype=bool)})
    savemat(base / "Labels" / "testset.mat", {"testset": np.array([[0], [1], [0], [1]], dtype=bool)})
    style_cells = np.empty((2, 1), dtype=object)
    style_cells[0, 0], style_cells[1, 0] = np.array(["REMBRANDT_1.jpg"]), np.array(["PABLO_PICASSO_1.jpg"])
    style_onehot = np.zeros((2, 13))
    style_onehot[0, 1] = 1  # Baroque
    style_onehot[1, 3] = 1  # Cubism
    (base / "Labels_Style").mkdir()
    savemat(base / "Labels_Style" / "image_names_style.mat", {"image_names_style": style_cells})
    savemat(base / "Labels_Style" / "labels_style.mat", {"labels_style": style_onehot})
    frame, adapter = read_source(tmp_path)  # the folder holding Paintings91/
    assert adapter.name == "painting91"
    m = by_name(scan(tmp_path, workers=1).manifest)
    assert m.loc["REMBRANDT_1.jpg", ["artist", "style", "split"]].tolist() == ["Rembrandt", "Baroque", "train"]
    assert m.loc["PABLO_PICASSO_2.JPG", ["artist", "split"]].tolist() == ["Pablo Picasso", "test"]
    assert pd.isna(m.loc["PABLO_PICASSO_2.JPG", "style"])
    assert m.loc["PABLO_PICASSO_1.jpg", "style"] == "Cubism"


def test_painting91_text_lists(tmp_path):
    make_image(tmp_path / "Images" / "CLAUDE_MONET_3.jpg")
    (tmp_path / "Labels").mkdir()
    (tmp_path / "Labels" / "image_names.txt").write_text("CLAUDE_MONET_3.jpg\n")
    (tmp_path / "Labels" / "labels.txt").write_text("7\n")
    df = read_source(tmp_path)[0]
    assert df["artist"].tolist() == ["CLAUDE_MONET"] and df["split"].isna().all()


# ---------------------------------------------------------------------------------------------
# Painter by Numbers
# ---------------------------------------------------------------------------------------------


def test_painter_by_numbers(tmp_path):
    (tmp_path / "all_data_info.csv").write_text(
        "artist,date,genre,pixelsx,pixelsy,size_bytes,source,style,title,artist_group,in_train,new_filename\n"
        "Barnett Newman,1955.0,abstract,15530,6911,9201912,wikiart,Color Field Painting,Uriel,train_only,True,102257.jpg\n"
        "Hiroshige,1833,genre painting,1000,800,1,wikiart,Ukiyo-e,Station,train_and_test,False,75232.jpg\n"
        "Nobody,,portrait,1,1,1,wikiart,Realism,Gone,train_only,True,99999.jpg\n"
    )
    make_image(tmp_path / "train" / "102257.jpg")
    make_image(tmp_path / "test" / "75232.jpg", seed=1)
    frame, adapter = read_source(tmp_path)
    assert adapter.name == "painter_by_numbers"
    df = by_name(frame)
    assert df.loc["102257.jpg", ["artist", "style", "genre", "split"]].tolist() == ["Barnett Newman", "Color_Field_Painting", "abstract", "train"]
    assert df.loc["75232.jpg", ["style", "genre", "split", "title"]].tolist() == ["Ukiyo_e", "genre_painting", "test", "Station"]
    assert "99999.jpg" not in df.index and "not under" in frame.attrs["notes"][0]


# ---------------------------------------------------------------------------------------------
# Plain CSV
# ---------------------------------------------------------------------------------------------


def test_plain_csv(tmp_path):
    make_image(tmp_path / "imgs" / "a.jpg")
    make_image(tmp_path / "b.png", seed=1)
    (tmp_path / "list.csv").write_text(
        "path,style,origin,museum,split\nimgs/a.jpg,Baroque,human,Louvre,training\n"
        f"{tmp_path / 'b.png'},,AI,,test\nimgs/missing.jpg,Cubism,human,,\n"
    )
    frame, adapter = read_source(tmp_path / "list.csv")
    assert adapter.name == "csv"
    res = scan(tmp_path / "list.csv", workers=1)
    m = by_name(res.manifest)
    assert m.loc["a.jpg", ["style", "origin", "museum", "split"]].tolist() == ["Baroque", "human", "Louvre", "train"]
    assert m.loc["b.png", "origin"] == "ai" and pd.isna(m.loc["b.png", "style"])
    assert res.errors["reason"].tolist() == ["file not found"]


def test_plain_csv_custom_path_column(tmp_path):
    make_image(tmp_path / "x.jpg")
    (tmp_path / "t.csv").write_text("image_file,artist\nx.jpg,\"Monet, Claude\"\n")
    with pytest.raises(SourceError, match="no path column"):
        read_source(tmp_path / "t.csv")
    m = scan(tmp_path / "t.csv", workers=1, options={"path_column": "image_file"}).manifest
    assert m["artist"].tolist() == ["Claude Monet"]


# ---------------------------------------------------------------------------------------------
# ai-sd-artists
# ---------------------------------------------------------------------------------------------


def test_ai_sd_artists(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "file,artist,born,died,tags,checkpoint,prompt,tile\n"
        'images/Aaron-Jasinski_0.jpg,"Jasinski, Aaron",,,"Illustration, Children\\\'s Book",DreamShaper 3.2,style of Aaron Jasinski,0\n'
        'images/Claude-Monet_1.jpg,"Monet, Claude",1840,1926,"Painting, Oil",Deliberate 2.0,style of Claude Monet,1\n'
        "images/Hokusai_2.jpg,Hokusai (Katsushika Hokusai),1760,1849,Ukiyo-e,,style of Hokusai,2\n"
    )
    for i, n in enumerate(["Aaron-Jasinski_0.jpg", "Claude-Monet_1.jpg", "Hokusai_2.jpg"]):
        make_image(tmp_path / "images" / n, seed=i)
    labels = tmp_path / "artgan"
    labels.mkdir()
    (labels / "style_train.csv").write_text("Impressionism/claude-monet_a.jpg,0\nImpressionism/claude-monet_b.jpg,0\nRealism/claude-monet_c.jpg,1\nUkiyo_e/katsushika-hokusai_wave.jpg,2\n")
    assert detect_source(tmp_path).name == "ai_sd_artists"
    res = scan(tmp_path, workers=1, options={"artist_styles": str(labels)})
    m = by_name(res.manifest)
    assert (m["origin"] == "ai").all() and m["artist"].notna().all()
    assert m.loc["Aaron-Jasinski_0.jpg", ["artist", "generator"]].tolist() == ["Aaron Jasinski", "stable-diffusion-1.5/dreamshaper-3.2"]
    assert m.loc["Claude-Monet_1.jpg", ["artist", "style", "generator"]].tolist() == ["Claude Monet", "Impressionism", "stable-diffusion-1.5/deliberate-2.0"]
    assert m.loc["Hokusai_2.jpg", ["artist", "style", "generator"]].tolist() == ["Katsushika Hokusai", "Ukiyo_e", "stable-diffusion-1.5"]
    assert pd.isna(m.loc["Aaron-Jasinski_0.jpg", "style"])
    assert m.loc["Aaron-Jasinski_0.jpg", "tags"] == "Illustration, Children's Book"
    assert (m["family"] == "sd1").all()  # the family name ai-generators uses for SD 1.x


def test_ai_sd_artists_base_family():
    from artlens.data.sources.ai_sd_artists import base_family

    assert base_family("stable-diffusion-1.5") == base_family("SD 1.4") == "sd1"
    assert base_family("stable-diffusion-2.1") == "sd2"
    assert base_family("stable-diffusion-xl-base-1.0") == base_family("sdxl") == "sdxl"
    assert base_family("flux1-dev") is None


# ---------------------------------------------------------------------------------------------
# metadata.csv with file + origin (ai-generators, human-sketches, human-photos)
# ---------------------------------------------------------------------------------------------


def make_metadata_set(root, header, rows, images=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    for i, rel in enumerate(images if images is not None else [r.split(",", 1)[0] for r in rows]):
        make_image(root / rel, seed=i)
    return root


def test_metadata_csv_ai_generators(tmp_path):
    root = make_metadata_set(tmp_path / "gens", "file,origin,generator,family,artist,prompt,source", [
        "images/flux1-dev/aaron-horkey_0.jpg,ai,flux1-dev,flux,Aaron Horkey,style of Aaron Horkey,andygock/FLUX-Style-CheatSheet",
        'images/flux1-dev/monet_0.jpg,ai,flux1-dev,flux,"Monet, Claude",style of Claude Monet,andygock/FLUX-Style-CheatSheet',
        'images/dalle-2/cat.jpg,ai,dalle-2,dalle,,"a cat, oil painting",eudoxia0/eudoxia0.github.io',
    ])
    frame, adapter = read_source(root)
    assert adapter.name == "metadata_csv"
    assert frame["path"].map(os.path.isabs).all() and frame["path"].map(os.path.isfile).all()
    res = scan(root, workers=1)
    assert res.errors.empty and res.layout == "metadata_csv"
    m = by_name(res.manifest)
    assert (m["origin"] == "ai").all() and (m["source"] == "metadata_csv").all()
    assert m.loc["aaron-horkey_0.jpg", ["generator", "family", "artist", "prompt", "provenance"]].tolist() == [
        "flux1-dev", "flux", "Aaron Horkey", "style of Aaron Horkey", "andygock/FLUX-Style-CheatSheet"]
    assert m.loc["monet_0.jpg", "artist"] == "Claude Monet"  # the common display-name scheme
    assert pd.isna(m.loc["cat.jpg", "artist"]) and m.loc["cat.jpg", "prompt"] == "a cat, oil painting"
    assert res.summary()["labels"]["family"] == {"flux": {"none": 2, "total": 2}, "dalle": {"none": 1, "total": 1}}


def test_metadata_csv_human_kinds_with_duplicates(tmp_path):
    # two identical photos: the duplicates table must not trip over the manifest's `kind` column
    root = make_metadata_set(tmp_path / "photos", "file,origin,kind,source", [
        "images/a.jpg,human,pencil sketch,PKU",
        'images/b.jpg,Real,"photograph, landscape",CycleGAN',
        'images/c.jpg,human,"photograph, landscape",CycleGAN',
    ], images=["images/a.jpg", "images/b.jpg"])
    make_image(root / "images" / "c.jpg", seed=1)  # same pixels as b.jpg
    res = scan(root, workers=1)
    m = by_name(res.manifest)
    assert (m["origin"] == "human").all()
    assert m.loc["a.jpg", "kind"] == "pencil sketch" and m.loc["b.jpg", "kind"] == "photograph, landscape"
    assert "family" not in m.columns and m.loc["b.jpg", "provenance"] == "CycleGAN"
    assert set(res.duplicates["path"].map(os.path.basename)) == {"b.jpg", "c.jpg"}
    assert res.duplicates["kind"].tolist() == ["exact", "exact"]


def test_metadata_csv_bad_origin_and_missing_file(tmp_path):
    root = make_metadata_set(tmp_path / "set", "file,origin,kind", [
        "images/ok.jpg,human,photograph",
        "images/robot.jpg,robot,photograph",
        "images/blank.jpg,,photograph",
        "images/gone.jpg,ai,",
    ], images=["images/ok.jpg", "images/robot.jpg", "images/blank.jpg"])
    res = scan(root, workers=1)  # no exception: bad rows are reported, the rest is read
    assert list(res.manifest["path"].map(os.path.basename)) == ["ok.jpg"]
    reasons = dict(zip(res.errors["path"].map(os.path.basename), res.errors["reason"]))
    assert reasons["robot.jpg"] == "metadata.csv line 3: origin 'robot' is not human or ai (row left out)"
    assert reasons["blank.jpg"] == "metadata.csv line 4: origin empty is not human or ai (row left out)"
    assert reasons["gone.jpg"] == "file not found"  # as for the other metadata readers
    assert len(reasons) == 3


def test_metadata_csv_notes_unlisted_images(tmp_path):
    root = make_metadata_set(tmp_path / "set", "file,origin", ["a.jpg,ai"])
    make_image(root / "extra" / "b.jpg", seed=5)
    frame, _ = read_source(root)
    assert len(frame) == 1 and "1 images under" in frame.attrs["notes"][0]


def test_metadata_csv_does_not_take_other_metadata_folders(tmp_path):
    # ai-sd-artists' metadata.csv has no origin column: its own reader keeps it
    sd = make_metadata_set(tmp_path / "sd", "file,artist,checkpoint", ["images/x.jpg,\"Monet, Claude\",Deliberate 2.0"])
    assert detect_source(sd).name == "ai_sd_artists"
    # a metadata.csv with neither reader's columns: the generic folder layout
    other = make_metadata_set(tmp_path / "other", "file,label", ["A/x.jpg,a"])
    assert detect_source(other).name == "folder"
    # the metadata_csv layout asked for on a folder without an origin column
    with pytest.raises(SourceError, match="origin"):
        read_source(other, "metadata_csv")


# ---------------------------------------------------------------------------------------------
# File-name patterns
# ---------------------------------------------------------------------------------------------


def test_name_patterns():
    pat = compile_name_pattern("wikiart")
    assert pat.fields == ("artist", "title")
    assert pat.parse("claude-monet_water-lilies_1916.jpg") == {"artist": "claude-monet", "title": "water-lilies_1916"}
    assert pat.parse("nounderscore.jpg") is None
    custom = compile_name_pattern("{year}-{}-{artist}")
    assert custom.parse("1889-x-vincent.png") == {"year": "1889", "artist": "vincent"}
    with pytest.raises(SourceError, match="no {field}"):
        compile_name_pattern("plain")
    with pytest.raises(SourceError, match="twice"):
        compile_name_pattern("{a}_{a}")
    df = labels_from_names(["/d/claude-monet_x.jpg", "/d/odd.jpg"], "wikiart")
    assert df["artist"].tolist()[0] == "claude-monet" and pd.isna(df["artist"].iloc[1])
