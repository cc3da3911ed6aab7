"""`hpdm sample` / `hpdm upscale`: files, seeds, levels, conditions, errors, windows.

Drivers `hpdm_cli.drivers.sample` / `.upscale`, over `hpdm_cli.checkpoint` and `hpdm_cli.conditioning`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpdm_cli.data.shapes import SHAPES_CLASSES, write_shapes_dataset
from hpdm_cli.checkpoint import load_generator
from hpdm_cli.conditioning import Condition, GenerateError, resolve_condition
from hpdm_cli.drivers.generation import sample_videos
from hpdm_cli.drivers.options import check_options, check_writable, output_paths, parse_seeds, parse_steps, rank_seeds
from hpdm_cli.drivers.sample import generate
from hpdm_cli.drivers.upscale import blend_windows, crossfade_weights, fit_geometry, upscale_frames, window_starts
from hpdm_cli.io.video import read_video, write_video
from hpdm_cli.recipe import load_recipe
from hpdm_cli.train.checkpoint import save_checkpoint
from hpdm_cli.train.step import build_model
from hpdm_cli.train.optim import EMA
from conftest import run_cli as cli, tiny_toml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _save(run: Path, recipe) -> Path:
    """A checkpoint as training writes it (model and EMA state), of random weights."""
    net = build_model(recipe)
    save_checkpoint(run, recipe, 7, model=net.state_dict(), ema=EMA(net, 10.0).state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    return run


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """A tiny shapes dataset (class names) and random-weight checkpoints of the tiny recipe (3 levels, 8x32x32)."""
    root = tmp_path_factory.mktemp("gen")
    data = write_shapes_dataset(root / "data", num_videos=2, frames=8, height=32, width=32, fps=8.0)
    rec = load_recipe(REPO / "recipes" / "tiny.toml", [f"data.path={data}"])
    run = _save(root / "run", rec)
    ids_only = _save(root / "run-ids", load_recipe(REPO / "recipes" / "tiny.toml", [f"data.path={root}/missing"]))
    return dict(root=root, run=run, ids_only=ids_only, recipe=rec)


@pytest.fixture(scope="session")
def gen(assets):
    """The loaded generator of the class checkpoint (CPU)."""
    return load_generator(assets["run"], "cpu")



def smooth_video(t: int, h: int, w: int) -> np.ndarray:
    """A smooth moving colour field, uint8 [T, H, W, 3]."""
    tt = np.arange(t)[:, None, None]
    yy = np.arange(h)[None, :, None] / h
    xx = np.arange(w)[None, None, :] / w
    ch = [128 + 60 * np.sin(2 * xx + 0.15 * tt + 0 * yy), 128 + 60 * np.cos(2.5 * yy - 0.1 * tt + 0 * xx),
          128 + 50 * np.sin(1.5 * (xx + yy) + 0 * tt)]
    return np.stack(ch, -1).clip(0, 255).astype(np.uint8)


def leftovers(directory: Path) -> list[str]:
    """Temporary files a writer may have left behind."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# Arguments

def test_parse_seeds_steps_and_names():
    assert parse_seeds("0-7") == list(range(8))
    assert parse_seeds("1,5,9") == [1, 5, 9] and parse_seeds("3") == [3] and parse_seeds(" 0-2, 8 ") == [0, 1, 2, 8]
    for bad in ["", "a", "3-1", "1,,2", "1,1", "-2", "1-"]:
        with pytest.raises(GenerateError):
            parse_seeds(bad)
    assert parse_steps("16", 3) == [16, 8, 4] and parse_steps("2", 3) == [2, 1, 1] and parse_steps(None, 3) is None
    assert parse_steps("5,3,1", 3) == [5, 3, 1]
    for bad in ["0", "1,2", "x"]:
        with pytest.raises(GenerateError):
            parse_steps(bad, 3)
    assert output_paths("out/clip.mp4", [3]) == {3: Path("out/clip.mp4")}
    assert output_paths("out/clip.mp4", [3, 12]) == {3: Path("out/clip-seed0003.mp4"),
                                                    12: Path("out/clip-seed0012.mp4")}
    assert rank_seeds(range(8), 1, 3) == [1, 4, 7] and rank_seeds([5], 0, 1) == [5]


def test_check_writable(tmp_path):
    check_writable([tmp_path / "a.mp4", tmp_path / "a.gif", tmp_path / "new" / "dir" / "a.mp4"])
    (tmp_path / "file").write_text("x")
    for bad in [tmp_path / "file" / "a.mp4", tmp_path, tmp_path / "a.txt", tmp_path / "noext"]:
        with pytest.raises(GenerateError):
            check_writable([bad])
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(GenerateError):
        check_writable([tmp_path / "dir.mp4"])
    with pytest.raises(GenerateError, match="a name that starts with a dot has no suffix"):
        check_writable([tmp_path / ".mp4"])
    with pytest.raises(GenerateError) as e:
        check_writable([tmp_path / "noext"])
    assert "starts with a dot" not in str(e.value)
    assert leftovers(tmp_path) == [] and not (tmp_path / "new").exists()      # checking creates nothing


def test_conditions(assets, gen):
    _, rec, info = gen
    assert info.class_names == SHAPES_CLASSES and info.class_names_source.name == "dataset.json"
    assert info.step == 7 and info.weights.name == "ema.safetensors" and info.run_dir == assets["run"]
    names = info.class_names
    by_name = resolve_condition(rec, class_="square moving down", class_names=names)
    by_id = resolve_condition(rec, class_="3", class_names=names)
    by_prompt = resolve_condition(rec, prompt="A Square moving DOWN.", class_names=names)
    assert by_name.label == by_id.label == by_prompt.label == 3 and by_id.name == "square moving down"
    assert torch.equal(by_id.batch(2), torch.tensor([3, 3]))
    assert resolve_condition(rec, class_names=names).kind == "none"
    with pytest.raises(GenerateError, match="classes: 0=square moving left"):
        resolve_condition(rec, prompt="a purple elephant", class_names=names)
    # A prompt naming one class among other words takes it (the longest name found); two classes are refused.
    among = resolve_condition(rec, prompt="a red square moving down on a gray background", class_names=names)
    assert among.kind == "class" and among.label == 3
    assert resolve_condition(rec, prompt="the ApplyEyeMakeup clip", class_names=["Apply", "ApplyEyeMakeup"]).label == 1
    with pytest.raises(GenerateError, match=r"names several classes \(square moving down, circle moving up\)"):
        resolve_condition(rec, prompt="a square moving down and a circle moving up", class_names=names)
    with pytest.raises(GenerateError, match="does not name a class"):
        resolve_condition(rec, prompt="a square moving sideways", class_names=names)    # words out of order: no
    with pytest.raises(GenerateError, match="unknown class"):
        resolve_condition(rec, class_="a red square moving down", class_names=names)   # --class names one exactly
    with pytest.raises(GenerateError, match="classes:"):
        resolve_condition(rec, class_="zebra", class_names=names)
    with pytest.raises(GenerateError):
        resolve_condition(rec, class_="16", class_names=names)           # num_classes = 16
    with pytest.raises(GenerateError, match="either"):
        resolve_condition(rec, prompt="x", class_="1", class_names=names)
    # Without a dataset.json: ids only, and the error says so.
    assert resolve_condition(rec, class_="5").label == 5
    with pytest.raises(GenerateError, match="ids 0..15"):
        resolve_condition(rec, class_="square moving down")
    assert load_generator(assets["ids_only"], "cpu")[2].class_names == []
    # Text and unconditional models.
    class Enc:
        name, tokens, dim = "fake", rec.model.text_tokens, rec.model.text_dim

        def encode(self, texts):
            return torch.ones(len(texts), self.tokens, self.dim)
    import copy
    text = copy.deepcopy(rec)
    text.model.cond = "text"
    c = resolve_condition(text, prompt="a red square", encoder=Enc())
    assert c.kind == "text" and c.batch(3).shape == (3, rec.model.text_tokens, rec.model.text_dim)
    with pytest.raises(GenerateError, match="text-conditioned"):
        resolve_condition(text, class_="1", encoder=Enc())
    text.model.cond = "none"
    with pytest.raises(GenerateError, match="unconditional"):
        resolve_condition(text, prompt="a red square")


# ---------------------------------------------------------------------------------------------
# Sampling

