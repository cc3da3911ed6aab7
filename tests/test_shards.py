"""Tests of the on-disk shard dataset format: writer, random-access reader, rank split and clip sampler."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from hpdm_cli.data.loader import ClipDataset, make_loader
from hpdm_cli.data.shards import DataError, ShardWriter, VideoDataset, is_dataset

NUM_FRAMES = [6, 9, 12, 7, 1, 10, 8, 6, 11, 5]      # video 4 is an image
LABELS = [0, 1, 2, 0, 1, 2, -1, 0, 1, 2]
CAPTIONS = ["a dog", "a cat", "a dog", "", "a bird", "a cat", "a fish", "a dog", "a cow", "a cat"]
H, W = 16, 24


def make_video(i: int, t: int) -> np.ndarray:
    """A smooth, moving, per-video distinct colour field."""
    tt = np.arange(t)[:, None, None]
    yy = np.arange(H)[None, :, None] * 0.15
    xx = np.arange(W)[None, None, :] * 0.15
    ch = [128 + 70 * np.sin(xx + 0.3 * tt + i + 0 * yy), 128 + 70 * np.cos(yy - 0.2 * tt + 2 * i + 0 * xx),
          np.full((t, H, W), 20.0 * i)]
    return np.stack(ch, -1).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A 10-video toy dataset in 3 shards (4 + 4 + 2 videos)."""
    d = tmp_path_factory.mktemp("ds") / "toy"
    with ShardWriter(d, fps=12.0, class_names=["dog", "cat", "bird"], meta={"kind": "toy"},
                     max_videos_per_shard=4) as w:
        for i, t in enumerate(NUM_FRAMES):
            assert w.add(make_video(i, t), label=LABELS[i], caption=CAPTIONS[i], source=f"v{i}") == i
    return d


