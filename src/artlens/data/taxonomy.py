"""Label vocabularies: YAML label mappings shipped in the package, and one naming scheme for artists.

Taxonomies (``taxonomies/*.yaml``) come in two kinds:

- ``map``: a source column's labels grouped into a coarser target column (WikiArt's 27 styles
  -> 5 movements; WikiArt styles -> AI-ArtBench's 10 classes). Matching ignores case and
  punctuation; labels in no group become null.
- ``joint``: two columns combined into one label, e.g. origin x style -> ``AI_baroque``.

Artists: every source names people differently (``claude-monet`` in WikiArt file names,
``Claude_Monet`` in ArtGAN class lists, ``Monet, Claude`` in the ai-sd metadata). All of them go
through :func:`artist_slug` (ASCII, lower-case, hyphens: WikiArt's scheme, plus an alias table)
and the manifest's ``artist`` column holds :func:`artist_display_name` of that slug
(``Claude Monet``), so one person has one label across sources.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported lazily: the CLI's --help must stay fast
    import pandas as pd

_PACKAGE_DIR = "taxonomies"


class TaxonomyError(ValueError):
    """A taxonomy that cannot be found or does not make sense."""


# --------------------------------------------------------------------------------------------
# Artist names
# --------------------------------------------------------------------------------------------

# Lower-case in display names unless first ("Vincent van Gogh", "Leonardo da Vinci").
_PARTICLES = {"van", "von", "de", "der", "den", "da", "di", "del", "della", "du", "des", "la", "le", "ten", "ter", "zu", "dos", "das", "y"}
# Letters NFKD does not decompose into ASCII.
_FOLD = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss", "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "TH", "ð": "d", "ı": "i"})


def _continuation_chars() -> dict[str, int]:
    # UTF-8 continuation bytes as they look after a wrong latin-1 / cp1252 decode.
    out: dict[str, int] = {}
    for b in range(0x80, 0xC0):
        out[chr(b)] = b
        try:
            out[bytes([b]).decode("cp1252")] = b
        except UnicodeDecodeError:
            pass
    return out


_CONT = _continuation_chars()
_MOJIBAKE = re.compile("([\u00c2-\u00df\u00e2-\u00fe])([" + re.escape("".join(_CONT)) + "])")


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 read as latin-1/cp1252, also after lower-casing (WikiArt's ``eugã¨ne-grasset``)."""

    def repl(m: re.Match) -> str:
        lead = ord(m.group(1))
        if lead >= 0xE0:  # lower-cased lead byte: Ã (0xC3) became ã (0xE3)
            lead -= 0x20
        try:
            return bytes([lead, _CONT[m.group(2)]]).decode("utf-8")
        except (UnicodeDecodeError, ValueError):
            return m.group(0)

    return _MOJIBAKE.sub(repl, text)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan", "None", "<NA>")


@functools.lru_cache(maxsize=1)
def artist_aliases() -> dict[str, str]:
    """Slug -> canonical (WikiArt) slug, from ``taxonomies/artist-aliases.yaml``."""
    data = _read_yaml_resource("artist-aliases.yaml")
    aliases = {str(k): str(v) for k, v in (data.get("aliases") or {}).items()}
    chained = sorted(set(aliases) & set(aliases.values()))
    if chained:
        raise TaxonomyError(f"artist-aliases.yaml: targets that are themselves aliases: {chained}")
    return aliases


@functools.lru_cache(maxsize=65536)
def artist_slug(raw: Any) -> str | None:
    """One slug per person: ``Monet, Claude`` / ``Claude_Monet`` / ``claude-monet`` -> ``claude-monet``.

    Rules: mojibake repaired; parenthesised alternatives dropped (``Hokusai (Katsushika Hokusai)``);
    ``a/b`` alternatives keep the first; ``Last, First`` turned round; accents folded to ASCII;
    non-alphanumerics become hyphens; then the alias table maps known variants to WikiArt's slug.
    """
    if _is_missing(raw):
        return None
    text = fix_mojibake(str(raw).strip())
    without = re.sub(r"\([^)]*\)", " ", text)
    text = without if re.search(r"\w", without) else text.replace("(", " ").replace(")", " ")
    text = re.sub(r"(\w+)(?:/\w+)+", r"\1", text)
    if text.count(",") == 1:
        last, first = text.split(",")
        text = f"{first} {last}"
    text = unicodedata.normalize("NFKD", text.translate(_FOLD))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug or slug in ("nan", "none", "na"):  # missing-value markers in any case (`NONE`, `NaN`)
        return None
    return artist_aliases().get(slug, slug)


