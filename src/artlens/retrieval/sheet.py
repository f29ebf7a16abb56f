"""Contact sheet: the query first, then its neighbours, each captioned with similarity and labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from artlens.retrieval.index import Neighbour

THUMB = 224
PAD = 10
QUERY_COLOUR = (30, 110, 220)
DUPLICATE_COLOUR = (220, 60, 40)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _thumb(img: Image.Image | None, size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), (235, 235, 235))
    if img is None:
        return tile
    small = ImageOps.contain(img.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    tile.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return tile


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _load(path: str | None) -> tuple[Image.Image | None, str | None]:
    if not path:
        return None, "no path"
    from artlens.data.images import ImageDecodeError, load_image

    try:
        return load_image(path), None
    except ImageDecodeError as exc:
        return None, exc.reason


def contact_sheet(
    query: Image.Image,
    neighbours: Sequence[Neighbour],
    query_caption: str = "query",
    label_keys: Sequence[str] = ("style", "artist", "genre", "origin"),
    thumb: int = THUMB,
    columns: int | None = None,
) -> Image.Image:
    """One PNG-ready image: the query (blue frame), then each neighbour (red frame if a duplicate of
    the query) with `#rank  cosine`, and its labels under it. Missing files show as grey tiles."""
    tiles: list[tuple[Image.Image | None, list[str], tuple[int, int, int] | None]] = [
        (query, [query_caption, "(query)"], QUERY_COLOUR)
    ]
    for n in neighbours:
        img, problem = _load(n.path)
        head = f"#{n.rank}  sim {n.similarity:.3f}" + ("  DUPLICATE" if n.duplicate else "")
        lines = [head] + [f"{n.labels[key]}" for key in label_keys if key in n.labels]
        lines.append(Path(n.path).name if n.path else "")
        if problem:
            lines.append(f"({problem})")
        tiles.append((img, lines, DUPLICATE_COLOUR if n.duplicate else None))

    font_size = max(11, thumb // 16)
    font = _font(font_size)
    n_lines = max(len(lines) for _, lines, _ in tiles)
    cell_w, cell_h = thumb + PAD, thumb + PAD + n_lines * (font_size + 4) + PAD
    cols = columns or min(len(tiles), 6)
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * cell_w + PAD, rows * cell_h + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, lines, colour) in enumerate(tiles):
        x, y = PAD + (i % cols) * cell_w, PAD + (i // cols) * cell_h
        sheet.paste(_thumb(img, thumb), (x, y))
        if colour is not None:
            draw.rectangle([x - 3, y - 3, x + thumb + 2, y + thumb + 2], outline=colour, width=3)
        ty = y + thumb + PAD // 2
        for j, line in enumerate(lines):
            fill = colour if (j == 0 and colour is not None) else (20, 20, 20) if j == 0 else (90, 90, 90)
            draw.text((x, ty), _fit(draw, line, font, thumb), fill=fill, font=font)
            ty += font_size + 4
    return sheet


def write_sheet(path: str | Path, query: Image.Image, neighbours: Sequence[Neighbour], result: dict,
                query_caption: str = "query") -> Path:
    """The contact sheet as PNG at `path` and `result` (the neighbours as JSON) beside it, atomically."""
    import io
    import json

    from artlens.paths import atomic_write_bytes, atomic_write_text

    path = Path(path)
    buf = io.BytesIO()
    contact_sheet(query, neighbours, query_caption=query_caption).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_text(path.with_suffix(".json"), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path