def mae(a, b) -> float:
    """Mean absolute pixel error between two uint8 videos."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_layout_and_metadata(dataset_dir):
    """The directory layout and dataset.json totals are as documented."""
    names = sorted(os.listdir(dataset_dir))
    assert names == ["captions.json", "dataset.json", "shard-00000.bin", "shard-00000.jsonl", "shard-00001.bin",
                     "shard-00001.jsonl", "shard-00002.bin", "shard-00002.jsonl"]
    top = json.loads((dataset_dir / "dataset.json").read_text())
    assert top["num_videos"] == 10 and top["num_frames"] == sum(NUM_FRAMES)
    assert [s["num_videos"] for s in top["shards"]] == [4, 4, 2]
    ds = VideoDataset(dataset_dir)
    assert is_dataset(dataset_dir)
    assert len(ds) == 10 and ds.num_shards == 3
    assert ds.class_names == ["dog", "cat", "bird"]
    assert ds.fps == 12.0 and ds.resolution == (H, W) and ds.meta == {"kind": "toy"}


def test_clips_equal_source_and_labels_join(dataset_dir):
    """Clips match the source frames; labels and captions join by index."""
    ds = VideoDataset(dataset_dir)
    caps = ds.captions()
    assert len(caps) == len(set(CAPTIONS))
    np.testing.assert_array_equal(ds.labels(), LABELS)
    np.testing.assert_array_equal(ds.num_frames(), NUM_FRAMES)
    for i, t in enumerate(NUM_FRAMES):
        it = ds.item(i)
        assert (it["label"], it["caption"], it["num_frames"], it["source"]) == (LABELS[i], CAPTIONS[i], t, f"v{i}")
        assert caps[it["caption_id"]] == CAPTIONS[i]
        assert (it["height"], it["width"], it["fps"]) == (H, W, 12.0)
        full = ds.read_video(i)
        src = make_video(i, t)
        assert full.shape == src.shape
        assert mae(full, src) < 3.0, i
        if t >= 6:
            np.testing.assert_array_equal(ds.read_clip(i, 2, 3), full[2:5])
        # past the end: the clip loops
        np.testing.assert_array_equal(ds.read_clip(i, t - 1, 3), full[[t - 1, 0, 1 % t]])
    still = ds.read_clip(4, 0, 5)  # an image is a still video
    assert still.shape == (5, H, W, 3) and (still == still[:1]).all()


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 10, 13])
def test_shard_indices_disjoint_and_covering(dataset_dir, world):
    """Rank subsets are disjoint, cover the dataset and are balanced."""
    ds = VideoDataset(dataset_dir)
    parts = [ds.shard_indices(r, world) for r in range(world)]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(10))  # covering and disjoint
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced
    with pytest.raises(DataError):
        ds.shard_indices(world, world)


def test_dataset_errors(tmp_path, dataset_dir):
    """Missing, corrupt or truncated datasets raise DataError."""
    with pytest.raises(DataError, match="does not exist"):
        VideoDataset(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"relative to the current directory .* does not exist"):
        VideoDataset("no-such-relative-folder")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is a file, not a dataset directory"):
        VideoDataset(tmp_path / "afile")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not an hpdm dataset"):
        VideoDataset(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        VideoDataset(bad)
    (bad / "dataset.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="not an hpdm dataset"):
        VideoDataset(bad)
    # a truncated shard is detected on open
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    for name in os.listdir(dataset_dir):
        (trunc / name).write_bytes((dataset_dir / name).read_bytes())
    with open(trunc / "shard-00001.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="corrupt"):
        VideoDataset(trunc)
    # flipped bytes are caught by the CRC when read
    flip = tmp_path / "flip"
    flip.mkdir()
    for name in os.listdir(dataset_dir):
        (flip / name).write_bytes((dataset_dir / name).read_bytes())
    raw = bytearray((flip / "shard-00000.bin").read_bytes())
    raw[50] ^= 0xFF
    (flip / "shard-00000.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="CRC"):
        VideoDataset(flip).read_clip(0)
    # missing dataset.json -> not a dataset
    os.unlink(flip / "dataset.json")
    with pytest.raises(DataError, match="no dataset.json"):
        VideoDataset(flip)


def test_writer_errors_and_atomicity(tmp_path, dataset_dir):
    """Writer misuse raises DataError; an interrupted writer leaves nothing behind."""
    with pytest.raises(DataError, match="already holds a dataset"):
        ShardWriter(dataset_dir)
    out = tmp_path / "w"
    with pytest.raises(RuntimeError):
        with ShardWriter(out, max_videos_per_shard=1) as w:
            w.add(make_video(0, 3))
            w.add(make_video(1, 3))
            raise RuntimeError("interrupted")
    assert os.listdir(out) == []  # nothing half-written, not a dataset
    with pytest.raises(DataError, match="class_names"):
        with ShardWriter(out) as w:
            w.add(make_video(0, 3), label=0)
    with pytest.raises(DataError, match="label"):
        with ShardWriter(out, class_names=["a"]) as w:
            w.add(make_video(0, 3), label=1)
    with pytest.raises(DataError, match="uint8"):
        with ShardWriter(out) as w:
            w.add(make_video(0, 3).astype(np.float32))
    # overwrite replaces the dataset and removes stale shards
    with ShardWriter(out, max_videos_per_shard=1) as w:
        for i in range(3):
            w.add(make_video(i, 2))
    with ShardWriter(out, overwrite=True) as w:
        w.add(make_video(5, 2), caption="only one")
    ds = VideoDataset(out)
    assert len(ds) == 1 and ds.num_shards == 1 and ds.captions() == ["only one"]
    assert not (out / "shard-00001.bin").exists()


def _copy_dataset(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


@pytest.mark.parametrize("entry", ["bin", "index", "captions"])
@pytest.mark.parametrize("style", ["dotdot", "absolute"])
def test_paths_in_dataset_json_stay_inside_the_folder(tmp_path, dataset_dir, entry, style):
    """A file named in dataset.json with '..' or an absolute path is refused (even when it exists), naming it."""
    d = _copy_dataset(dataset_dir, tmp_path / "ds")
    top = json.loads((d / "dataset.json").read_text())
    name = {"bin": "shard-00000.bin", "index": "shard-00000.jsonl", "captions": "captions.json"}[entry]
    outside = tmp_path / ("outside-" + name)
    outside.write_bytes((d / name).read_bytes())                # a perfectly valid file, just not in the folder
    ref = "../" + outside.name if style == "dotdot" else str(outside)
    if entry == "captions":
        top["captions"] = ref
    else:
        top["shards"][0][entry] = ref
    (d / "dataset.json").write_text(json.dumps(top))
    with pytest.raises(DataError, match="outside the dataset folder") as e:
        VideoDataset(d).captions()
    assert ref in str(e.value) and (entry in str(e.value))


def test_overwrite_keeps_the_old_dataset_until_the_new_one_is_complete(tmp_path):
    """ShardWriter(overwrite=True) builds aside: a failure leaves the old dataset whole; success swaps it in."""
    out = tmp_path / "d"
    with ShardWriter(out, max_videos_per_shard=1) as w:
        for i in range(3):
            w.add(make_video(i, 2), caption=f"old {i}")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(RuntimeError):
        with ShardWriter(out, overwrite=True, max_videos_per_shard=1) as w:
            w.add(make_video(7, 2), caption="new")
            w.add(make_video(8, 2), caption="new")                # a finished shard of the new dataset
            assert VideoDataset(out).captions() == ["old 0", "old 1", "old 2"]   # readable meanwhile
            raise RuntimeError("the new run fails")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    with ShardWriter(out, overwrite=True) as w:
        w.add(make_video(5, 2), caption="only one")
    ds = VideoDataset(out)
    assert len(ds) == 1 and ds.captions() == ["only one"]
    assert sorted(os.listdir(out)) == ["captions.json", "dataset.json", "shard-00000.bin", "shard-00000.jsonl"]


def test_interrupted_swap_is_completed_by_the_next_writer(tmp_path):
    """A crash half-way through moving the new dataset in is rolled forward, never left half old, half new."""
    from hpdm_cli.data import shards as S
    out = tmp_path / "d"
    with ShardWriter(out, max_videos_per_shard=1) as w:
        for i in range(3):
            w.add(make_video(i, 2), caption="old")
    calls = []
    real_replace = os.replace

    def crash_on_second_move(a, b):                               # the second file moved into `out`
        if os.path.dirname(os.fspath(b)) == str(out):
            calls.append(b)
        if len(calls) == 2:
            raise OSError("simulated crash")
        return real_replace(a, b)
    S.os.replace = crash_on_second_move
    try:
        with pytest.raises(OSError, match="simulated"):
            with ShardWriter(out, overwrite=True, max_videos_per_shard=1) as w:
                w.add(make_video(5, 2), caption="new")
                w.add(make_video(6, 2), caption="new")
    finally:
        S.os.replace = real_replace
    assert not (out / "dataset.json").exists()                    # mid-swap: neither dataset is published
    assert S.finish_replace(out)                                  # (any later writer or prepare run does this)
    ds = VideoDataset(out)
    assert len(ds) == 2 and ds.captions() == ["new"] and not (out / "shard-00002.bin").exists()
    assert not (out / S.STAGING_DIR).exists()


def test_pickle_and_byte_limit(tmp_path):
    """The byte limit rolls shards over; a pickled dataset reads the same frames."""
    out = tmp_path / "b"
    with ShardWriter(out, max_shard_bytes=1) as w:  # every video gets its own shard
        for i in range(3):
            w.add(make_video(i, 4))
    ds = VideoDataset(out)
    assert ds.num_shards == 3
    first = ds.read_clip(1)
    ds2 = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(ds2.read_clip(1), first)


def test_clip_dataset_deterministic(dataset_dir):
    """Clip samples depend only on (seed, rank, k); shapes, range and joins are right."""
    a = ClipDataset(dataset_dir, 8, seed=3, horizontal_flip=True, num_samples=25, resolution=(H, W))
    b = ClipDataset(str(dataset_dir), 8, seed=3, horizontal_flip=True, num_samples=25)
    c = ClipDataset(dataset_dir, 8, seed=4, horizontal_flip=True, num_samples=25)
    specs = [a.sample_spec(k) for k in range(25)]
    assert specs == [b.sample_spec(k) for k in range(25)]
    assert specs != [c.sample_spec(k) for k in range(25)]
    # every epoch visits every video once
    assert sorted(s[0] for s in specs[:10]) == list(range(10))
    assert sorted(s[0] for s in specs[10:20]) == list(range(10))
    assert any(s[2] for s in specs) and not all(s[2] for s in specs)  # flips happen, sometimes
    for k in (0, 7, 13, 24):  # random access in any order gives the same sample
        x, y = a[k], b[k]
        torch.testing.assert_close(x["video"], y["video"], rtol=0, atol=0)
        v = x["video"]
        assert v.shape == (3, 8, H, W) and v.dtype == torch.float32
        assert -1.0 <= float(v.min()) and float(v.max()) <= 1.0
        vid = int(x["index"])
        assert int(x["label"]) == LABELS[vid]
        assert a.captions()[int(x["caption_id"])] == CAPTIONS[vid]
    # ranks see disjoint videos
    seen = [{ClipDataset(dataset_dir, 4, rank=r, world_size=3).sample_spec(k)[0] for k in range(10)}
            for r in range(3)]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set().union(*seen) == set(range(10))
    with pytest.raises(DataError, match="resolution|needed"):
        ClipDataset(dataset_dir, 4, resolution=(32, 32))


def test_clip_values_and_loader_with_workers(dataset_dir):
    """Clip values are the scaled frames; a 2-worker DataLoader resumes mid-stream."""
    ds = ClipDataset(dataset_dir, 5, seed=1, num_samples=12)
    raw = VideoDataset(dataset_dir)
    vid, start, flip = ds.sample_spec(2)
    expect = raw.read_clip(vid, start, 5).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(ds[2]["video"].permute(1, 2, 3, 0).numpy(), expect, atol=1e-6)
    ref = torch.stack([ds[k]["video"] for k in range(4, 12)])
    loader = make_loader(ds, batch_size=4, start=4, num_workers=2)
    got = [batch for batch in loader]
    assert len(got) == 2
    torch.testing.assert_close(torch.cat([g["video"] for g in got]), ref, rtol=0, atol=0)
    assert got[0]["label"].dtype == torch.int64 and got[0]["caption_id"].shape == (4,)


def test_a_flipped_sample_is_its_clip_mirrored_left_right(tmp_path):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "ds", fps=8.0) as w:
        for _ in range(4):
            w.add(rng.integers(0, 255, (4, 16, 24, 3), dtype=np.uint8))
    ds = ClipDataset(tmp_path / "ds", 4, seed=0, horizontal_flip=True, num_samples=16)
    k = next(k for k in range(16) if ds.sample_spec(k)[2])
    vid, start, _ = ds.sample_spec(k)
    mirrored = VideoDataset(tmp_path / "ds").read_clip(vid, start, 4)[:, :, ::-1].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(ds[k]["video"].permute(1, 2, 3, 0).numpy(), mirrored, atol=1e-6)


def test_clip_starts_and_flips_are_drawn_afresh_every_epoch(dataset_dir):
    """Start and flip come from (seed, rank, epoch, position): a rank holding one video sees every valid start."""
    ds = ClipDataset(dataset_dir, 5, seed=2, rank=2, world_size=10, horizontal_flip=True, num_samples=120)
    assert list(ds.local) == [2]                                  # video 2: 12 frames, so starts 0..7
    specs = [ds.sample_spec(k) for k in range(120)]
    assert {s[0] for s in specs} == {2}
    assert sorted({s[1] for s in specs}) == list(range(12 - 5 + 1))   # the last start (nf - frames) included
    assert {s[2] for s in specs} == {False, True}


def test_each_rank_draws_its_own_visiting_order(dataset_dir):
    """The order of an epoch is drawn from (seed, rank, epoch): two ranks of equal size do not move in step."""
    order = [[int(np.searchsorted(d.local, d.sample_spec(k)[0])) for k in range(10)]
             for d in (ClipDataset(dataset_dir, 4, seed=0, rank=r, world_size=2) for r in range(2))]
    assert sorted(order[0][:5]) == sorted(order[1][:5]) == list(range(5))
    assert order[0] != order[1]


def test_loader_yields_full_batches_of_samples_start_to_stop(dataset_dir):
    """make_loader reads samples [start, stop) in order, in full batches only (a partial last one is dropped)."""
    ds = ClipDataset(dataset_dir, 2, seed=5, num_samples=30)
    got = list(make_loader(ds, batch_size=3, start=4, stop=12))
    assert [len(b["index"]) for b in got] == [3, 3]
    assert [int(i) for b in got for i in b["index"]] == [ds.sample_spec(k)[0] for k in range(4, 10)]


def test_negative_indices_and_empty_clips(dataset_dir):
    """Video indices count from the end like a list's; a clip of no frames is refused."""
    ds = VideoDataset(dataset_dir)
    assert ds.item(-10)["index"] == 0 and ds.item(-1)["index"] == 9
    with pytest.raises(IndexError):
        ds.item(-11)
    with pytest.raises(IndexError):
        ds.item(10)
    with pytest.raises(DataError, match="num_frames >= 1"):
        ds.read_clip(0, 0, 0)
    with pytest.raises(DataError, match="start >= 0"):
        ds.read_clip(0, -1, 2)