def display_name_from_slug(slug: str) -> str:
    words = [w for w in slug.split("-") if w]
    return " ".join(
        w if (i > 0 and w in _PARTICLES) else w[:1].upper() + w[1:] for i, w in enumerate(words)
    )


def artist_display_name(raw: Any) -> str | None:
    """The manifest's artist label: ``claude-monet`` -> ``Claude Monet`` (idempotent)."""
    slug = artist_slug(raw)
    return display_name_from_slug(slug) if slug else None


def canonical_style(raw: Any) -> str | None:
    """Style names in WikiArt's spelling: ``Post-Impressionism`` -> ``Post_Impressionism``,
    ``Art Nouveau (Modern)`` -> ``Art_Nouveau``, ``Ukiyo-e`` -> ``Ukiyo_e`` (case kept)."""
    if _is_missing(raw):
        return None
    text = re.sub(r"\([^)]*\)", " ", str(raw)).strip() or str(raw).strip()
    return re.sub(r"[\s\-_]+", "_", text).strip("_") or None


def canonical_genre(raw: Any) -> str | None:
    """Genre names in ArtGAN's spelling: ``genre painting`` -> ``genre_painting``."""
    value = canonical_style(raw)
    return value.lower() if value else None


def label_key(value: Any) -> str:
    """Comparison key for labels: case and punctuation ignored (``Ukiyo-e`` == ``ukiyo_e``)."""
    return re.sub(r"[\W_]+", "", str(value).lower())