def test_sample_writes_mp4_with_recipe_shape_and_fps(assets, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code, stdout, err = cli(capsys, "sample", "--ckpt", assets["run"], "--class", "square moving down",
                            "--steps", "2", "--out", out, "--progress")
    assert code == 0, err
    frames, fps = read_video(out)
    R = assets["recipe"].pyramid.resolution
    assert frames.shape == (*R, 3) and fps == pytest.approx(assets["recipe"].data.fps)
    assert f"wrote {out}" in stdout and "class 3 (square moving down)" in stdout
    assert "level 2" in err                                               # Rich progress per level, on stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    code, stdout, err = cli(capsys, "sample", "--ckpt", assets["run"], "--class", "0", "--steps", "1", "--out", out)
    assert code == 0 and f"replaced {out}" in stdout, (err, stdout)                  # said, not silent
    assert "━" not in err and "level 2: 1/1 done at " in err            # stderr is no terminal here: no bar, a line a level
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_sample_writes_each_batch_as_soon_as_it_is_made(assets, tmp_path, monkeypatch):
    """Seeds 0-2 in batches of one: seed 0's file is written (and said) before seed 1 is sampled, so an
    interrupted long run keeps what is done and holds one batch in memory."""
    import hpdm_cli.drivers.generation as generation
    real, seen = generation.sample_batches, []

    def watched(*a, **k):
        for chunk, res in real(*a, **k):
            seen.append(sorted(p.name for p in tmp_path.iterdir()))       # what exists before this batch is written
            yield chunk, res
    said = []
    monkeypatch.setattr(generation, "sample_batches", watched)
    rep = generate(assets["run"], tmp_path / "c.mp4", seeds="0-2", class_="0", steps="1", batch=1, device="cpu",
                   on_file=lambda p, replaced: said.append(p.name))
    assert seen == [[], ["c-seed0000.mp4"], ["c-seed0000.mp4", "c-seed0001.mp4"]]
    assert said == ["c-seed0000.mp4", "c-seed0001.mp4", "c-seed0002.mp4"] == [p.name for p in rep.files]


def test_files_under_dev_shm_are_files():
    """/dev/shm is a file system of ordinary files (fast scratch in batch jobs): not refused as a device."""
    import tempfile
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        check_writable([Path(d) / "clip.mp4"])


def test_guidance_of_1_is_no_guidance_and_an_unconditional_model_is_told_apart(assets, tmp_path):
    """--guidance 1 (off) needs no condition; other scales need one, and an unconditional model says it has none."""
    none = _save(tmp_path / "uncond", load_recipe(REPO / "recipes" / "tiny.toml", ['model.cond="none"']))
    rep = generate(none, tmp_path / "a.mp4", guidance="1", steps="1", device="cpu")
    assert rep.condition == "unconditional" and (tmp_path / "a.mp4").is_file()
    with pytest.raises(GenerateError, match="this model is unconditional: leave --guidance out"):
        generate(none, tmp_path / "b.mp4", guidance="2", steps="1", device="cpu")
    with pytest.raises(GenerateError, match="give --prompt or --class with it"):
        generate(assets["run"], tmp_path / "c.mp4", guidance="1,2,1", steps="1", device="cpu")


def test_levels_0_equals_first_level_of_full_run(gen):
    net, rec, _ = gen
    cond = Condition("class", 2)
    full = sample_videos(net, rec, [4, 9], cond, steps=[2, 1, 1], keep_levels=True)
    low = sample_videos(net, rec, [4, 9], cond, levels=0, steps=[2, 1, 1])
    alone = sample_videos(net, rec, [9], cond, levels=0, steps=[2, 1, 1], batch=1)
    assert low.videos[0].shape == (*rec.pyramid.level_resolution(0), 3)
    assert full.videos[0].shape == (*rec.pyramid.resolution, 3)
    for b in range(2):
        np.testing.assert_array_equal(low.videos[b], full.levels[b][0])
        np.testing.assert_array_equal(full.videos[b], full.levels[b][-1])
    assert np.abs(alone.videos[0].astype(int) - low.videos[1].astype(int)).max() <= 1   # seed, not batch position
    assert not np.array_equal(full.videos[0], full.videos[1])


def test_preview_file_keeps_duration(assets, tmp_path, capsys):
    out = tmp_path / "preview.mp4"
    code, _, err = cli(capsys, "sample", "--ckpt", assets["run"], "--class", "1", "--levels", "0", "--steps", "2",
                       "--out", out, "--fps", "10", "--no-progress")
    assert code == 0, err
    frames, fps = read_video(out)
    F0, H0, W0 = assets["recipe"].pyramid.level_resolution(0)
    assert frames.shape == (F0, H0, W0, 3)
    assert fps == pytest.approx(10 * F0 / assets["recipe"].pyramid.resolution[0])


def test_several_seeds_one_file_each_and_quick_looks(assets, tmp_path, capsys):
    out = tmp_path / "new" / "clip.mp4"                                   # a missing directory is created
    code, _, err = cli(capsys, "sample", "--ckpt", assets["run"], "--class", "0", "--seeds", "1,3-4",
                       "--steps", "1", "--batch", "2", "--out", out, "--gif", "--png", "--no-progress")
    assert code == 0, err
    want = {f"clip-seed{s:04d}{ext}" for s in (1, 3, 4) for ext in (".mp4", ".gif", ".png")}
    tmp_path = tmp_path / "new"
    assert {p.name for p in tmp_path.iterdir()} == want
    videos = [read_video(tmp_path / f"clip-seed{s:04d}.mp4")[0] for s in (1, 3, 4)]
    assert all(v.shape == (8, 32, 32, 3) for v in videos)
    assert not np.array_equal(videos[0], videos[1])
    gif, _ = read_video(tmp_path / "clip-seed0003.gif")
    assert gif.shape == videos[1].shape


def test_class_by_name_and_by_id_give_the_same_video(assets, tmp_path, capsys):
    a, b = tmp_path / "name.mp4", tmp_path / "id.mp4"
    assert cli(capsys, "sample", "--ckpt", assets["run"], "--class", "circle moving up", "--seeds", "5",
               "--steps", "1", "--out", a, "--no-progress")[0] == 0
    assert cli(capsys, "sample", "--ckpt", assets["run"], "--class", str(SHAPES_CLASSES.index("circle moving up")),
               "--seeds", "5", "--steps", "1", "--out", b, "--no-progress")[0] == 0
    np.testing.assert_array_equal(read_video(a)[0], read_video(b)[0])


def test_bf16_on_a_cpu_that_emulates_it_is_warned_about_once(assets, tmp_path, capsys, monkeypatch):
    """`hpdm sample --bf16` on a CPU without bf16 instructions still samples, after one warning line."""
    import torch
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    args = ["sample", "--ckpt", assets["run"], "--class", "0", "--steps", "1", "--device", "cpu", "--no-progress"]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "a.mp4", "--bf16")
    assert code == 0, err
    assert [line for line in err.splitlines() if "emulated" in line] == [
        "hpdm: warning: --bf16 on this CPU (no AVX512-BF16 or AMX-BF16 instructions) is emulated by torch, about 5x "
        "slower than float32: leave --bf16 out"]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "b.mp4")
    assert code == 0 and "emulated" not in err
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    code, _, err = cli(capsys, *args, "--out", tmp_path / "c.mp4", "--bf16")
    assert code == 0 and "emulated" not in err