def test_frame_range_and_resolution_in_dataset_json(dataset_dir, tmp_path):
    """dataset.json records the shortest and longest video; resolution is null when sizes differ."""
    top = json.loads((dataset_dir / "dataset.json").read_text())
    assert (top["min_frames"], top["max_frames"]) == (min(NUM_FRAMES), max(NUM_FRAMES))
    with ShardWriter(tmp_path / "mixed") as w:
        w.add(make_video(0, 3))
        w.add(np.zeros((2, 8, 8, 3), np.uint8))
    top = json.loads((tmp_path / "mixed" / "dataset.json").read_text())
    assert top["resolution"] is None and VideoDataset(tmp_path / "mixed").resolution is None


def test_a_shard_may_fill_max_shard_bytes_exactly(tmp_path):
    """A video that brings its shard to exactly max_shard_bytes still goes into it."""
    from hpdm_cli.io.video import encode_mp4_bytes
    blobs = [encode_mp4_bytes(make_video(i, 3), 12.0) for i in range(3)]
    with ShardWriter(tmp_path / "d", max_shard_bytes=len(blobs[0]) + len(blobs[1])) as w:
        for b in blobs:
            w.add_encoded(b, num_frames=3, height=H, width=W)
    top = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert [s["num_videos"] for s in top["shards"]] == [2, 1]