# --------------------------------------------------------------------------------------------
# Taxonomies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Taxonomy:
    name: str
    kind: str  # "map" or "joint"
    columns: tuple[str, ...]  # map: (source,), joint: (origin column, label column)
    target: str
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # map: target -> sources
    unmapped: tuple[str, ...] = ()
    prefixes: dict[str, str] = field(default_factory=dict)  # joint: value of columns[0] -> prefix
    description: str = ""

    @property
    def labels(self) -> list[str]:
        """Target labels of a map taxonomy, in file order."""
        return list(self.groups)

    def lookup(self) -> dict[str, str]:
        """Normalised source label -> target label."""
        return self._table

    @functools.cached_property
    def _table(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for target, sources in self.groups.items():
            for src in (target, *sources) if self.kind == "map" else sources:
                key = label_key(src)
                if key in out and out[key] != target:
                    raise TaxonomyError(f"taxonomy {self.name}: {src!r} is in two groups ({out[key]}, {target})")
                out[key] = target
        return out

    def map_value(self, value: Any) -> str | None:
        if _is_missing(value):
            return None
        return self.lookup().get(label_key(value))

    def apply(self, df: pd.DataFrame, *, target: str | None = None, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
        """A copy of `df` with the target column added (or replaced)."""
        import pandas as pd

        target = target or self.target
        columns = tuple(columns or self.columns)
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise TaxonomyError(f"taxonomy {self.name} needs column(s) {missing}; the manifest has {list(df.columns)}")
        out = df.copy()
        if self.kind == "map":
            table = self.lookup()
            src = out[columns[0]]
            out[target] = pd.Series(
                [None if _is_missing(v) else table.get(label_key(v)) for v in src], index=out.index, dtype="str"
            )
        else:
            origin_col, label_col = columns
            prefixes = {label_key(k): v for k, v in self.prefixes.items()}
            values = []
            for origin, label in zip(out[origin_col], out[label_col]):
                prefix = None if _is_missing(origin) else prefixes.get(label_key(origin))
                values.append(None if prefix is None or _is_missing(label) else f"{prefix}{label}")
            out[target] = pd.Series(values, index=out.index, dtype="str")
        return out


def _read_yaml_resource(filename: str) -> dict:
    import yaml

    text = resources.files("artlens.data").joinpath(_PACKAGE_DIR, filename).read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def _parse(data: dict, origin: str) -> Taxonomy:
    kind = data.get("kind")
    if kind not in ("map", "joint"):
        raise TaxonomyError(f"{origin}: kind must be 'map' or 'joint', not {kind!r}")
    name = str(data.get("name") or Path(origin).stem)
    if kind == "map":
        groups = {str(k): tuple(str(s) for s in (v or [])) for k, v in (data.get("groups") or {}).items()}
        if not groups:
            raise TaxonomyError(f"{origin}: a map taxonomy needs groups")
        tax = Taxonomy(
            name=name, kind=kind, columns=(str(data.get("column", "style")),), target=str(data.get("target") or name),
            groups=groups, unmapped=tuple(str(s) for s in data.get("unmapped") or ()), description=str(data.get("description", "")),
        )
        tax.lookup()  # validates: no label in two groups
        overlap = {label_key(u) for u in tax.unmapped} & set(tax.lookup())
        if overlap:
            raise TaxonomyError(f"{origin}: labels both mapped and listed as unmapped: {sorted(overlap)}")
        return tax
    columns = tuple(str(c) for c in data.get("columns") or ())
    if len(columns) != 2:
        raise TaxonomyError(f"{origin}: a joint taxonomy needs two columns")
    return Taxonomy(
        name=name, kind=kind, columns=columns, target=str(data.get("target") or "joint"),
        prefixes={str(k): "" if v is None else str(v) for k, v in (data.get("prefixes") or {}).items()},
        description=str(data.get("description", "")),
    )


def list_taxonomies() -> list[str]:
    """Names of the taxonomies shipped in the package."""
    import yaml

    names = []
    for entry in resources.files("artlens.data").joinpath(_PACKAGE_DIR).iterdir():
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            if data.get("kind") in ("map", "joint"):
                names.append(str(data.get("name") or entry.name[:-5]))
    return sorted(names)


@functools.lru_cache(maxsize=64)
def _load_cached(name: str) -> Taxonomy:
    import yaml

    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _parse(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))
    for entry in resources.files("artlens.data").joinpath(_PACKAGE_DIR).iterdir():
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            if data.get("kind") in ("map", "joint") and name in (data.get("name"), entry.name[:-5]):
                return _parse(data, entry.name)
    raise TaxonomyError(f"unknown taxonomy {name!r}; shipped: {', '.join(list_taxonomies())} (or give a .yaml path)")


def load_taxonomy(name: str | Path | Taxonomy) -> Taxonomy:
    """A shipped taxonomy by name (``wikiart-movements``, ``aiartbench-styles``, ``origin-style``)
    or a YAML file of the same shape."""
    if isinstance(name, Taxonomy):
        return name
    return _load_cached(str(name))


def apply_taxonomy(df: pd.DataFrame, name: str | Path | Taxonomy, **kwargs) -> pd.DataFrame:
    """A copy of `df` with the taxonomy's target column (see :meth:`Taxonomy.apply`)."""
    return load_taxonomy(name).apply(df, **kwargs)


# --------------------------------------------------------------------------------------------
# Artist -> style, from the ArtGAN CSVs
# --------------------------------------------------------------------------------------------


def artist_styles_from_artgan(labels_dir: str | Path) -> dict[str, str]:
    """Artist display name -> that artist's most common WikiArt style in the ArtGAN style CSVs.

    The CSV paths are ``Style/artist-slug_title.jpg``: the file name starts with the artist's
    slug; the style is the row's class in ``style_class.txt`` (the folder name when there is no
    class list; the two differ only for ``Art_Nouveau``, filed under ``Art_Nouveau_Modern/``).
    Used to give AI images the style of the artist they imitate (as AI-ArtBench labels its AI
    images). Ties go to the alphabetically first style.
    """
    from artlens.data.sources.wikiart_csv import find_artgan_files, read_artgan_csv, read_class_list

    files = find_artgan_files(labels_dir)
    style_csvs = [files[k] for k in ("style_train", "style_val") if k in files]
    if not style_csvs:
        raise FileNotFoundError(f"{labels_dir}: no style_train.csv / style_val.csv (ArtGAN WikiArt labels) found")
    classes = read_class_list(files["style_class"]) if "style_class" in files else {}
    counts: dict[str, Counter] = {}
    for csv_path in style_csvs:
        for rel, idx in read_artgan_csv(csv_path):
            parts = rel.split("/")
            if len(parts) < 2 or "_" not in parts[-1]:
                continue
            name = artist_display_name(parts[-1].split("_", 1)[0])
            if name:
                counts.setdefault(name, Counter())[classes.get(idx, parts[0])] += 1
    return {
        artist: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for artist, c in sorted(counts.items())
    }


def wikiart_name_fields(paths, field_name: str) -> list:
    """One field (`artist` slug, `title`) of WikiArt file names `<artist-slug>_<title>.jpg`, None
    where a name does not follow the pattern."""
    from artlens.data.sources import labels_from_names

    parsed = labels_from_names([str(p) for p in paths], "wikiart")
    return [v if isinstance(v, str) else None for v in parsed[field_name]]


def artist_labels(df, column: str = "artist"):
    """Display names per row: the manifest column when it has any value, else WikiArt file names."""
    import numpy as np

    if column in df.columns and df[column].notna().any():
        raw = list(df[column])
    else:
        raw = wikiart_name_fields(df["path"], "artist")
    names = {v: artist_display_name(v) for v in set(raw) if isinstance(v, str)}
    return np.array([names.get(v) if isinstance(v, str) else None for v in raw], dtype=object)