def test_seeds_split_across_ranks(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rep = generate(assets["run"], tmp_path / "clip.mp4", seeds="0-2", class_="2", steps="1", device="cpu")
    assert rep.seeds == [1] and rep.rank == 1 and rep.world_size == 2
    assert [p.name for p in rep.files] == ["clip-seed0001.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip-seed0001.mp4"]


def test_progress_counts_steps_over_batches(gen):
    net, rec, _ = gen
    calls = []
    sample_videos(net, rec, [0, 1, 2], Condition("class", 0), steps=[2, 1, 1], batch=2, levels=1,
                  progress=lambda *a: calls.append(a))
    assert calls == [(0, 1, 4), (0, 2, 4), (1, 1, 2), (0, 3, 4), (0, 4, 4), (1, 2, 2)]


# ---------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line on stderr, no traceback, nothing at the output path

def _bad_cases(assets, tmp: Path) -> dict:
    corrupt = tmp / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    truncated_run = tmp / "truncated-run"
    import shutil
    shutil.copytree(assets["run"], truncated_run)
    ema = next(truncated_run.glob("checkpoints/*/ema.safetensors"))
    ema.write_bytes(ema.read_bytes()[:1000])
    bad_video = tmp / "bad.mp4"
    bad_video.write_bytes(b"this is not a video" * 10)
    good_video = tmp / "in.mp4"
    write_video(good_video, smooth_video(6, 12, 20), 12.5)
    long_video = tmp / "long.mp4"                             # several windows of the model's frames
    write_video(long_video, smooth_video(24, 12, 20), 12.5)
    out = tmp / "out.mp4"
    run = assets["run"]
    return {
        "missing checkpoint": (["sample", "--ckpt", tmp / "nope", "--out", out], out),
        "empty run directory": (["sample", "--ckpt", tmp, "--out", out], out),
        "corrupt checkpoint": (["sample", "--ckpt", corrupt, "--out", out], out),
        "truncated checkpoint": (["sample", "--ckpt", truncated_run, "--out", out], out),
        "prompt for a class model": (["sample", "--ckpt", run, "--prompt", "a purple elephant", "--out", out], out),
        "unknown class": (["sample", "--ckpt", run, "--class", "zebra", "--out", out], out),
        "class id out of range": (["sample", "--ckpt", run, "--class", "99", "--out", out], out),
        "bad seeds": (["sample", "--ckpt", run, "--seeds", "3-1", "--out", out], out),
        "bad level": (["sample", "--ckpt", run, "--levels", "3", "--out", out], out),
        "bad overlap": (["sample", "--ckpt", run, "--overlap", "xy", "--steps", "1", "--out", out], out),
        "overlap and shift on one axis": (["sample", "--ckpt", run, "--overlap", "w+shift-hw", "--steps", "1",
                                           "--out", out], out),
        "output under a file": (["sample", "--ckpt", run, "--out", tmp / "in.mp4" / "clip.mp4"],
                                tmp / "in.mp4" / "clip.mp4"),
        "output is a directory": (["sample", "--ckpt", run, "--out", tmp / "adir.mp4"], tmp / "adir.mp4"),
        "unknown output suffix": (["sample", "--ckpt", run, "--out", tmp / "clip.txt"], tmp / "clip.txt"),
        "unreadable input video": (["upscale", bad_video, "--ckpt", run, "--out", out], out),
        "missing input video": (["upscale", tmp / "none.mp4", "--ckpt", run, "--out", out], out),
        "input video is a folder": (["upscale", tmp / "adir.mp4", "--ckpt", run, "--out", out], out),
        "upscale missing checkpoint": (["upscale", good_video, "--ckpt", tmp / "nope", "--out", out], out),
        "upscale unwritable output": (["upscale", good_video, "--ckpt", run, "--out", tmp / "bad.mp4" / "up.mp4"],
                                      tmp / "bad.mp4" / "up.mp4"),
        "upscale onto its input": (["upscale", good_video, "--ckpt", run, "--out", good_video], tmp / "nothing"),
        "upscale bad from-level": (["upscale", good_video, "--ckpt", run, "--from-level", "2", "--out", out], out),
        "upscale prompt for a class model": (["upscale", good_video, "--ckpt", run, "--prompt", "zebra", "--out",
                                              out], out),
        "guidance nan": (["sample", "--ckpt", run, "--guidance", "nan", "--out", out], out),
        "guidance 1e300": (["sample", "--ckpt", run, "--guidance", "1e300", "--out", out], out),
        "guidance inf": (["sample", "--ckpt", run, "--guidance", "inf", "--out", out], out),
        "negative guidance": (["sample", "--ckpt", run, "--guidance", "-2", "--out", out], out),
        "guidance for 2 of 3 levels": (["sample", "--ckpt", run, "--guidance", "2,1", "--out", out], out),
        "guidance list with a word": (["sample", "--ckpt", run, "--guidance", "2,x,1", "--out", out], out),
        "guidance interval upside down": (["sample", "--ckpt", run, "--guidance-interval", "5,0.3", "--out", out], out),
        "guidance interval of one value": (["sample", "--ckpt", run, "--guidance-interval", "5", "--out", out], out),
        "sigma max for 2 of 3 levels": (["sample", "--ckpt", run, "--sigma-max", "80,10", "--out", out], out),
        "sigma max below sigma min": (["sample", "--ckpt", run, "--sigma-max", "0.001", "--out", out], out),
        "upscale sigma max of a word": (["upscale", good_video, "--ckpt", run, "--sigma-max", "high", "--out", out],
                                        out),
        "missing guide model": (["sample", "--ckpt", run, "--guide-model", tmp / "none.safetensors", "--out", out],
                                out),
        "guide model of three levels": (["sample", "--ckpt", run, "--class", "0", "--guide-model", run, "--out",
                                         out], out),
        "upscale missing guide model": (["upscale", good_video, "--ckpt", run, "--class", "0", "--guide-model",
                                         tmp / "none", "--out", out], out),
        "upscale guidance interval upside down": (["upscale", good_video, "--ckpt", run, "--class", "0",
                                                   "--guidance-interval", "5,0.3", "--out", out], out),
        "upscale guidance for 4 levels": (["upscale", good_video, "--ckpt", run, "--class", "0", "--guidance",
                                           "2,1,1,1", "--out", out], out),
        "guidance without a condition": (["sample", "--ckpt", run, "--guidance", "3", "--steps", "1", "--out", out],
                                         out),
        "upscale guidance without a condition": (["upscale", good_video, "--ckpt", run, "--guidance", "3", "--out",
                                                  out], out),
        "empty prompt": (["sample", "--ckpt", run, "--prompt", "  ", "--out", out], out),
        "batch 0": (["sample", "--ckpt", run, "--batch", "0", "--out", out], out),
        "negative batch": (["sample", "--ckpt", run, "--batch", "-1", "--out", out], out),
        "tile batch 0": (["sample", "--ckpt", run, "--tile-batch", "0", "--out", out], out),
        "negative context budget": (["sample", "--ckpt", run, "--context-gib", "-1", "--out", out], out),
        "fps nan": (["sample", "--ckpt", run, "--fps", "nan", "--out", out], out),
        "fps 0": (["sample", "--ckpt", run, "--fps", "0", "--out", out], out),
        "out a folder": (["sample", "--ckpt", run, "--out", tmp / "emptyrun"], out),
        "out a folder, several seeds": (["sample", "--ckpt", run, "--seeds", "0-1", "--out", tmp / "emptyrun"], out),
        "fps too small for a container": (["sample", "--ckpt", run, "--fps", "0.0001", "--out", out], out),
        "steps past the schedule": (["sample", "--ckpt", run, "--steps", "99999999999999999999", "--out", out], out),
        "seed past 64 bits": (["sample", "--ckpt", run, "--seeds", str(2 ** 64), "--out", out], out),
        "upscale window seeds past 64 bits": (["upscale", long_video, "--ckpt", run, "--class", "0", "--seed",
                                               str(2 ** 64 - 1), "--out", out], out),
        "upscale seed past 64 bits": (["upscale", good_video, "--ckpt", run, "--class", "0", "--seed", str(2 ** 64),
                                       "--out", out], out),
        "a run's checkpoints folder without checkpoints": (["sample", "--ckpt", tmp / "emptyrun" / "checkpoints",
                                                            "--out", out], out),
        "upscale out name past 255 bytes": (["upscale", good_video, "--ckpt", run, "--class", "0", "--out",
                                            tmp / ("L" * 260 + ".mp4")], out),
        "out to standard output": (["sample", "--ckpt", run, "--out", "-"], out),
        "out to a device": (["sample", "--ckpt", run, "--out", "/dev/stdout"], out),
        "out to a device by its folder": (["sample", "--ckpt", run, "--out", "/dev/x.mp4"], out),
        "out folder name past 255 bytes": (["sample", "--ckpt", run, "--out", tmp / ("F" * 300) / "a.mp4"], out),
        "a recipe for --ckpt": (["sample", "--ckpt", Path(__file__).parents[1] / "recipes" / "tiny.toml", "--out", out], out),
        "a recipe for --guide-model": (["sample", "--ckpt", run, "--guide-model", Path(__file__).parents[1] / "recipes" / "tiny.toml",
                                        "--out", out], out),
        "negative level": (["sample", "--ckpt", run, "--levels", "-1", "--out", out], out),
        "steps 0": (["sample", "--ckpt", run, "--steps", "0", "--out", out], out),
        "negative seed": (["sample", "--ckpt", run, "--seeds", "-1", "--out", out], out),
        "upscale guidance nan": (["upscale", good_video, "--ckpt", run, "--class", "0", "--guidance", "nan",
                                  "--out", out], out),
        "upscale negative guidance": (["upscale", good_video, "--ckpt", run, "--guidance", "-1", "--out", out], out),
        "upscale batch 0": (["upscale", good_video, "--ckpt", run, "--batch", "0", "--out", out], out),
        "upscale tile batch 0": (["upscale", good_video, "--ckpt", run, "--tile-batch", "0", "--out", out], out),
        "upscale window overlap nan": (["upscale", good_video, "--ckpt", run, "--window-overlap", "nan", "--out",
                                        out], out),
        "upscale negative from-level": (["upscale", good_video, "--ckpt", run, "--from-level", "-1", "--out", out],
                                        out),
        "upscale negative seed": (["upscale", good_video, "--ckpt", run, "--seed", "-1", "--out", out], out),
        "upscale steps 0": (["upscale", good_video, "--ckpt", run, "--steps", "0", "--out", out], out),
    }


def test_bad_inputs_are_one_line_errors(assets, tmp_path, capsys):
    (tmp_path / "adir.mp4").mkdir()
    (tmp_path / "emptyrun" / "checkpoints").mkdir(parents=True)
    for name, (args, target) in _bad_cases(assets, tmp_path).items():
        before = set(os.listdir(tmp_path))
        code, stdout, err = cli(capsys, *args, "--no-progress")
        lines = err.strip().splitlines()
        assert code == 2, (name, code, err)
        assert len(lines) == 1 and lines[0].startswith("hpdm: error: "), (name, err)
        if name.startswith("out a folder"):
            assert "emptyrun': it is a directory: give a video file name" in lines[0], (name, lines[0])
        if name.startswith("a recipe for"):
            assert "tiny.toml is a TOML recipe, not weights: give a run directory" in lines[0], (name, lines[0])
        assert "Traceback" not in err and stdout == "", name
        assert not target.is_file(), name
        assert set(os.listdir(tmp_path)) == before, name                  # nothing half-written anywhere


def test_check_options_names_the_option_and_its_range():
    for kw, fragment in ((dict(guidance=float("nan")), "--guidance nan: expected a number in [0, 100]"),
                         (dict(guidance=1e300), "--guidance 1e+300"), (dict(guidance=-0.5), "--guidance -0.5"),
                         (dict(guidance="1.5,200,1"), "--guidance 1.5,200,1: expected a number in [0, 100] or a "
                                                      "comma-separated list of one per level"),
                         (dict(batch=0), "--batch 0: expected at least 1"), (dict(tile_batch=0), "--tile-batch 0"),
                         (dict(fps=float("inf")), "--fps inf"), (dict(levels=-1), "--levels -1"),
                         (dict(context_gib=-1.0), "--context-gib -1.0: expected a number of GiB >= 0"),
                         (dict(context_gib=float("nan")), "--context-gib nan"),
                         (dict(guidance_interval="5,0.3"), "--guidance-interval 5,0.3: expected LO,HI with 0 <= LO < HI"),
                         (dict(guidance_interval="-1,3"), "--guidance-interval -1,3"),
                         (dict(guidance_interval="0.3,nan"), "--guidance-interval 0.3,nan"),
                         (dict(guidance_interval="a,b"), "--guidance-interval a,b"),
                         (dict(guide_model="no/such.safetensors"), "--guide-model no/such.safetensors: no such file"),
                         (dict(sigma_max="0"), "--sigma-max 0: expected a noise level > 0"),
                         (dict(sigma_max="80,nan"), "--sigma-max 80,nan"), (dict(sigma_max="ten"), "--sigma-max ten"),
                         (dict(sigma_max="80,-1,1"), "--sigma-max 80,-1,1")):
        with pytest.raises(GenerateError) as e:
            check_options(**kw)
        assert fragment in str(e.value) and "\n" not in str(e.value)
    check_options(batch=1, tile_batch=1, guidance=0.0, fps=0.5, levels=0, context_gib=0.0)
    check_options(guidance=100.0)
    check_options(guidance="1.5,1,1")
    check_options(guidance_interval="0.28,5.42")
    check_options(guidance_interval="0,inf")
    check_options(guide_model="packaged")
    check_options(guide_model="none")
    check_options(sigma_max="80,10,10")
    check_options(sigma_max="80")


def test_parse_guidance_gives_one_scale_or_one_per_level():
    from hpdm_cli.drivers.options import parse_guidance
    assert parse_guidance(None, 3) is None and parse_guidance("2", 3) == 2.0 and parse_guidance(3, 3) == 3.0
    assert parse_guidance("1.5,1,1", 3) == [1.5, 1.0, 1.0] == parse_guidance([1.5, 1, 1], 3)
    with pytest.raises(GenerateError, match="2 values for a model with 3 levels"):
        parse_guidance("2,1", 3)


def test_per_seed_conditions_and_given_levels_follow_their_seeds_across_batches(gen):
    """`sample_videos` with one condition row per seed and a given level 0: each video is the one its seed,
    row and given level draw alone, whatever batch it falls in."""
    from hpdm_cli.assets import DEFAULT_MODEL
    shapes, shapes_rec, _ = load_generator(DEFAULT_MODEL, "cpu")          # a model that heeds its condition
    m = shapes_rec.model
    emb = torch.randn(3, m.text_tokens, m.text_dim, generator=torch.Generator().manual_seed(0))
    rows = sample_videos(shapes, shapes_rec, [4, 4, 2], emb, levels=0, steps=[2, 1, 1], batch=2)
    def gap(a, b):
        return float(np.abs(a.astype(float) - b).mean())
    for i, seed in enumerate([4, 4, 2]):                # equal but for float rounding of other batch sizes
        alone = sample_videos(shapes, shapes_rec, [seed], Condition("text", embedding=emb[i:i + 1]), levels=0,
                              steps=[2, 1, 1], batch=1)
        assert gap(rows.videos[i], alone.videos[0]) < 0.5, i
    assert gap(rows.videos[0], rows.videos[1]) > 10 and gap(rows.videos[0], rows.videos[2]) > 10   # rows matter
    net, rec, _ = gen
    labels = torch.tensor([0, 3, 1])
    level0 = torch.rand(3, 3, *rec.pyramid.level_resolution(0)) * 2 - 1
    given = sample_videos(net, rec, [4, 9, 2], labels, steps=[1, 1, 1], batch=2, fixed={0: level0},
                          keep_levels=True)
    third = sample_videos(net, rec, [2], labels[2:], steps=[1, 1, 1], batch=1, fixed={0: level0[2:]})
    assert np.array_equal(given.videos[2], third.videos[0])
    from hpdm_cli.drivers.generation import to_uint8
    assert all(np.array_equal(given.levels[i][0], to_uint8(level0)[i]) for i in range(3))   # each seed its row


def test_non_finite_samples_are_never_written(gen):
    import copy
    net, rec, _ = gen
    broken = copy.deepcopy(net)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(GenerateError, match="non-finite"):
        sample_videos(broken, rec, [0], Condition("class", 0), steps=[1, 1, 1])
    frames = smooth_video(8, 32, 32)
    with pytest.raises(GenerateError, match="non-finite"):
        upscale_frames(frames, broken, rec, condition=Condition("class", 0), steps=[1, 1, 1])


def test_sample_falls_back_past_an_unusable_newest_checkpoint(assets, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(assets["run"], run)
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "ckpt-00000007", ckpts / "ckpt-00000006")
    (ckpts / "ckpt-00000006" / "state.json").write_text(
        (ckpts / "ckpt-00000006" / "state.json").read_text().replace('"step": 7', '"step": 6'))
    ema = ckpts / "ckpt-00000007" / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:1000])                              # the newest is truncated
    out = tmp_path / "clip.mp4"
    code, stdout, err = cli(capsys, "sample", "--ckpt", run, "--class", "0", "--steps", "1", "--out", out,
                            "--no-progress")
    assert code == 0, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("level ")]     # minus progress lines
    assert len(lines) == 2 and all(line.startswith("hpdm: warning: ") for line in lines), err
    assert "damaged or not weights" not in lines[0], err                  # skipped, not refused: no fix to give
    assert "ckpt-00000007" in lines[0] and "ckpt-00000006" in lines[1]     # which one was skipped, which one used
    assert out.is_file() and "ckpt-00000006" in stdout
    code, _, err = cli(capsys, "upscale", out, "--ckpt", run, "--steps", "1", "--out", tmp_path / "up.mp4",
                       "--no-progress")
    assert code == 0 and "ckpt-00000006" in err, err