def _two_finished_shards_then_a_crash(out):
    """Shards 0 and 1 (3 + 5 frames, 4 + 6 frames) finished, a fifth video unfinished, then an exception."""
    with pytest.raises(RuntimeError):
        with ShardWriter(out, max_videos_per_shard=2, keep_on_error=True) as w:
            for i, t in enumerate([3, 5, 4, 6, 2]):
                w.add(make_video(i, t), caption=["x", "y", "x", "z", "w"][i])
            raise RuntimeError("interrupted")


def test_resume_adopts_finished_shards_with_their_frame_range(tmp_path):
    out = tmp_path / "d"
    _two_finished_shards_then_a_crash(out)
    with ShardWriter(out, max_videos_per_shard=2, resume=2) as w:
        assert len(w) == 4
        w.add(make_video(9, 7), caption="y")
    top = json.loads((out / "dataset.json").read_text())
    assert (top["num_videos"], top["min_frames"], top["max_frames"]) == (5, 3, 7)
    assert VideoDataset(out).captions() == ["x", "y", "z"]


@pytest.mark.parametrize("damage", ["caption_id", "offset", "longer_bin"])
def test_resume_refuses_a_shard_whose_index_does_not_match(tmp_path, damage):
    """Resuming checks each adopted shard: caption ids in order of first appearance, contiguous offsets, sizes."""
    out = tmp_path / "d"
    _two_finished_shards_then_a_crash(out)
    index = out / "shard-00001.jsonl"
    records = [json.loads(line) for line in index.read_text().splitlines()]
    if damage == "caption_id":
        records[1]["caption_id"] = 0                               # "z" is new here: its id must be 2
    elif damage == "offset":
        records[1]["offset"] += 1
    if damage == "longer_bin":
        with open(out / "shard-00001.bin", "ab") as f:
            f.write(b"\0" * 10)
    else:
        index.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match="cannot resume"):
        ShardWriter(out, max_videos_per_shard=2, resume=2)


@pytest.mark.parametrize("damage", ["index_lists_more", "num_videos_more", "no_version"])
def test_inconsistent_dataset_json_is_refused(tmp_path, dataset_dir, damage):
    d = _copy_dataset(dataset_dir, tmp_path / "ds")
    top = json.loads((d / "dataset.json").read_text())
    if damage == "index_lists_more":
        with open(d / "shard-00002.jsonl", "a") as f:
            f.write((d / "shard-00002.jsonl").read_text().splitlines()[0] + "\n")
    elif damage == "num_videos_more":
        top["num_videos"] += 1
    else:
        del top["version"]
    (d / "dataset.json").write_text(json.dumps(top))
    with pytest.raises(DataError, match="corrupt|version|re-create"):
        VideoDataset(d).item(9)
