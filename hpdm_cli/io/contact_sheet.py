"""Contact sheets: PNG grids of video frames (one clip per row) that a person can look at.

`contact_sheet` lays clips out as rows of evenly spaced frames with optional text labels
(drawn in capitals with a built-in 5x7 bitmap font, so nothing beyond NumPy is needed);
`stack_sheets` puts sheets side by side (generated next to real) under optional titles;
`write_contact_sheet` / `write_png` write the result atomically as an RGB PNG.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from hpdm_cli.io import atomic_write_bytes
from hpdm_cli.io.video import VideoError, encode_png_strip

__all__ = ["contact_sheet", "stack_sheets", "write_contact_sheet", "write_png", "draw_text", "text_width",
           "SHEET_BACKGROUND", "TEXT_COLOUR"]

SHEET_BACKGROUND = (40, 40, 40)
TEXT_COLOUR = (240, 240, 240)
_GLYPH_W, _GLYPH_H = 5, 7
_MAX_LABEL_CHARS = 160

# 5x7 glyphs, rows top to bottom separated by "|"; lower-case text is drawn with the capitals.
_FONT_ROWS = {
    " ": ".....|.....|.....|.....|.....|.....|.....",
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.",
    "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####",
    "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.",
    "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.",
    "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",
    "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    ";": ".....|.##..|.##..|.....|.##..|..#..|.#...",
    "-": ".....|.....|.....|#####|.....|.....|.....",
    "_": ".....|.....|.....|.....|.....|.....|#####",
    "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.",
    "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.",
    "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...",
    "=": ".....|.....|#####|.....|#####|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "*": ".....|..#..|#.#.#|.###.|#.#.#|..#..|.....",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##",
    "#": ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.",
    "|": "..#..|..#..|..#..|..#..|..#..|..#..|..#..",
    "!": "..#..|..#..|..#..|..#..|..#..|.....|..#..",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
    "'": "..#..|..#..|.#...|.....|.....|.....|.....",
    '"': ".#.#.|.#.#.|.....|.....|.....|.....|.....",
}
_FONT = {c: np.array([[ch == "#" for ch in row] for row in rows.split("|")], bool) for c, rows in _FONT_ROWS.items()}


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of `text` drawn by `draw_text` at `scale` (6 pixels a character at scale 1)."""
    return max(len(text) * (_GLYPH_W + 1) - 1, 0) * scale


def draw_text(image: np.ndarray, text: str, y: int, x: int, *, scale: int = 1,
              colour: tuple[int, int, int] = TEXT_COLOUR) -> None:
    """Draw `text` in place into image [H, W, 3] uint8 with its top-left corner at (y, x), clipped to the image."""
    h, w = image.shape[:2]
    for i, ch in enumerate(text.upper()):
        glyph = _FONT.get(ch, _FONT["?"])
        g = np.repeat(np.repeat(glyph, scale, 0), scale, 1)
        gy, gx = y, x + i * (_GLYPH_W + 1) * scale
        if gx >= w or gy >= h:
            break
        gh, gw = min(g.shape[0], h - gy), min(g.shape[1], w - gx)
        if gh <= 0 or gw <= 0:
            continue
        image[gy:gy + gh, gx:gx + gw][g[:gh, :gw]] = colour


def _check_clip(clip, what: str) -> np.ndarray:
    """Validate a clip uint8 [T, H, W, 3] (an image [H, W, 3] is one frame)."""
    a = np.asarray(clip)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or min(a.shape[:3]) < 1:
        raise VideoError(f"{what} has shape {list(np.shape(clip))}: expected frames [T, H, W, 3] (RGB)")
    if a.dtype != np.uint8:
        raise VideoError(f"{what} has dtype {a.dtype}: expected uint8 "
                         "(convert with np.clip(x, 0, 255).astype(np.uint8))")
    return a


def _frame_indices(t: int, frames: int) -> np.ndarray:
    """`frames` evenly spaced frame indices of a clip of `t` frames, first and last included (all if t <= frames)."""
    if t <= frames:
        return np.arange(t)
    return np.round(np.linspace(0, t - 1, frames)).astype(int)


