"""Tests of the held-out split of the `shapes` dataset: train never shows a held-out prompt, heldout only those."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest
from conftest import run_cli

from hpdm_cli.data.shapes import (COLOURS, DIRECTIONS, HELDOUT_TRIPLES, SHAPES, is_heldout, render_shapes_video,
                                  shapes_attributes, write_shapes_dataset)
from hpdm_cli.data.shards import DataError, VideoDataset

CAPTION_RE = re.compile(r"^an? (\w+) (\w+) moving (\w+) on a (\w+) background$")


def triple(attrs: dict) -> tuple[str, str, str]:
    """(colour, shape, direction) of a shapes video's attributes."""
    return attrs["colour"], attrs["shape"], attrs["direction"]


def test_heldout_triples_rule():
    """16 triples, one colour per shape x direction class, two classes per colour; the README's demo prompt is none."""
    assert len(HELDOUT_TRIPLES) == 16 == len(set(HELDOUT_TRIPLES))
    assert Counter((s, d) for _, s, d in HELDOUT_TRIPLES) == {(s, d): 1 for s in SHAPES for d in DIRECTIONS}
    assert Counter(c for c, _, _ in HELDOUT_TRIPLES) == {c: 2 for c in COLOURS}
    # every pair of attributes still occurs together in training
    assert max(Counter((c, s) for c, s, _ in HELDOUT_TRIPLES).values()) == 1
    assert max(Counter((c, d) for c, _, d in HELDOUT_TRIPLES).values()) == 1
    assert not is_heldout("red", "circle", "right")
    assert is_heldout("red", "square", "left")
    assert sum(is_heldout(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS) == 16
    with pytest.raises(DataError, match="unknown shapes triple"):
        is_heldout("pink", "circle", "right")


def test_train_split_has_no_heldout_triple():
    """512 train videos: no held-out triple, all 112 others appear, and a video not recoloured is the `all` video."""
    seen = Counter()
    recoloured = 0
    for i in range(512):
        a = shapes_attributes(i, frames=16, height=64, width=64, seed=3, split="train")
        b = shapes_attributes(i, frames=16, height=64, width=64, seed=3)
        assert not is_heldout(*triple(a)), (i, triple(a))
        assert a["label"] == b["label"] and a["split"] == "train"
        if triple(a) != triple(b):
            recoloured += 1
            assert is_heldout(*triple(b))
        else:
            assert a == {**b, "split": "train"}
        seen[triple(a)] += 1
    assert len(seen) == 112
    assert 32 <= recoloured <= 96  # ~1/8 of 512 drew a held-out colour
    video, caption, _, attrs = render_shapes_video(7, frames=4, height=32, width=32, seed=1, split="train")
    assert CAPTION_RE.match(caption).groups()[:3] == (attrs["colour"], attrs["shape"], attrs["direction"])


def test_heldout_split_only_heldout_triples():
    """Heldout videos show only held-out triples, each once in any 16 consecutive videos."""
    got = [triple(shapes_attributes(i, frames=8, height=32, width=32, seed=5, split="heldout")) for i in range(48)]
    assert all(is_heldout(*t) for t in got)
    for k in range(0, 48, 16):
        assert sorted(got[k:k + 16]) == sorted(HELDOUT_TRIPLES)
    with pytest.raises(DataError, match="expected one of all, train, heldout"):
        shapes_attributes(0, frames=8, height=32, width=32, split="test")


def test_all_split_unchanged():
    """split="all" (the default) renders exactly the videos rendered before the split existed."""
    h = hashlib.sha256()
    for seed, idx, (t, hh, w) in [(0, 0, (16, 64, 64)), (0, 5, (16, 64, 64)), (3, 17, (8, 32, 32)),
                                  (1, 100, (4, 16, 16)), (7, 42, (5, 48, 24))]:
        v, c, label, _ = render_shapes_video(idx, frames=t, height=hh, width=w, seed=seed, split="all")
        h.update(v.tobytes())
        h.update(c.encode())
        h.update(str(label).encode())
    assert h.hexdigest() == "b66f8382daeedca8bd16290a1fcc6360467ba93248a5e29ee8494dcf2c133392"


def test_split_in_dataset_and_cli(tmp_path, capsys):
    """`hpdm prepare --synthetic shapes --split heldout` writes held-out prompts and records the split."""
    pytest.importorskip("av")
    assert run_cli(capsys, "prepare", "--synthetic", "shapes", tmp_path / "h", "--split", "heldout", "--num-videos",
                   "4", "--frames", "2", "--height", "16", "--width", "16", "--text-encoder", "none")[0] == 0
    ds = VideoDataset(tmp_path / "h")
    assert ds.meta["split"] == "heldout" and "% 8 == 0" in ds.meta["heldout"]
    for i in range(len(ds)):
        colour, shape, direction, _ = CAPTION_RE.match(ds.item(i)["caption"]).groups()
        assert is_heldout(colour, shape, direction)
        assert ds.item(i)["source"] == f"shapes:0:heldout:{i}"         # a video's source names its split
    out = write_shapes_dataset(tmp_path / "t", num_videos=2, frames=2, height=16, width=16, split="train")
    assert VideoDataset(out).meta["split"] == "train" and VideoDataset(out).item(1)["source"] == "shapes:0:train:1"
    code, _, err = run_cli(capsys, "prepare", "--synthetic", "shapes", tmp_path / "x", "--split", "test",
                           "--num-videos", "2")
    assert code == 2
    err = err.strip()
    assert err.startswith("hpdm: error:") and "heldout" in err and "\n" not in err, err


def test_unseen_pairing_names_colours_the_data_never_puts_on_a_background():
    """A prompt the data cannot show (too little contrast) gets a note; every caption the data makes gets none."""
    from hpdm_cli.data.shapes import shapes_prompts, unseen_pairing
    note = unseen_pairing("a green diamond moving up on a brown background")
    assert "never shows a green object on a brown background" in note and "black, blue, purple" in note
    assert unseen_pairing("A Green square moving up on a green background") is not None
    for fine in ("a red circle moving right", "a circle moving up on a green background", "a cat", ""):
        assert unseen_pairing(fine) is None
    seen = [unseen_pairing(p) for p in shapes_prompts(short=False)]
    assert len(seen) > 100 and seen == [None] * len(seen)
    # a full count: 8 colours x 6 backgrounds, of which the contrast rule allows 41 pairs
    pairs = [(c, b) for c in COLOURS for b in ("black", "gray", "blue", "green", "brown", "purple")]
    assert sum(unseen_pairing(f"a {c} circle moving up on a {b} background") is None for c, b in pairs) == 41
