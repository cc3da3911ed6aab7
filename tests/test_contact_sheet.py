"""Tests of contact sheets: the PNG decodes to exactly the input frames, laid out as documented, with labels."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from hpdm_cli.io.contact_sheet import (SHEET_BACKGROUND, TEXT_COLOUR, _FONT, contact_sheet, draw_text, stack_sheets,
                                       text_width, write_contact_sheet, write_png)
from hpdm_cli.io.video import VideoError


def read_png(path) -> np.ndarray:
    """A minimal PNG reader (8-bit RGB, no interlace, any filter): the image uint8 [H, W, 3]."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
        if tag == b"IEND":
            break
    w, h, depth, colour_type, _, _, interlace = header
    assert (depth, colour_type, interlace) == (8, 2, 0)
    raw = zlib.decompress(idat)
    stride = w * 3
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        f, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for i in range(stride):
            a = cur[i - 3] if i >= 3 else 0
            b, c = prev[i], (prev[i - 3] if i >= 3 else 0)
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[y], prev = cur, cur
    return out.reshape(h, w, 3).astype(np.uint8)


def clips(n: int, t: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """Random clips: every pixel distinguishable, so a misplaced frame cannot match."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_png_holds_the_frames_where_documented(tmp_path):
    """Rows of evenly spaced frames (first and last included), enlarged by `scale`, under their labels."""
    rows = clips(3, 10, 6, 7)
    labels = ["a red circle moving right", "real", "x"]
    path = write_contact_sheet(tmp_path / "sheet.png", rows, labels, frames=4, scale=2, gap=3)
    img = read_png(path)
    np.testing.assert_array_equal(img, contact_sheet(rows, labels, frames=4, scale=2, gap=3))
    label_h, ch, cw, gap = 10 * 2, 6 * 2, 7 * 2, 3
    assert img.shape[1] == max(4 * cw + 5 * gap, text_width(labels[0], 2) + 2 * gap)
    assert img.shape[0] == 3 * (label_h + ch + gap) + gap
    for r, clip in enumerate(rows):
        y = gap + r * (label_h + ch + gap) + label_h
        for j, k in enumerate([0, 3, 6, 9]):
            x = gap + j * (cw + gap)
            want = np.repeat(np.repeat(clip[k], 2, 0), 2, 1)
            np.testing.assert_array_equal(img[y:y + ch, x:x + cw], want)
        strip = img[y - label_h:y]
        text = (strip == TEXT_COLOUR).all(-1)
        assert text.any() and ((strip == SHEET_BACKGROUND).all(-1) | text).all()
        # the label is readable: the strip holds exactly the label's glyphs
        ref = np.zeros_like(strip)
        ref[:] = SHEET_BACKGROUND
        draw_text(ref, labels[r], 2, gap, scale=2)
        np.testing.assert_array_equal(strip, ref)
    assert os.listdir(tmp_path) == ["sheet.png"]  # no temporary file left


def test_short_clips_mixed_sizes_and_no_labels(tmp_path):
    """A clip shorter than `frames` shows all its frames; smaller clips sit top-left in their cells."""
    a, b = clips(1, 3, 8, 8, seed=1)[0], clips(1, 12, 5, 4, seed=2)[0]
    img = read_png(write_contact_sheet(tmp_path / "s.png", [a, b], frames=5))
    assert img.shape == (2 + 8 + 2 + 8 + 2, 5 * 8 + 6 * 2, 3)
    for j in range(3):
        np.testing.assert_array_equal(img[2:10, 2 + j * 10:10 + j * 10], a[j])
    assert (img[2:10, 2 + 3 * 10:] == SHEET_BACKGROUND).all()
    for j, k in enumerate([0, 3, 6, 8, 11]):  # round(linspace(0, 11, 5))
        np.testing.assert_array_equal(img[12:17, 2 + j * 10:6 + j * 10], b[k])
    assert (img[17:20, 2:6] == SHEET_BACKGROUND).all() and (img[12:17, 6:10] == SHEET_BACKGROUND).all()


def test_stack_generated_next_to_real(tmp_path):
    """Two sheets side by side under their titles, with a gap between."""
    gen = contact_sheet(clips(2, 8, 16, 16, seed=3), ["a", "b"], frames=4)
    real = contact_sheet(clips(3, 8, 16, 16, seed=4), ["c", "d", "e"], frames=4)
    img = read_png(write_png(tmp_path / "both.png", stack_sheets([gen, real], ["generated", "real"], gap=9)))
    title_h = 11
    assert img.shape == (title_h + real.shape[0], gen.shape[1] + 9 + real.shape[1], 3)
    np.testing.assert_array_equal(img[title_h:title_h + gen.shape[0], :gen.shape[1]], gen)
    np.testing.assert_array_equal(img[title_h:, gen.shape[1] + 9:], real)
    assert (img[title_h + gen.shape[0]:, :gen.shape[1]] == SHEET_BACKGROUND).all()
    assert (img[:title_h, :text_width("generated")] == TEXT_COLOUR).all(-1).any()
    assert (img[:title_h, gen.shape[1] + 9:] == TEXT_COLOUR).all(-1).any()


def test_font_and_text():
    """Every glyph is 5x7; lower case draws as capitals; unknown characters draw as '?'."""
    assert all(g.shape == (7, 5) for g in _FONT.values())
    assert len({g.tobytes() for g in _FONT.values()}) == len(_FONT)  # no two glyphs alike

    def drawn(s: str) -> np.ndarray:
        """`s` drawn on a small black image."""
        img = np.zeros((9, 40, 3), np.uint8)
        draw_text(img, s, 1, 1)
        return img
    np.testing.assert_array_equal(drawn("abc"), drawn("ABC"))
    np.testing.assert_array_equal(drawn("é"), drawn("?"))
    assert not np.array_equal(drawn("O"), drawn("0"))
    assert text_width("ab") == 11 and text_width("ab", 3) == 33 and text_width("") == 0
    drawn("a label far too long for its little image")  # clipped, not an error


def test_errors_leave_existing_file(tmp_path):
    """Bad input is a VideoError naming the problem, and a sheet already at the path is kept."""
    path = tmp_path / "sheet.png"
    write_contact_sheet(path, clips(1, 4, 8, 8))
    before = path.read_bytes()
    cases = [
        (dict(rows=[]), "no rows"),
        (dict(rows=[np.zeros((4, 8, 8, 3), np.float32)]), "dtype"),
        (dict(rows=[np.zeros((4, 8, 8), np.uint8)]), "shape"),
        (dict(rows=clips(2, 4, 8, 8), labels=["one"]), "1 labels for 2 rows"),
        (dict(rows=clips(1, 4, 8, 8), frames=0), "frames >= 1"),
        (dict(rows=clips(1, 4, 8, 8), scale=0), "scale >= 1"),
    ]
    for kw, text in cases:
        with pytest.raises(VideoError, match=text):
            write_contact_sheet(path, **kw)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["sheet.png"]
    with pytest.raises(VideoError, match="does not exist"):
        write_contact_sheet(tmp_path / "missing" / "s.png", clips(1, 4, 8, 8))
    with pytest.raises(VideoError, match="2 titles for 1 sheets"):
        stack_sheets([np.zeros((4, 4, 3), np.uint8)], ["a", "b"])


def test_write_png_replaces_the_file_not_writes_through_it(tmp_path):
    from hpdm_cli.io.contact_sheet import write_png
    other = tmp_path / "other.png"
    other.write_bytes(b"old")
    os.link(other, tmp_path / "sheet.png")
    write_png(tmp_path / "sheet.png", np.zeros((4, 4, 3), np.uint8))
    assert other.read_bytes() == b"old"


def test_long_labels_are_cut_and_an_image_is_one_frame():
    """A label longer than 160 characters is cut there (the sheet is as wide as 160 characters); an image
    [H, W, 3] is a one-frame clip."""
    from hpdm_cli.io.contact_sheet import text_width
    clip = np.full((2, 4, 4, 3), 200, np.uint8)
    sheet = contact_sheet([clip], ["x" * 300], gap=2)
    assert sheet.shape[1] == text_width("x" * 160) + 4
    image = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    assert np.array_equal(contact_sheet([image]), contact_sheet([image[None]]))


def test_stacked_sheets_leave_room_for_a_title_wider_than_the_sheet():
    """Each sheet's column is as wide as its title when the title is wider: the next sheet starts after it."""
    from hpdm_cli.io.contact_sheet import text_width
    a, b = np.full((10, 8, 3), 1, np.uint8), np.full((10, 8, 3), 2, np.uint8)
    out = stack_sheets([a, b], ["GENERATED", "REAL"], gap=3)
    x = text_width("GENERATED") + 2 + 3
    assert out.shape[1] == x + max(8, text_width("REAL") + 2)
    assert (out[-10:, x:x + 8] == 2).all() and (out[-10:, 8:x] != 2).all()