@pytest.mark.parametrize("case", ["missing checkpoint", "prompt for a class model", "unreadable input video"])
def test_bad_inputs_in_a_real_process(assets, tmp_path, case):
    (tmp_path / "adir.mp4").mkdir()
    args, target = _bad_cases(assets, tmp_path)[case]
    r = subprocess.run([sys.executable, "-m", "hpdm_cli", *map(str, args)], capture_output=True, text=True,
                       env=ENV, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("hpdm: error: ")
    assert "Traceback" not in r.stderr and not target.exists()


def test_engine_imports_neither_cli_nor_pyav():
    code = ("import sys, hpdm_cli.drivers.sample, hpdm_cli.drivers.upscale; bad = [m for m in ('typer', 'rich', 'av', 'hpdm_cli.cli') "
            "if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# Upscaling: geometry, windows, cross-fade

def test_fit_geometry_crop_and_pad():
    g = fit_geometry(24, 40, (32, 32), "crop")                        # wide input, square model: cut the sides
    assert g.crop == (0, 24, 8, 32) and g.canvas == (24, 24) and g.keep == (0, 32, 0, 32) and g.pad == (0, 0, 0, 0)
    g = fit_geometry(40, 24, (32, 32), "crop")                        # tall input: cut top and bottom
    assert g.crop == (8, 32, 0, 24) and g.canvas == (24, 24)
    g = fit_geometry(24, 40, (32, 32), "pad")                         # wide input: bars above and below
    assert g.pad == (8, 8, 0, 0) and g.canvas == (40, 40) and g.keep == (6, 26, 0, 32)
    g = fit_geometry(36, 64, (72, 128), "pad")                        # same aspect ratio: nothing to do
    assert g.pad == (0, 0, 0, 0) and g.keep == (0, 72, 0, 128)
    g = fit_geometry(36, 64, (72, 128), "crop")
    assert g.crop == (0, 36, 0, 64)
    g = fit_geometry(30, 30, (72, 128), "pad")                        # square input, wide model: side bars
    assert g.canvas == (30, 53) and g.pad == (0, 0, 11, 12) and g.keep == (0, 72, 27, 99)   # a 72x72 square
    with pytest.raises(GenerateError):
        fit_geometry(4, 4, (8, 8), "stretch")


def test_windows_cover_and_overlap():
    assert window_starts(5, 8) == [0] and window_starts(8, 8) == [0]
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    for T in range(9, 60):
        for ov in (0.0, 0.25, 0.5):
            s = window_starts(T, 8, ov)
            assert s[0] == 0 and s[-1] == T - 8 and s == sorted(set(s))
            assert all(b - a <= 8 - round(ov * 8) for a, b in zip(s, s[1:]))   # overlap at least as asked
            w = crossfade_weights(s, 8)
            total = np.zeros(T)
            for st, wt in zip(s, w):
                total[st:st + 8] += wt
                assert wt.min() > 0
            if all(c - a >= 8 for a, c in zip(s, s[2:])):               # at most two windows per frame ...
                np.testing.assert_allclose(total, 1.0)                # ... whose weights sum to 1
            # Alternating per-window constants +-0.5: the fade never steps by more than 1/(overlap+1).
            off = [0.5 * (-1) ** j for j in range(len(s))]
            mixed = np.stack(list(blend_windows(T, s, 8, (np.full((8, 1), v) for v in off))))[:, 0]
            if len(s) > 1:
                o = min(a + 8 - b for a, b in zip(s, s[1:]))
                assert np.abs(np.diff(mixed)).max() <= 1.0 / (o + 1) + 1e-6


def test_crossfade_reproduces_consistent_windows_and_has_no_jumps():
    T, W = 37, 8
    starts = window_starts(T, W, 0.5)
    g = np.sin(np.arange(T + W) * 0.3)[:, None] * np.ones((1, 2))          # a known function of global time
    same = np.stack(list(blend_windows(T, starts, W, (g[s:s + W] for s in starts))))
    np.testing.assert_allclose(same, g[:T], atol=1e-6)                    # exact where windows agree
    # Windows that disagree by a constant (+-0.5 alternating): the fade spreads the step over the overlap.
    off = [0.5 * (-1) ** j for j in range(len(starts))]
    mixed = np.stack(list(blend_windows(T, starts, W, (np.full((W, 1), o) for o in off))))[:, 0]
    o = min(a + W - b for a, b in zip(starts, starts[1:]))
    assert np.abs(np.diff(mixed)).max() <= 1.0 / (o + 1) + 1e-6            # a hard cut would jump by 1.0
    assert mixed.min() >= -0.5 - 1e-6 and mixed.max() <= 0.5 + 1e-6


class Standin:
    """A stand-in generator: the highest fixed level upsampled (trilinear) to full resolution; records its inputs."""

    def __init__(self, recipe):
        self.R = recipe.pyramid.resolution
        self.calls = []

    def __call__(self, seeds, fixed):
        self.calls.append((list(seeds), {k: v.clone() for k, v in fixed.items()}))
        top = fixed[max(fixed)]
        return F.interpolate(top, size=self.R, mode="trilinear", align_corners=False)


def test_upscale_fixes_lower_levels_to_the_resized_input(assets):
    rec = assets["recipe"]
    (F0, H0, W0), (_, H1, W1) = rec.pyramid.level_resolution(0), rec.pyramid.level_resolution(1)
    # An input already at level 1's size and the model's frame count: level 1 is the input itself and level 0
    # its 2x2x2 box average.
    video = smooth_video(8, H1, W1)
    s = Standin(rec)
    upscale_frames(video, None, rec, from_level=1, sample_fn=s)
    (seeds, fixed), = s.calls
    x = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1              # [C, T, H, W]
    assert seeds == [0] and set(fixed) == {0, 1}
    assert torch.allclose(fixed[1][0], x, atol=1e-6)
    assert torch.allclose(fixed[0][0], F.avg_pool3d(x[None], 2)[0], atol=1e-6)
    # Level 0 only (the default): the input at level 0's size is level 0 after the temporal box filter.
    video0 = smooth_video(8, H0, W0)
    s = Standin(rec)
    upscale_frames(video0, None, rec, sample_fn=s)
    x0 = torch.from_numpy(video0).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert set(s.calls[0][1]) == {0}
    assert torch.allclose(s.calls[0][1][0][0], x0.reshape(3, F0, 2, H0, W0).mean(2), atol=1e-6)


@pytest.mark.parametrize("fit,pad_mode", [("crop", "edge"), ("pad", "edge"), ("pad", "black")])
def test_upscale_windows_follow_the_input(assets, fit, pad_mode):
    """Long odd-sized input through overlapping windows: the output, downsampled back, stays close to the input."""
    rec = assets["recipe"]
    T, h, w = 29, 48, 80
    video = smooth_video(T, h, w)
    s = Standin(rec)
    res = upscale_frames(video, None, rec, from_level=1, fit=fit, pad_mode=pad_mode, seed=10, batch=3, sample_fn=s)
    assert res.frames.shape[0] == T and res.frames.dtype == np.uint8
    assert [c[0] for c in s.calls] == [[10, 11, 12], [13, 14, 15], [16]][:len(s.calls)]
    assert sum(len(c[0]) for c in s.calls) == len(res.starts) == len(window_starts(T, 8))
    if fit == "crop":
        assert res.frames.shape[1:3] == (32, 32)
        ref = video[:, :, 16:64]                                               # the centre square
    else:
        assert res.frames.shape[1:3] == (20, 32)                              # the input's aspect ratio kept
        ref = video
    back = F.interpolate(torch.from_numpy(res.frames).permute(0, 3, 1, 2).float(), size=ref.shape[1:3],
                         mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    err = np.abs(back - ref.astype(np.float32))
    if pad_mode == "black":                          # black bars blur into the border rows of the coarse levels
        err = err[:, 10:-10]
    assert err.mean() < 2.0, err.mean()
    # No jumps in time beyond the input's own motion.
    jumps = np.abs(np.diff(res.frames.astype(np.float32), axis=0)).mean((1, 2, 3))
    assert jumps.max() < 2 * np.abs(np.diff(ref.astype(np.float32), axis=0)).mean((1, 2, 3)).max() + 1.0


def test_upscale_short_video_is_padded_and_trimmed(assets):
    rec = assets["recipe"]
    video = smooth_video(5, 8, 8)
    s = Standin(rec)
    res = upscale_frames(video, None, rec, sample_fn=s)
    assert res.frames.shape == (5, 32, 32, 3) and res.starts == [0]
    x = torch.from_numpy(video[[0, 1, 2, 3, 4, 4, 4, 4]]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.allclose(s.calls[0][1][0][0], x.reshape(3, 4, 2, 8, 8).mean(2), atol=1e-6)


def test_upscale_crossfades_disagreeing_windows(assets):
    """Windows whose outputs differ (a per-window constant): consecutive frames change smoothly across borders."""
    rec = assets["recipe"]

    def per_window(seeds, fixed):
        vals = torch.tensor([0.6 * (-1) ** s for s in seeds], dtype=torch.float32)
        return vals[:, None, None, None, None].expand(len(seeds), 3, *rec.pyramid.resolution).clone()
    res = upscale_frames(smooth_video(30, 8, 8), None, rec, sample_fn=per_window)
    level = res.frames[:, 0, 0, 0].astype(float)
    o = min(a + 8 - b for a, b in zip(res.starts, res.starts[1:]))
    assert len(res.starts) > 3
    assert np.abs(np.diff(level)).max() <= 1.2 * 127.5 / (o + 1) + 1          # a hard cut jumps by 153


def test_upscale_cli_keeps_fps_and_frame_count(assets, tmp_path, capsys):
    src = tmp_path / "in.mp4"
    write_video(src, smooth_video(11, 12, 20), 12.5)
    out = tmp_path / "up.mp4"
    code, stdout, err = cli(capsys, "upscale", src, "--ckpt", assets["run"], "--out", out, "--steps", "2",
                            "--no-progress")
    assert code == 0, err
    frames, fps = read_video(out)
    assert frames.shape == (11, 32, 32, 3) and fps == pytest.approx(12.5)
    assert "2 window(s)" in stdout
    out2 = tmp_path / "up-pad.mp4"
    code, _, err = cli(capsys, "upscale", src, "--ckpt", assets["run"], "--out", out2, "--steps", "2", "--fit",
                       "pad", "--pad-mode", "edge", "--from-level", "1", "--class", "2", "--no-progress")
    assert code == 0, err
    frames, fps = read_video(out2)
    assert frames.shape == (11, 20, 32, 3) and fps == pytest.approx(12.5)
    assert "larger than this model's videos" not in err
    big = tmp_path / "big.mp4"                     # larger than the model's 32x32: "upscaled" to a smaller video
    write_video(big, smooth_video(9, 48, 64), 12.5)
    code, _, err = cli(capsys, "upscale", big, "--ckpt", assets["run"], "--out", tmp_path / "down.mp4", "--steps",
                       "1", "--no-progress")
    assert code == 0 and "the 48x48 centre of the input (48x64) that --fit crop keeps is larger than this model's videos" in err, err
    code, stdout, err = cli(capsys, "upscale", src, "--ckpt", assets["run"], "--out", out, "--steps", "1",
                            "--no-progress")
    assert code == 0 and f"replaced {out}" in stdout, (err, stdout)


def test_context_gib_replaces_the_recipe_budget_for_this_sampler_only():
    from hpdm_cli.drivers.generation import make_sampler
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    from hpdm_cli.train.step import build_model
    recipe = load_recipe(default_recipe_path("tiny"))
    net = build_model(recipe)
    assert make_sampler(net, recipe, device="cpu", context_gib=0.5).sample_cfg.context_cache_gib == 0.5
    assert make_sampler(net, recipe, device="cpu").sample_cfg.context_cache_gib == 4.0
    assert recipe.sample.context_cache_gib == 4.0                             # the recipe itself is untouched


def test_guidance_interval_option_reaches_the_sampler(assets, tmp_path, monkeypatch):
    """`hpdm sample --guidance-interval LO,HI` samples with that sample.guidance_interval; without it, the recipe's."""
    import hpdm_cli.drivers.sample as drv
    from hpdm_cli.drivers.sample import generate
    seen = []

    class Stop(Exception):
        pass

    def fake_sample_videos(net, recipe, *a, **k):
        seen.append(list(recipe.sample.guidance_interval))
        raise Stop
    monkeypatch.setattr(drv, "sample_videos", fake_sample_videos)
    for interval in ("0.28,5.42", None):
        with pytest.raises(Stop):
            generate(assets["run"], tmp_path / "clip.mp4", class_="0", steps="1", guidance_interval=interval)
    assert seen == [[0.28, 5.42], list(assets["recipe"].sample.guidance_interval)] and seen[1] == []
    seen.clear()                                          # `hpdm upscale --guidance-interval` the same way
    with pytest.raises(Stop):
        _upscale_through(fake_sample_videos, assets, tmp_path, monkeypatch, guidance_interval="1,2")
    assert seen == [[1.0, 2.0]]


def _upscale_through(spy, assets, tmp_path, monkeypatch, **options):
    """`hpdm upscale` of a smooth clip by the assets' run, its sampling replaced by `spy(net, recipe)`."""
    import hpdm_cli.drivers.upscale as up
    video = tmp_path / "in.mp4"
    write_video(video, smooth_video(*assets["recipe"].pyramid.resolution), 8.0)
    monkeypatch.setattr(up, "upscale_frames", lambda frames, net, recipe, **k: spy(net, recipe))
    return up.upscale(video, assets["run"], tmp_path / "up.mp4", class_="0", steps="1", **options)


def test_sigma_max_option_sets_where_each_level_starts(assets, tmp_path, monkeypatch):
    """`--sigma-max 80,10,5` starts level l's schedule at its value (one value: every level); without it, the
    recipe's sample.sigma_max; `hpdm upscale` the same way."""
    import hpdm_cli.drivers.sample as drv
    from hpdm_cli.drivers.generation import make_sampler
    from hpdm_cli.drivers.sample import generate
    starts = []

    class Stop(Exception):
        pass

    def first_sigmas(net, recipe, *a, **k):
        sampler = make_sampler(net, recipe, device="cpu")
        starts.append([float(sampler.schedule(level, 4)[0][0]) for level in range(recipe.pyramid.num_levels)])
        raise Stop
    monkeypatch.setattr(drv, "sample_videos", first_sigmas)
    L = assets["recipe"].pyramid.num_levels
    for given in ("80,10,5", "7", None):
        with pytest.raises(Stop):
            generate(assets["run"], tmp_path / "clip.mp4", class_="0", steps="1", sigma_max=given)
    default = float(assets["recipe"].sample.sigma_max)
    assert starts == [pytest.approx([80.0, 10.0, 5.0]), pytest.approx([7.0] * L), pytest.approx([default] * L)]
    starts.clear()
    with pytest.raises(Stop):
        _upscale_through(first_sigmas, assets, tmp_path, monkeypatch, sigma_max="80,3,2")
    assert starts == [pytest.approx([80.0, 3.0, 2.0])]
    for bad, fragment in (("80,10", "--sigma-max 80,10: 2 values for a model with 3 levels"),
                          ("0.001", "--sigma-max 0.001: expected a noise level above sample.sigma_min = 0.002")):
        with pytest.raises(GenerateError, match=re.escape(fragment)):
            generate(assets["run"], tmp_path / "clip.mp4", class_="0", steps="1", sigma_max=bad)


def test_guide_model_option_autoguides_level_0(assets, tmp_path, capsys):
    """`hpdm sample --guide-model RUN` guides level 0 by another model of that level alone: a different video
    than classifier-free guidance (`--guide-model none`) at the same scale and seed; the report says so."""
    from test_model import randomize
    rec = load_recipe(REPO / "recipes" / "tiny.toml", [f"data.path={assets['root']}/data", "pyramid.resolution=[4,8,8]",
                                                      "pyramid.patch=[4,8,8]"])
    guide_run = tmp_path / "guide"
    net = randomize(build_model(rec))                      # random weights all through (an untrained net's output is 0)
    save_checkpoint(guide_run, rec, 3, model=net.state_dict(), ema=EMA(net, 10.0).state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    videos = {}
    for guide in (guide_run, "none"):
        out = tmp_path / f"clip-{Path(str(guide)).name}.mp4"
        code, stdout, err = cli(capsys, "sample", "--ckpt", assets["run"], "--class", "0", "--levels", "0",
                                "--steps", "3", "--guidance", "2,1,1", "--guide-model", guide, "--out", out,
                                "--no-progress")
        assert code == 0 and out.is_file(), err
        assert (f"level 0 autoguided by {guide_run}" in stdout) == (guide != "none"), stdout
        assert "sigma" not in stdout                                    # guided at every sigma
        videos[str(guide)] = read_video(out)[0].astype(np.int16)
    assert np.abs(videos[str(guide_run)] - videos["none"]).max() > 8
    code, stdout, err = cli(capsys, "sample", "--ckpt", assets["run"], "--class", "0", "--levels", "0", "--steps", "3",
                            "--guidance", "2,1,1", "--guide-model", guide_run, "--guidance-interval", "0,1.5",
                            "--out", tmp_path / "interval.mp4", "--no-progress")
    assert code == 0 and f"level 0 autoguided by {guide_run} at 0 < sigma <= 1.5" in stdout, stdout + err


def test_to_uint8_rounds_and_clamps():
    from hpdm_cli.drivers.generation import to_uint8
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 6, 1, 1)
    assert to_uint8(x)[0][:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255, 255]


def test_each_video_depends_only_on_its_seed_in_any_chunk():
    """Seeds sampled one per call: the second video is the one its seed gives alone."""
    from conftest import tiny_recipe
    from hpdm_cli.model import HPDMNet
    rec = tiny_recipe((8, 16, 16), (4, 8, 8), cond="none")
    net = HPDMNet(rec.pyramid, rec.model).eval()
    both = sample_videos(net, rec, [4, 9], steps=[1, 1], batch=1)
    assert np.array_equal(both.videos[1], sample_videos(net, rec, [9], steps=[1, 1], batch=1).videos[0])
    assert not np.array_equal(both.videos[0], both.videos[1])


def test_a_range_of_a_million_and_one_seeds_is_refused():
    from hpdm_cli.conditioning import GenerateError
    from hpdm_cli.drivers.options import parse_seeds
    with pytest.raises(GenerateError, match=r"the range 0-1000000 holds more than 1,000,000 seeds"):
        parse_seeds("0-1000000")


def test_upper_case_video_suffix_is_writable(tmp_path):
    from hpdm_cli.drivers.options import check_writable
    check_writable([tmp_path / "clip.MP4"])


@pytest.fixture
def run_with_relative_data(tmp_path):
    from hpdm_cli.data.shapes import write_shapes_dataset
    from hpdm_cli.train.checkpoint import save_checkpoint
    from hpdm_cli.train.step import build_model
    from hpdm_cli.train.optim import EMA
    write_shapes_dataset(tmp_path / "data", num_videos=2, frames=8, height=32, width=32, fps=8.0)
    rec = tiny_toml("data.path=data")                                   # relative: found from the run's parent
    net = build_model(rec)
    save_checkpoint(tmp_path / "run", rec, 7, model=net.state_dict(), ema=EMA(net, 10.0).state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "run"


def test_class_names_found_from_the_runs_parent(run_with_relative_data, monkeypatch):
    from hpdm_cli.checkpoint import load_generator
    monkeypatch.chdir(run_with_relative_data.parent / "elsewhere")
    _, _, info = load_generator(run_with_relative_data, "cpu")
    assert len(info.class_names) > 0 and info.class_names_source.name == "dataset.json"


def test_weights_file_inside_a_run_knows_its_run_dir(run_with_relative_data):
    from hpdm_cli.checkpoint import load_generator
    ema = sorted(run_with_relative_data.glob("checkpoints/*/ema.safetensors"))[0]
    _, _, info = load_generator(ema, "cpu")
    assert info.run_dir == run_with_relative_data


def test_weights_missing_a_tensor_are_refused(run_with_relative_data):
    from safetensors import safe_open
    from safetensors.torch import save_file
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.train.checkpoint import CheckpointError
    ema = sorted(run_with_relative_data.glob("checkpoints/*/ema.safetensors"))[0]
    with safe_open(str(ema), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    dropped = next(k for k in tensors if k.endswith("weight"))
    del tensors[dropped]
    out = ema.parent.parent.parent.parent / "cut.safetensors"
    save_file(tensors, str(out), metadata=meta)
    with pytest.raises(CheckpointError):
        load_generator(out, "cpu")


def test_black_padding_is_black():
    from hpdm_cli.drivers.upscale import fit_frames, fit_geometry
    g = fit_geometry(24, 40, (32, 32), "pad")
    y = fit_frames(torch.zeros(1, 3, 24, 40), g, "black")
    assert y[..., :8, :].eq(-1).all() and y[..., 8:32, :].eq(0).all()


def test_centre_crop_puts_the_odd_pixel_at_the_end():
    from hpdm_cli.drivers.upscale import fit_geometry
    assert fit_geometry(24, 41, (32, 32), "crop").crop == (0, 24, 8, 32)


def test_shrinking_one_axis_averages_areas():
    from hpdm_cli.drivers.upscale import resize_frames
    x = torch.arange(32.0).reshape(1, 1, 4, 8)
    torch.testing.assert_close(resize_frames(x, (4, 4)), (x[..., 0::2] + x[..., 1::2]) / 2)


def test_report_names_the_guide_for_a_level0_guidance_below_one(tmp_path, monkeypatch):
    from hpdm_cli.drivers import sample as smp
    monkeypatch.setattr(smp, "world", lambda: (1, 2, 0))          # this rank gets no seed: nothing is sampled
    rep = smp.generate(None, tmp_path / "c.mp4", seeds="0", guidance="0.5", device="cpu",
                       prompt="a red square moving left")
    assert rep.guide != "" and not rep.files


def test_seeds_given_as_numbers_are_checked_like_text():
    assert parse_seeds([3, 1]) == [3, 1] and parse_seeds(4) == [4]
    for bad in ([-1], [2, 2]):
        with pytest.raises(GenerateError):
            parse_seeds(bad)


def test_a_guidance_interval_needs_lo_below_hi():
    # LO,HI with LO == HI would never guide (lo < sigma <= hi is empty)
    with pytest.raises(GenerateError, match="0 <= LO < HI"):
        check_options(guidance_interval="1,1")


def test_make_parent_creates_every_missing_folder(tmp_path):
    from hpdm_cli.drivers.options import make_parent
    target = tmp_path / "a" / "b" / "clip.mp4"
    check_writable([target])
    make_parent(target)
    assert target.parent.is_dir()


def test_quick_looks_never_repeat_the_main_file():
    from hpdm_cli.drivers.sample import _extra_paths
    assert _extra_paths(Path("c.gif"), True, True) == [Path("c.gif"), Path("c.png")]
    assert _extra_paths(Path("c.PNG"), False, True) == [Path("c.PNG")]
    assert _extra_paths(Path("c.mp4"), True, False) == [Path("c.mp4"), Path("c.gif")]


def test_a_model_its_own_overlap_cannot_tile_names_it_and_samples_with_another():
    from hpdm_cli.drivers.generation import make_sampler
    rec = load_recipe(REPO / "recipes" / "tiny.toml", ['pyramid.overlap="fhw"', "pyramid.patch=[1,8,8]",
                                                       "model.tokenizer=[1,2,2]"])
    net = build_model(rec)
    with pytest.raises(GenerateError, match=r"^cannot tile this model's levels with its pyramid.overlap = 'fhw': "
                                            r".*pass an --overlap that leaves out that axis$"):
        make_sampler(net, rec)
    assert make_sampler(net, rec, overlap="hw").overlap == "hw"


def test_a_hand_edit_of_the_runs_recipe_is_said_not_silently_ignored(tmp_path):
    """Sampling uses the recipe stored in the weights: an edited [sample] of RUN/recipe.toml, or a broken file,
    is warned about; the recipe training wrote is not."""
    from hpdm_cli.recipe import dump_recipe
    rec = load_recipe(REPO / "recipes" / "tiny.toml", [f"data.path={tmp_path}/missing"])
    run = _save(tmp_path / "run", rec)
    dump_recipe(rec, run / "recipe.toml")
    said = []
    load_generator(run, "cpu", warn=said.append)
    assert said == []
    edited = load_recipe(REPO / "recipes" / "tiny.toml", [f"data.path={tmp_path}/missing", "sample.guidance=7"])
    dump_recipe(edited, run / "recipe.toml")
    load_generator(run, "cpu", warn=said.append)
    assert len(said) == 1 and "recipe.toml has other [sample] settings than checkpoint 7's recipe" in said[0]
    (run / "recipe.toml").write_text((run / "recipe.toml").read_text().replace("guidance = 7.0", "guidance = -5"))
    load_generator(run, "cpu", warn=said.append)
    assert "recipe.toml is unreadable (" in said[1] and "sample.guidance" in said[1]
    dump_recipe(rec, run / "recipe.toml")
    (run / "recipe.toml").write_bytes(b"\xef\xbb\xbf" + (run / "recipe.toml").read_bytes())   # an editor's BOM
    said.clear()
    load_generator(run, "cpu", warn=said.append)
    assert said == []


@pytest.fixture(scope="session")
def run_with_sample_fps(assets):
    """A checkpoint whose recipe sets sample.fps = 4 (data.fps is 8)."""
    return _save(assets["root"] / "run-fps4", load_recipe(REPO / "recipes" / "tiny.toml", [
        f"data.path={assets['root']}/data", "sample.fps=4"]))


def test_fps_option_overrides_the_recipes_sample_fps(run_with_sample_fps, tmp_path, monkeypatch):
    from hpdm_cli.drivers import sample as smp
    monkeypatch.setattr(smp, "world", lambda: (1, 2, 0))          # this rank gets no seed: nothing is sampled
    ratio = 4 / 8                                                   # level 0 has half the frames
    rep = smp.generate(run_with_sample_fps, tmp_path / "c.mp4", seeds="0", levels=0, class_="0", device="cpu")
    assert rep.fps == pytest.approx(4 * ratio)
    rep = smp.generate(run_with_sample_fps, tmp_path / "c.mp4", seeds="0", levels=0, class_="0", fps=10,
                       device="cpu")
    assert rep.fps == pytest.approx(10 * ratio)


def test_every_rank_checks_every_seeds_output_path(assets, tmp_path, monkeypatch):
    from hpdm_cli.drivers import sample as smp
    monkeypatch.setattr(smp, "world", lambda: (1, 2, 0))          # rank 1 of 2 samples seed 1 only
    (tmp_path / "clip-seed0000.mp4").mkdir()                      # seed 0's path is taken by a folder
    with pytest.raises(GenerateError, match="clip-seed0000"):
        smp.generate(assets["run"], tmp_path / "clip.mp4", seeds="0-1", class_="0", steps="1", device="cpu")
    assert not (tmp_path / "clip-seed0001.mp4").exists()


def test_a_checkpoint_samples_with_its_recipes_tiling_unless_told(assets, tmp_path, stopped_sampling):
    import hpdm_cli.drivers.sample as drv
    seen, Stop = stopped_sampling
    for given in (None, "fh"):
        with pytest.raises(Stop):
            drv.generate(assets["run"], tmp_path / "c.mp4", class_="0", steps="1", device="cpu", overlap=given)
    assert seen == [None, "fh"]                                     # None: the recipe's pyramid.overlap


def test_report_names_no_guide_when_guidance_of_level0_is_one(tmp_path, monkeypatch):
    from hpdm_cli.drivers import sample as smp
    monkeypatch.setattr(smp, "world", lambda: (1, 2, 0))
    rep = smp.generate(None, tmp_path / "c.mp4", seeds="0", guidance="1", device="cpu",
                       prompt="a red square moving left")
    assert rep.guide == ""


def test_sample_videos_sums_each_levels_time_over_batches(assets, monkeypatch):
    from types import SimpleNamespace
    import hpdm_cli.drivers.generation as gen_mod

    class Sampler:
        device = torch.device("cpu")

        def sample(self, seeds, cond, guidance=None, levels=3, steps=None, fixed=None, progress=None):
            return SimpleNamespace(videos=[torch.zeros(len(seeds), 3, 1, 2, 2)] * levels,
                                   seconds=[1.0, 2.0, 3.0][:levels])
    monkeypatch.setattr(gen_mod, "make_sampler", lambda *a, **k: Sampler())
    out = sample_videos(None, assets["recipe"], [0, 1, 2], batch=2, steps=[1, 1, 1])
    assert out.seconds == [2.0, 4.0, 6.0]                            # two calls, every level
    assert sample_videos(None, assets["recipe"], [0], levels=1, steps=[1, 1, 1]).seconds == [1.0, 2.0]


def test_one_non_finite_value_is_enough_to_refuse():
    from hpdm_cli.drivers.generation import check_finite
    check_finite(torch.zeros(2, 3), "x")
    with pytest.raises(GenerateError, match="non-finite"):
        check_finite(torch.tensor([0.0, float("nan"), 1.0]), "x")


def test_bf16_samples_under_bfloat16_autocast():
    from hpdm_cli.drivers.generation import make_sampler
    recipe = tiny_toml()
    net = build_model(recipe)
    assert make_sampler(net, recipe, device="cpu", bf16=True).autocast == torch.bfloat16
    assert make_sampler(net, recipe, device="cpu").autocast is None


def test_a_guide_trained_with_another_input_scale_is_refused(assets, tmp_path):
    rec = load_recipe(REPO / "recipes" / "tiny.toml", [f"data.path={assets['root']}/data", "pyramid.resolution=[4,8,8]",
                                                      "pyramid.patch=[4,8,8]", "diffusion.input_scale=0.5"])
    guide = _save(tmp_path / "guide", rec)
    with pytest.raises(GenerateError, match="input_scale 0.5"):
        generate(assets["run"], tmp_path / "c.mp4", class_="0", levels=0, steps="1", guidance="2,1,1",
                 guide_model=guide, device="cpu")
    assert not (tmp_path / "c.mp4").exists()


def test_a_window_overlap_of_one_is_refused():
    with pytest.raises(GenerateError, match="--window-overlap 1.0"):
        window_starts(20, 8, 1.0)
    assert window_starts(20, 8, 0.0) == [0, 6, 12]                        # spread evenly, no overlap asked


def test_upscale_refuses_no_frames_and_an_unknown_pad_mode_even_when_cropping(assets):
    rec = assets["recipe"]
    with pytest.raises(GenerateError, match="expected uint8"):
        upscale_frames(np.zeros((0, 8, 8, 3), np.uint8), None, rec, sample_fn=Standin(rec))
    with pytest.raises(GenerateError, match="--pad-mode"):
        upscale_frames(smooth_video(8, 8, 8), None, rec, fit="crop", pad_mode="zebra", sample_fn=Standin(rec))


def test_upscale_rounds_to_the_nearest_uint8(assets):
    rec = assets["recipe"]
    v = 100.8 / 127.5 - 1                                             # 100.8 after [-1, 1] -> [0, 255]

    def constant(seeds, fixed):
        return torch.full((len(seeds), 3, *rec.pyramid.resolution), v)
    res = upscale_frames(smooth_video(8, 8, 8), None, rec, sample_fn=constant)
    assert (res.frames == 101).all()


def test_upscale_progress_counts_steps_over_window_groups(assets, gen):
    net, rec, _ = gen
    calls = []
    upscale_frames(smooth_video(20, 8, 8), net, rec, from_level=1, batch=2, steps=[1, 1, 1],
                   progress=lambda *a: calls.append(a))
    assert calls == [(2, 1, 2), (2, 2, 2)]                           # 4 windows in 2 calls, level 2 generated


def _upscale_input(tmp_path, h=12, w=20) -> Path:
    src = tmp_path / "in.mp4"
    write_video(src, smooth_video(8, h, w), 12.5)
    return src


def test_upscale_warns_when_either_side_is_larger_than_the_model(assets, tmp_path):
    from hpdm_cli.drivers.upscale import size_notes, upscale
    said = []
    upscale(_upscale_input(tmp_path, 64, 40), assets["run"], tmp_path / "up.mp4", steps="1", device="cpu",
            warn=said.append)
    assert said == ["the 40x40 centre of the input (64x40) that --fit crop keeps is larger than this model's videos: "
                    "the output is 32x32, smaller than the input"]
    said.clear()
    # What the fit keeps decides, not the input's size: a 48x20 input is cropped to 20x20 and enlarged (no note);
    # a 2x2 one has fewer pixels than level 0 (8x8); --fit pad of a thin one keeps a 32x1 strip of the frame.
    rec = load_recipe(REPO / "recipes" / "tiny.toml")
    assert size_notes((48, 20), rec, "crop", 0) == []
    assert size_notes((48, 32), rec, "crop", 0)[0].startswith("the 32x32 centre of the input (48x32) that --fit "
                                                              "crop keeps is already the output's size (32x32)")
    assert size_notes((32, 16), rec, "pad", 0) == ["with --fit pad the output is the 32x16 part of the model's "
                                                   "32x32 frame that shows the input", "the input (32x16) is already "
                                                   "the output's size (32x16): nothing is enlarged; levels 1 and up "
                                                   "are redrawn from its level 0"]
    assert size_notes((2, 2), rec, "crop", 0) == ["the input (2x2) has fewer pixels than level 0 (8x8), which is "
                                                  "taken from it: that level itself is enlarged, and the output will "
                                                  "look blocky"]
    assert size_notes((512, 8), rec, "pad", 0) == [
        "with --fit pad the output is the 32x1 part of the model's 32x32 frame that shows the input",
        "the input (512x8) is larger than this model's videos: the output is 32x1, smaller than the input"]
    upscale(_upscale_input(tmp_path, 32, 32), assets["run"], tmp_path / "same.mp4", steps="1", device="cpu",
            from_level=1, warn=said.append)
    assert said == ["the input (32x32) is already the output's size (32x32): nothing is enlarged; levels 2 and up "
                    "are redrawn from its levels 0-1"]
    said.clear()
    upscale(_upscale_input(tmp_path, 12, 20), assets["run"], tmp_path / "small.mp4", steps="1", device="cpu",
            warn=said.append)
    assert said == []


def test_upscale_works_on_rank_0_only(assets, tmp_path, monkeypatch):
    import hpdm_cli.drivers.upscale as up
    monkeypatch.setattr(up, "world", lambda: (1, 2, 0))
    rep = up.upscale(_upscale_input(tmp_path), assets["run"], tmp_path / "up.mp4", steps="1", device="cpu")
    assert rep.file is None and not (tmp_path / "up.mp4").exists()


def test_upscale_of_a_video_without_a_frame_rate_uses_the_recipes_sample_fps(run_with_sample_fps, tmp_path,
                                                                           monkeypatch):
    import hpdm_cli.io.video as video_io
    monkeypatch.setattr(video_io, "read_upright", lambda path: (smooth_video(8, 32, 32), 0.0))
    from hpdm_cli.drivers.upscale import upscale
    rep = upscale(_upscale_input(tmp_path), run_with_sample_fps, tmp_path / "up.mp4", steps="1", device="cpu")
    assert rep.fps == 4.0


def test_upscale_checks_before_loading_the_checkpoint(tmp_path):
    from hpdm_cli.drivers.upscale import upscale
    src = _upscale_input(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(GenerateError, match="is the input video"):
        upscale(src, tmp_path / "nope", tmp_path / "sub" / ".." / "in.mp4")
    with pytest.raises(GenerateError, match="--from-level -1"):
        upscale(src, tmp_path / "nope", tmp_path / "up.mp4", from_level=-1)


def test_sample_and_upscale_commands_pass_their_flags_and_print_one_report(assets, tmp_path, capsys, monkeypatch):
    import hpdm_cli.drivers.sample as smp
    import hpdm_cli.drivers.upscale as up
    from hpdm_cli.drivers.sample import SampleReport
    from hpdm_cli.drivers.upscale import UpscaleReport
    seen = []

    def fake_generate(ckpt, out, **kw):
        seen.append(kw)
        return SampleReport(files=[], seeds=[0], all_seeds=[0], rank=0, world_size=1, level=2, shape=(8, 32, 32),
                            fps=8.0, condition="unconditional", weights=Path("w.safetensors"), step=1,
                            seconds=[0.5], device="cpu")

    def fake_upscale(input, ckpt, out, **kw):
        seen.append(kw)
        return UpscaleReport(file=None, input_shape=(), output_shape=(), fps=0.0, windows=0, from_level=0,
                             condition="unconditional", weights=Path("w.safetensors"), step=1, device="cpu")
    monkeypatch.setattr(smp, "generate", fake_generate)
    monkeypatch.setattr(up, "upscale", fake_upscale)
    for extra in ([], ["--no-cache"]):
        code, out, err = cli(capsys, "sample", "--no-progress", *extra)
        assert code == 0 and "rank" not in out and "unconditional, 1 seed(s), level 2: 8x32x32" in out, (out, err)
        code, out, err = cli(capsys, "upscale", "in.mp4", "--ckpt", "run", "--out", "o.mp4", "--no-progress", *extra)
        assert code == 0 and out == "", err                            # another rank's report: nothing to say
    assert [kw["cache"] for kw in seen] == [True, True, False, False]