def contact_sheet(rows: Sequence[np.ndarray], labels: Sequence[str] | None = None, *, frames: int = 8,
                  scale: int = 1, gap: int = 2) -> np.ndarray:
    """A contact sheet uint8 [H, W, 3]: each clip a row of `frames` evenly spaced frames, each under its label.

    Frames are enlarged `scale` times (nearest neighbour) and separated by `gap` pixels of
    `SHEET_BACKGROUND`; a row's label is drawn above it. Clips of different sizes are
    placed top-left in cells of the largest size.
    """
    if int(frames) < 1 or int(scale) < 1 or int(gap) < 0:
        raise VideoError(f"contact sheet: frames = {frames}, scale = {scale}, gap = {gap}: "
                         "expected frames >= 1, scale >= 1 and gap >= 0")
    frames, scale, gap = int(frames), int(scale), int(gap)
    clips = [_check_clip(c, f"contact sheet row {i}") for i, c in enumerate(rows)]
    if not clips:
        raise VideoError("contact sheet: no rows given (expected at least one clip)")
    if labels is not None:
        labels = [str(s)[:_MAX_LABEL_CHARS] for s in labels]
        if len(labels) != len(clips):
            raise VideoError(f"contact sheet: {len(labels)} labels for {len(clips)} rows (give one label per row)")
    ch = max(c.shape[1] for c in clips) * scale
    cw = max(c.shape[2] for c in clips) * scale
    ncol = max(len(_frame_indices(c.shape[0], frames)) for c in clips)
    label_h = (_GLYPH_H + 3) * scale if labels is not None else 0
    width = max(ncol * cw + (ncol + 1) * gap,
                max((text_width(s, scale) for s in labels), default=0) + 2 * gap if labels is not None else 0)
    height = len(clips) * (label_h + ch + gap) + gap
    sheet = np.empty((height, width, 3), np.uint8)
    sheet[:] = SHEET_BACKGROUND
    y = gap
    for r, clip in enumerate(clips):
        if labels is not None:
            draw_text(sheet, labels[r], y + scale, gap, scale=scale)
            y += label_h
        for j, k in enumerate(_frame_indices(clip.shape[0], frames)):
            f = clip[k]
            if scale > 1:
                f = np.repeat(np.repeat(f, scale, 0), scale, 1)
            x = gap + j * (cw + gap)
            sheet[y:y + f.shape[0], x:x + f.shape[1]] = f
        y += ch + gap
    return sheet


def stack_sheets(sheets: Sequence[np.ndarray], titles: Sequence[str] | None = None, *, gap: int = 12,
                 scale: int = 1) -> np.ndarray:
    """Sheets side by side (e.g. generated next to real), `gap` pixels apart, each under its optional title."""
    imgs = []
    for i, s in enumerate(sheets):
        a = np.asarray(s)
        if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise VideoError(f"sheet {i} has shape {list(a.shape)} and dtype {a.dtype}: expected uint8 [H, W, 3]")
        imgs.append(a)
    if not imgs:
        raise VideoError("stack_sheets: no sheets given")
    if titles is not None and len(titles) != len(imgs):
        raise VideoError(f"stack_sheets: {len(titles)} titles for {len(imgs)} sheets (give one title per sheet)")
    if int(gap) < 0 or int(scale) < 1:
        raise VideoError(f"stack_sheets: gap = {gap}, scale = {scale}: expected gap >= 0 and scale >= 1")
    gap, scale = int(gap), int(scale)
    title_h = (_GLYPH_H + 4) * scale if titles is not None else 0
    widths = [max(a.shape[1], text_width(str(titles[i]), scale) + 2 * scale if titles is not None else 0)
              for i, a in enumerate(imgs)]
    out = np.empty((title_h + max(a.shape[0] for a in imgs), sum(widths) + gap * (len(imgs) - 1), 3), np.uint8)
    out[:] = SHEET_BACKGROUND
    x = 0
    for i, a in enumerate(imgs):
        if titles is not None:
            draw_text(out, str(titles[i]), 2 * scale, x + 2 * scale, scale=scale)
        out[title_h:title_h + a.shape[0], x:x + a.shape[1]] = a
        x += widths[i] + gap
    return out


def write_png(path: str | os.PathLike, image: np.ndarray) -> str:
    """Write an RGB image uint8 [H, W, 3] to `path` as a PNG, atomically (temporary file, then rename)."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
        raise VideoError(f"image has shape {list(a.shape)} and dtype {a.dtype}: expected uint8 [H, W, 3]")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise VideoError(f"cannot write {path!r}: directory {directory!r} does not exist (create it first)")
    atomic_write_bytes(path, encode_png_strip(a[None]))
    return path


def write_contact_sheet(path: str | os.PathLike, rows: Sequence[np.ndarray], labels: Sequence[str] | None = None,
                        frames: int = 8, scale: int = 1, *, gap: int = 2) -> str:
    """Write the `contact_sheet` of `rows` (clips uint8 [T, H, W, 3]) with optional labels to `path` as a PNG."""
    return write_png(path, contact_sheet(rows, labels, frames=frames, scale=scale, gap=gap))
