"""The training loop: exact resume (docs/method.md, invariant "resume reproduces the uninterrupted run"),
SIGTERM, continuing, refusals, non-finite steps, init_from.

Every run trains the tiny recipe for a few steps at batch 4 on a 16-video 8x32x32 shapes dataset
made once per session. Reference (uninterrupted) runs are made once per module and shared.
"""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hpdm_cli.errors import HPDMError
from hpdm_cli.io.lock import lock_holder
from hpdm_cli.recipe import default_recipe_path, load_recipe
from hpdm_cli.train import loop, step
from hpdm_cli.train.batches import Batches
from hpdm_cli.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from hpdm_cli.train.init_from import grown_levels, init_from_checkpoint
from hpdm_cli.train.loop import TrainError, train
from hpdm_cli.train.step import build_model
from hpdm_cli.train.optim import lr_at
from hpdm_cli.train.signals import StopFlag
from hpdm_cli.train.stats import read_stats
from conftest import run_cli as cli, tiny_toml

BASE = dict(steps=6, log_every=1, ckpt_every=2, batch_size=4, warmup_steps=2, ema_halflife_steps=2.0,
            keep_last=2, grad_clip=1.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: as fast on a 2-core machine and much faster when other jobs share it. Runs that
    are compared bit for bit must use the same thread count (the SIGTERM test passes it to its subprocess)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _shared_dataset(factory, name: str, **kw) -> Path:
    """A shapes dataset written once per session under pytest's base temp directory."""
    from hpdm_cli.data.shapes import write_shapes_dataset
    path = factory.getbasetemp() / "datasets" / name
    if not (path / "dataset.json").exists():
        write_shapes_dataset(path, num_videos=16, height=32, width=32, overwrite=True, **kw)
    return path


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    return _shared_dataset(tmp_path_factory, "shapes-8x32x32", frames=8)


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> Path:
    return _shared_dataset(tmp_path_factory, "shapes-images-32x32", frames=1)


def overrides(data: Path, *extra: str, **train_keys) -> list:
    """Command-line style overrides of the tiny recipe: BASE train keys, then `train_keys`, then `extra`."""
    keys = {**BASE, **train_keys}
    return [f"data.path={json.dumps(str(data))}"] + [f"train.{k}={json.dumps(v)}" for k, v in keys.items()] \
        + list(extra)


def make_recipe(data: Path, *extra: str, **train_keys):
    return load_recipe(default_recipe_path("tiny"), overrides(data, *extra, **train_keys))


def quiet(msgs=None):
    return (lambda m: None) if msgs is None else msgs.append


def losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in read_stats(run_dir)}


def last_checkpoint(run_dir) -> dict:
    return load_checkpoint(list_checkpoints(run_dir)[-1])


def assert_same_state(a, b):
    """The newest checkpoints of two runs hold equal model, EMA, optimiser, RNG and counters."""
    ca, cb = last_checkpoint(a), last_checkpoint(b)
    assert ca["state"] == cb["state"]
    for part in ("model", "ema", "extra"):
        assert ca[part].keys() == cb[part].keys(), part
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), f"{part}.{k} differs"
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys() and len(oa["state"]) > 0
    for i in oa["state"]:
        for k in oa["state"][i]:
            assert torch.equal(oa["state"][i][k], ob["state"][i][k]), f"optimizer state {i}.{k} differs"


VARIANTS = {
    "base": dict(extra=(), train={}),
    "accum2": dict(extra=(), train=dict(grad_accum=2, grad_clip=0.0)),
    "joint": dict(extra=("data.image_fraction=0.5", "data.num_workers=1"), train={}),   # + a loader worker
    "adamw": dict(extra=(), train=dict(optimizer="adamw")),                              # fused, device step counts
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes_data, image_data):
    """Uninterrupted reference runs of each variant, trained once per module."""
    done = {}

    def get(variant: str):
        if variant not in done:
            v = VARIANTS[variant]
            extra = v["extra"] + ((f"data.image_path={json.dumps(str(image_data))}",) if variant == "joint" else ())
            rec = make_recipe(shapes_data, *extra, **v["train"])
            run = tmp_path_factory.mktemp(f"ref-{variant}")
            s = train(rec, run, log=quiet())
            assert s.step == rec.train.steps and s.interrupted is None and s.skipped == 0
            done[variant] = (rec, run)
        return done[variant]
    return get


# --------------------------------------- docs/method.md, invariant "resume reproduces the uninterrupted run"

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stop_and_resume_reproduces_uninterrupted_run(variant, reference, tmp_path, monkeypatch):
    rec, ref = reference(variant)
    N, k = rec.train.steps, 3
    s1 = train(rec, tmp_path, log=quiet(), stop_after=k)
    assert (s1.start_step, s1.step, s1.interrupted) == (0, k, None)
    assert s1.checkpoint == tmp_path / "checkpoints" / f"ckpt-{k:08d}"

    # Resuming never unpickles anything: tensors come from safetensors, the rest from JSON.
    def no_pickle(*a, **kw):
        raise AssertionError("pickle/torch.load used while resuming")
    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    msgs = []
    s2 = train(rec, tmp_path, log=quiet(msgs))
    monkeypatch.undo()
    assert any("resumed from" in m and f"at step {k}" in m for m in msgs), msgs
    assert (s2.start_step, s2.step) == (k, N)

    got, want = losses(tmp_path), losses(ref)
    assert sorted(want) == list(range(1, N + 1))
    assert [r["step"] for r in read_stats(tmp_path)] == list(range(1, N + 1))   # each step logged once
    assert got == want                                                      # bit-exact on CPU
    assert s2.last_loss == want[N]
    assert_same_state(tmp_path, ref)
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".pickle", ".bin"))], files


def _wait_for(pred, timeout, proc):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(sig, reference, shapes_data, tmp_path):
    """SIGTERM (exit 143) or Ctrl-C (exit 130) to a running `hpdm train`: checkpoint, clean exit, exact resume."""
    rec, ref = reference("base")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hpdm_cli", "train", "tiny", *overrides(shapes_data), "--run-dir", str(run),
           "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))   # same maths as this process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert _wait_for(lambda: len(losses(run)) >= 1, 120, proc), proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (out, err)
    assert "Traceback" not in out + err, err
    stopped = len(losses(run))
    assert 1 <= stopped < rec.train.steps
    assert list_checkpoints(run)[-1].name == f"ckpt-{stopped:08d}"        # saved at the step it stopped
    assert f"stopped by signal {int(sig)} at step {stopped}" in out
    assert "stopped by signal" in (run / "train.log").read_text()
    assert lock_holder(run) is None                                       # the lock was released on the way out

    s = train(rec, run, log=quiet())
    assert (s.start_step, s.step) == (stopped, rec.train.steps)
    assert losses(run) == losses(ref)
    assert_same_state(run, ref)


def test_stats_lr_schedule_and_log(reference):
    rec, ref = reference("base")
    t = rec.train
    rows = read_stats(ref)
    for r in rows:
        assert r["lr"] == lr_at(r["step"] - 1, lr=t.lr, warmup_steps=t.warmup_steps, total_steps=t.steps,
                                min_lr_ratio=t.min_lr_ratio)
        assert r["skipped"] == 0 and r["grad_norm"] > 0
        assert {"loss_l0", "loss_l1", "loss_l2", "videos_per_s", "tflops_per_s", "elapsed_s"} <= set(r)
    assert rows[1]["lr"] > rows[0]["lr"] and rows[-1]["lr"] < rows[2]["lr"]   # warm-up, then cosine decay
    elapsed = [r["elapsed_s"] for r in rows]
    assert 0 < elapsed[0] and all(b > a for a, b in zip(elapsed, elapsed[1:]))   # seconds since the run began
    log = (ref / "train.log").read_text()
    phases = r"start-up [0-9.]+ s \(run directory and model [0-9.]+ s, data [0-9.]+ s, condition [0-9.]+ s;"
    assert re.search(phases, log)
    assert log.count("step ") >= t.steps and f"step {t.steps}/{t.steps} loss" in log
    saved = load_recipe(ref / "recipe.toml")
    assert saved == rec
    env = json.loads((ref / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["world_size"] == 1
    assert [p.name for p in list_checkpoints(ref)] == ["ckpt-00000004", "ckpt-00000006"]    # keep_last = 2
    assert sorted(p.name for p in list_checkpoints(ref)[-1].iterdir()) == [
        "ema.safetensors", "model.safetensors", "optim.safetensors", "state.json"]


def test_joint_batches_mix_still_images(shapes_data, image_data):
    from hpdm_cli.train.distributed import DistInfo
    rec = make_recipe(shapes_data, f"data.image_path={json.dumps(str(image_data))}", "data.image_fraction=0.25")
    b = Batches(rec, DistInfo(), 4, start_batch=0, total_batches=2)
    assert (b.n_vid, b.n_img) == (3, 1)
    videos, labels, caps = b.next(torch.device("cpu"), 8)
    assert videos.shape == (4, 3, 8, 32, 32) and labels.shape == caps.shape == (4,)
    still = (videos - videos[:, :, :1]).flatten(1).abs().amax(1) == 0
    assert still.tolist() == [False, False, False, True]                  # an image is a still video
    from hpdm_cli.data.shards import VideoDataset
    n_vid_caps = len(VideoDataset(shapes_data).captions())
    assert len(b.captions) == n_vid_caps + len(VideoDataset(image_data).captions())
    assert (caps[:3] < n_vid_caps).all() and caps[3] >= n_vid_caps         # one joint caption list


def test_bf16_autocast_trains(shapes_data, tmp_path):
    s = train(make_recipe(shapes_data, 'train.precision="bf16"', steps=2), tmp_path, log=quiet())
    rows = read_stats(tmp_path)
    assert s.step == 2 and s.skipped == 0 and all(r["loss"] is not None and r["loss"] > 0 for r in rows)
    c = last_checkpoint(tmp_path)
    assert all(v.dtype == torch.float32 for v in c["model"].values())         # weights stay float32


@pytest.mark.parametrize("prob,warned", [(1.0, True), (0.75, False)])
def test_context_prob_one_is_warned_about_as_it_leaves_level_0_untrained(prob, warned, shapes_data, tmp_path):
    msgs = []
    train(make_recipe(shapes_data, f"diffusion.context_prob={prob}", steps=1), tmp_path, log=quiet(msgs))
    assert any("context_prob = 1" in m and "level 0" in m for m in msgs) == warned


def test_a_ramped_log_sigma_mean_is_announced_and_a_constant_one_is_not(shapes_data, tmp_path):
    msgs = []
    train(make_recipe(shapes_data, "diffusion.p_mean_start=1.0", "diffusion.p_mean=-1.0", steps=3), tmp_path / "a",
          log=quiet(msgs))
    assert any("log-sigma mean: 1.0 at step 0 -> -1.0 at step 2 (diffusion.p_mean_start); 1.0 now" in m
               for m in msgs), msgs
    msgs.clear()
    train(make_recipe(shapes_data, steps=1), tmp_path / "b", log=quiet(msgs))
    assert not any("log-sigma mean" in m or "clean context" in m for m in msgs)
    msgs.clear()
    train(make_recipe(shapes_data, "diffusion.context_prob_start=0.0", "diffusion.context_prob=0.75", steps=3),
          tmp_path / "c", log=quiet(msgs))
    assert any("clean context: 0 at step 0 -> 0.75 at step 2 (diffusion.context_prob_start); 0 now" in m
               for m in msgs), msgs


# ------------------------------------------------------------------------------------------ continuing, refusals

def test_continue_with_more_steps_and_nothing_to_do(reference, shapes_data, tmp_path):
    rec, ref = reference("base")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    msgs = []
    s = train(rec, run, log=quiet(msgs))                                    # same command again: nothing to do
    assert (s.start_step, s.step) == (6, 6) and any("nothing to do" in m for m in msgs)
    assert s.last_loss == losses(ref)[6]                                    # the last logged loss, not nan
    more = make_recipe(shapes_data, steps=8, warmup_steps=9)
    s = train(more, run, log=quiet(msgs), progress=True)                   # with the Rich live progress bar
    assert (s.start_step, s.step, s.steps) == (6, 8, 8)
    # Warnings said before the run directory is opened reach train.log too, and so does the new schedule.
    log = (run / "train.log").read_text()
    for said in ("train.warmup_steps = 9 is more than train.steps = 8",
                 "train.steps = 8, where its checkpoint was trained for 6: the learning-rate schedule is recomputed"):
        assert any(said in m for m in msgs) and log.count(said) == 1, (said, msgs)
    # A run with nothing left to do, or started again with the steps its checkpoint was trained for: no such warning.
    for steps in (5, 8):
        msgs.clear()
        train(make_recipe(shapes_data, steps=steps), run, log=quiet(msgs))
        assert not any("schedule is recomputed" in m for m in msgs), (steps, msgs)
    assert not any(m.startswith("step 7/8") for m in msgs)                  # the bar replaces the status lines...
    assert "step 7/8 loss" in (run / "train.log").read_text()              # ...which still go to the log
    rows = read_stats(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r["loss"] is not None for r in rows)
    assert list_checkpoints(run)[-1].name == "ckpt-00000008"
    assert load_recipe(run / "recipe.toml").train.steps == 8


def test_run_dir_of_another_architecture_is_refused(reference, shapes_data, tmp_path):
    rec, ref = reference("base")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = (run / "recipe.toml").read_text()
    other = make_recipe(shapes_data, "model.latent_dim=32")
    with pytest.raises(TrainError) as e:
        train(other, run, log=quiet())
    msg = str(e.value)
    assert "\n" not in msg and "architecture" in msg and str(run) in msg
    assert f"(model.latent_dim {rec.model.latent_dim} there, 32 here)" in msg          # the key to restore
    assert (run / "recipe.toml").read_text() == before                     # nothing was overwritten
    # Without recipe.toml the checkpoint itself is refused (also one line, naming the checkpoint).
    (run / "recipe.toml").unlink()
    with pytest.raises(CheckpointError) as e:
        train(other, run, log=quiet())
    assert "\n" not in str(e.value) and "ckpt-00000006" in str(e.value) and "model.latent_dim" in str(e.value)


def test_a_prepared_dataset_is_not_taken_for_a_run_directory(shapes_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(TrainError, match=r"is a prepared dataset \(it holds dataset.json\): choose another folder"):
        train(make_recipe(data), data, log=quiet())
    assert not (data / "recipe.toml").exists() and not (data / "checkpoints").exists()
    assert sorted(p.name for p in data.iterdir()) == before


def test_a_folder_of_the_users_files_is_not_taken_for_a_run_directory(shapes_data, tmp_path):
    """A --run-dir holding files a run does not write, or a recipe.toml hpdm did not write, is refused untouched."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match=r"holds files that are not an hpdm run's \(notes.txt\): choose an empty"):
        train(make_recipe(shapes_data), mine, log=quiet())
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]          # not even a lock file was left there
    (mine / "notes.txt").unlink()
    (mine / "recipe.toml").write_text("# my recipe\n")
    (mine / "env.json").write_text("{}")
    with pytest.raises(TrainError, match=r"recipe.toml is not the resolved recipe hpdm train writes there"):
        train(make_recipe(shapes_data), mine, log=quiet())
    assert (mine / "recipe.toml").read_text() == "# my recipe\n" and (mine / "env.json").read_text() == "{}"
    assert sorted(p.name for p in mine.iterdir()) == ["env.json", "recipe.toml"]
    # A run stopped before its first checkpoint or logged step holds only a run's own files: it is taken up again.
    from hpdm_cli.recipe import dump_recipe
    from hpdm_cli.train.loop import _check_run_dir
    from hpdm_cli.train.run_dir import ENV, LOG, RECIPE, RUN_TABLE, TENSORBOARD
    stopped = tmp_path / "stopped"
    (stopped / TENSORBOARD).mkdir(parents=True)
    recipe = make_recipe(shapes_data)
    dump_recipe(recipe, stopped / RECIPE)
    for name in (ENV, LOG, RUN_TABLE):
        (stopped / name).write_text("")
    assert _check_run_dir(recipe, stopped, warn=lambda m: None) is None
    (stopped / "notes.txt").write_text("mine")                    # the user's file beside the recipe hpdm wrote
    assert _check_run_dir(recipe, stopped, warn=lambda m: None) is None


def test_a_missing_init_from_is_named_before_the_run_directory_is_written(shapes_data, tmp_path):
    with pytest.raises(TrainError, match=r"^train.init_from = '.*nope': .*no such checkpoint file or run directory$"):
        train(make_recipe(shapes_data, f"train.init_from={json.dumps(str(tmp_path / 'nope'))}"), tmp_path / "r",
              log=quiet())
    assert not (tmp_path / "r").exists()


def test_a_run_that_never_trained_does_not_bind_its_directory(shapes_data, tmp_path):
    """Data of another size is refused before the run directory is made; a run directory holding a recipe and
    nothing trained (a run stopped before its first step) does not bind it: the fixed recipe may differ."""
    from hpdm_cli.recipe import dump_recipe
    run = tmp_path / "run"
    with pytest.raises(HPDMError, match="holds 32x32 videos but 64x64 are needed"):       # the data is 8x32x32
        train(make_recipe(shapes_data, "pyramid.resolution=[8,64,64]"), run, log=quiet())
    assert not run.exists()
    run.mkdir()
    dump_recipe(make_recipe(shapes_data), run / "recipe.toml")
    warned = []
    train(make_recipe(shapes_data, "model.latent_dim=32", steps=1), run, log=warned.append)
    assert any("never trained" in str(m) for m in warned)
    assert load_recipe(run / "recipe.toml").model.latent_dim == 32 and list_checkpoints(run)


def test_a_class_model_on_unlabelled_clips_is_refused_before_the_run_directory(shapes_data, tmp_path):
    """model.cond = "class" needs every clip of data.path (and data.image_path) labelled: said before any write."""
    from hpdm_cli.data.shards import ShardWriter
    bare = tmp_path / "bare"
    with ShardWriter(bare) as w:
        for i in range(3):
            w.add(np.full((8, 32, 32, 3), 40 * i, np.uint8), label=-1)
    for args in ([], [f"data.image_path={json.dumps(str(bare))}", "data.image_fraction=0.5"]):
        data = bare if not args else shapes_data
        with pytest.raises(TrainError, match=r'^model.cond = "class" but 3 of data\.(image_)?path\'s 3 clips have no '
                                             r"label \(.*bare\): prepare it from class sub-folders"):
            train(make_recipe(data, 'model.cond="class"', "model.num_classes=16", *args), tmp_path / "run", log=quiet())
        assert not (tmp_path / "run").exists()
    with pytest.raises(TrainError, match=r"^the dataset has 16 classes but model.num_classes = 2: set "
                                         r"model.num_classes=16 \(or more\)$"):
        train(make_recipe(shapes_data, 'model.cond="class"', "model.num_classes=2"), tmp_path / "run2", log=quiet())
    assert not (tmp_path / "run2").exists()          # refused after the folder was made: removed, lock and all


def test_a_refused_start_removes_only_a_folder_it_made(shapes_data, tmp_path):
    """A run refused after it made its run directory (here: more classes than model.num_classes) leaves nothing
    behind; a folder the user made, or a run that trained, is never removed."""
    bad = (shapes_data, 'model.cond="class"', "model.num_classes=2")
    mine = tmp_path / "mine"
    mine.mkdir()
    for run in (tmp_path / "new", tmp_path / "deeper" / "new", mine):
        with pytest.raises(TrainError, match="^the dataset has 16 classes but model.num_classes = 2"):
            train(make_recipe(*bad), run, log=quiet())
    assert not (tmp_path / "new").exists() and (tmp_path / "deeper").is_dir() and mine.is_dir()
    trained = tmp_path / "trained"
    train(make_recipe(shapes_data, 'model.cond="class"', "model.num_classes=16", steps=1), trained, log=quiet())
    before = sorted(p.name for p in trained.rglob("*"))
    with pytest.raises(HPDMError):
        train(make_recipe(shapes_data, 'model.cond="class"', "model.num_classes=2", steps=2), trained, log=quiet())
    assert sorted(p.name for p in trained.rglob("*")) == before


def test_a_run_refused_by_another_runs_lock_leaves_the_folder_alone(shapes_data, tmp_path, monkeypatch):
    """Two runs start on one new folder: the one that made it but lost the race for its lock is refused and leaves
    the folder, and the run in it, alone."""
    from contextlib import ExitStack
    real, other = loop.hold_lock, ExitStack()

    def racing(directory, *a, **k):
        other.enter_context(real(directory, "another hpdm train", error=TrainError))   # the other run locks first
        return real(directory, *a, **k)
    monkeypatch.setattr(loop, "hold_lock", racing)
    run = tmp_path / "new"
    with other:
        with pytest.raises(TrainError, match="is already in use"):
            train(make_recipe(shapes_data), run, log=quiet())
        assert run.is_dir() and lock_holder(run) is not None


def test_a_fresh_run_stopped_by_an_error_after_training_keeps_its_folder(shapes_data, tmp_path, monkeypatch):
    """Only a start that trained nothing is removed: a new run that diverges keeps its checkpoints and log."""
    real, n = step.edm_loss, {"calls": 0}

    def diverging(*a, **kw):
        out = real(*a, **kw)
        n["calls"] += 1
        if n["calls"] > 2:
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(step, "edm_loss", diverging)
    run = tmp_path / "run"
    with pytest.raises(TrainError, match="non-finite"):
        train(make_recipe(shapes_data, steps=8, ckpt_every=1, max_nonfinite_steps=2), run, log=quiet())
    assert list_checkpoints(run) and read_stats(run)


@pytest.mark.parametrize("extra,message", [
    (["model.channels=1"], r"^model.channels = 1, but training videos are RGB \(3 channels\): set model.channels = 3$"),
    (["train.steps=0"], r"^train.steps = 0 trains nothing: raise train.steps"),
])
def test_settings_that_would_fail_later_are_refused_before_the_run_directory(shapes_data, tmp_path, extra, message):
    with pytest.raises(TrainError, match=message):
        train(make_recipe(shapes_data, *extra), tmp_path / "run", log=quiet())
    assert not (tmp_path / "run").exists()


def test_a_model_too_large_for_memory_is_a_one_line_error(shapes_data, monkeypatch):
    from hpdm_cli.config import ConfigError

    def huge(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 25600000000 bytes.")
    monkeypatch.setattr(step, "HPDMNet", huge)
    with pytest.raises(ConfigError, match=r"^the recipe's model does not fit in memory \(.*25600000000 bytes\.\): "
                                          r"make it smaller \(model.num_latents"):
        step.build_model(make_recipe(shapes_data))
    monkeypatch.setattr(step, "HPDMNet", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="^a bug$"):                     # other errors are not disguised
        step.build_model(make_recipe(shapes_data))


def test_settings_that_mislead_are_said_before_training(shapes_data, tmp_path):
    """A guide model that is not there, a warm-up longer than the run and an overlap that cannot tile the patch
    are warned about (the run goes on)."""
    said = []
    train(make_recipe(shapes_data, 'sample.guide_model="/no/guide.safetensors"', 'pyramid.overlap="fhw"',
                      "pyramid.patch=[1,8,8]", "model.tokenizer=[1,2,2]", steps=1, warmup_steps=5),
          tmp_path / "run", log=said.append)
    text = "\n".join(said)
    assert "sample.guide_model = '/no/guide.safetensors' does not exist here" in text
    assert "train.warmup_steps = 5 is more than train.steps = 1" in text
    assert "pyramid.overlap = 'fhw' tiles every half tile along f, where pyramid.patch is odd" in text
    for cond, warned in (("class", False), ("text", True)):     # a missing prompt table: only text models read one
        said.clear()
        loop._check_settings(make_recipe(shapes_data, f'model.cond="{cond}"', "model.num_classes=16",
                                         'data.prompt_table="/no/table.safetensors"'), tmp_path / "r", said.append)
        assert any("data.prompt_table = '/no/table.safetensors': no such file" in m for m in said) == warned
    for compile_, warned in (("false", "is unused"), ('"reduce-overhead"', "records a CUDA graph per block"),
                             ("true", None)):          # block by block: not with CUDA graphs, and only compiled
        said.clear()
        loop._check_settings(make_recipe(shapes_data, f"train.compile={compile_}", 'train.compile_scope="blocks"'),
                             tmp_path / "r", said.append)
        scope = [m for m in said if "train.compile_scope" in m]
        assert (scope == []) if warned is None else (len(scope) == 1 and warned in scope[0]), said


def test_missing_dataset_is_a_one_line_error(tmp_path):
    rec = make_recipe(tmp_path / "no-such-dataset")
    with pytest.raises(ValueError) as e:
        train(rec, tmp_path / "run", log=quiet())
    assert "\n" not in str(e.value) and "no-such-dataset" in str(e.value) and "hpdm prepare" in str(e.value)
    assert not (tmp_path / "run").exists()                                  # refused before touching the run dir
    res = subprocess.run([sys.executable, "-m", "hpdm_cli", "train", "tiny", *overrides(tmp_path / "nope"),
                          "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("hpdm: error:"), res.stderr


def test_corrupt_newest_checkpoint_is_skipped_and_resume_stays_exact(reference, tmp_path):
    rec, ref = reference("base")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    newest = list_checkpoints(run)[-1]
    p = newest / "optim.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])                  # truncated
    with open(run / "stats.jsonl", "ab") as f:                             # and bytes a crash left in the log
        f.write(b"\xb3\xff{\"step\": 9\x00")
    rec10 = rec
    msgs = []
    s = train(rec10, run, log=quiet(msgs))
    assert any(m.startswith("warning: skipping") and newest.name in m for m in msgs), msgs   # hpdm train: stderr
    assert "skipping" in (run / "train.log").read_text()
    assert (s.start_step, s.step) == (4, 6)
    assert losses(run) == losses(ref)
    assert [r["step"] for r in read_stats(run)] == list(range(1, 7))        # no duplicated steps 5, 6
    assert_same_state(run, ref)


def test_a_run_whose_checkpoints_are_all_unusable_is_not_restarted_over_them(reference, tmp_path):
    """Every checkpoint unreadable: refused (also on the next try, once they are set aside), not a silent restart
    from step 0 that rewrites stats.jsonl; checkpoints/ as a file is refused before anything is written; a run
    stopped before its first checkpoint starts again, and says so; init_from on a resumed run is said unused."""
    rec, ref = reference("base")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    stats = (run / "stats.jsonl").read_text()
    for c in list_checkpoints(run):
        (c / "state.json").write_text("{cut")
    for attempt in range(2):
        with pytest.raises(TrainError, match=r"no usable checkpoint \(2 unreadable, e.g. ckpt-00000004.corrupt; see "
                                             r"the warnings\): restore one, or move the run directory aside"):
            train(rec, run, log=quiet())
    assert (run / "stats.jsonl").read_text() == stats
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder")
    with pytest.raises(TrainError, match=r"checkpoints is a file, not the run's folder of checkpoints"):
        train(rec, run, log=quiet())
    assert (run / "stats.jsonl").read_text() == stats
    (run / "checkpoints").unlink()
    msgs = []
    train(rec, run, log=quiet(msgs))
    assert any("no checkpoint was saved before the run stopped: training starts again from step 0" in m for m in msgs)
    msgs.clear()
    started = make_recipe(rec.data.path, f"train.init_from={json.dumps(str(ref))}", steps=7)
    train(started, run, log=quiet(msgs))
    assert any("train.init_from is not used: the run resumes from its checkpoint of step 6" in m for m in msgs)
    msgs.clear()                                       # resumed with the init_from it now holds: nothing to say
    train(make_recipe(rec.data.path, f"train.init_from={json.dumps(str(ref))}", steps=8), run, log=quiet(msgs))
    assert not any("train.init_from is not used" in m for m in msgs)


# ------------------------------------------------------------------------------------------ a crash mid-checkpoint

def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(reference, shapes_data, tmp_path, monkeypatch):
    rec, ref = reference("base")
    from hpdm_cli.train import checkpoint as ckpt_mod
    real = ckpt_mod.save_file
    calls = []

    def crashing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 5:                            # 2nd file (ema) of the 2nd checkpoint (step 4)
            with open(path, "wb") as f:
                f.write(b"\x00" * 100)                 # a partial file, then the writer dies
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(ckpt_mod, "save_file", crashing)
    with pytest.raises(CheckpointError) as e:                            # one line (exit 2 from the CLI)
        train(rec, tmp_path, log=quiet())
    assert "\n" not in str(e.value) and "No space left on device" in str(e.value)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    s = train(rec, tmp_path, log=quiet())
    assert (s.start_step, s.step) == (2, 6)
    assert losses(tmp_path) == losses(ref)
    assert_same_state(tmp_path, ref)


# ------------------------------------------------------------------------------------------ non-finite steps

@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_is_skipped_counted_and_logged(where, shapes_data, tmp_path, monkeypatch):
    rec = make_recipe(shapes_data, steps=4, ckpt_every=1, keep_last=10)
    n = {"calls": 0}
    if where == "loss":
        real = step.edm_loss

        def poisoned(*a, **kw):
            out = real(*a, **kw)
            n["calls"] += 1
            if n["calls"] == 2:
                out.loss = out.loss * float("nan")
            return out
        monkeypatch.setattr(step, "edm_loss", poisoned)
    else:
        real = loop.forward_backward

        def poisoned(model, *a, **kw):
            out = real(model, *a, **kw)
            n["calls"] += 1
            if n["calls"] == 2:
                next(model.parameters()).grad.view(-1)[0] = float("inf")
            return out
        monkeypatch.setattr(loop, "forward_backward", poisoned)
    msgs = []
    s = train(rec, tmp_path, log=quiet(msgs))
    assert (s.step, s.skipped) == (4, 1)
    rows = read_stats(tmp_path)
    assert [r["skipped"] for r in rows] == [0, 1, 1, 1]
    assert (rows[1]["loss"] is None) == (where == "loss")
    assert all(r["loss"] is not None and r["grad_norm"] is not None for r in rows[2:])
    assert any("step 1: non-finite" in m and "skipped" in m for m in msgs), msgs
    c1, c2, c3 = (load_checkpoint(tmp_path / "checkpoints" / f"ckpt-{i:08d}") for i in (1, 2, 3))
    for part in ("model", "ema"):
        assert all(torch.equal(c1[part][k], c2[part][k]) for k in c1[part]), part      # step 2 changed nothing
        assert not all(torch.equal(c2[part][k], c3[part][k]) for k in c2[part]), part  # step 3 trained
        assert all(torch.isfinite(v).all() for v in c3[part].values())
    for i, st in c2["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, c1["optimizer"]["state"][i][k])
    assert c2["state"]["skipped"] == 1


def test_the_host_reads_the_flags_only_at_sync_points_and_that_changes_no_number(reference, shapes_data, tmp_path,
                                                                                monkeypatch):
    """Between logged / checkpointed steps the step never waits for the device; the weights are the same."""
    rec0, ref = reference("base")
    rec = make_recipe(shapes_data, log_every=3, ckpt_every=3)
    reads = []
    real = loop._Steps._read

    def counted(self, flags):
        reads.append(self.step)
        return real(self, flags)
    monkeypatch.setattr(loop._Steps, "_read", counted)
    s = train(rec, tmp_path, log=quiet())
    assert reads == [3, 6] and s.step == 6 and s.last_loss == losses(ref)[6]
    assert [r["step"] for r in read_stats(tmp_path)] == [3, 6]
    assert_same_state(tmp_path, ref)


@pytest.mark.parametrize("optimizer", ["lamb", "adamw"])
def test_non_finite_steps_between_sync_points_are_skipped_and_reported_together(optimizer, shapes_data, tmp_path,
                                                                                monkeypatch):
    rec = make_recipe(shapes_data, f"train.optimizer={json.dumps(optimizer)}", log_every=3, ckpt_every=3,
                      keep_last=10)
    real, n = step.edm_loss, {"calls": 0}

    def poisoned(*a, **kw):
        out = real(*a, **kw)
        n["calls"] += 1
        if n["calls"] in (2, 3):                                          # steps 1 and 2
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(step, "edm_loss", poisoned)
    msgs = []
    s = train(rec, tmp_path, log=quiet(msgs))
    assert (s.step, s.skipped) == (6, 2)
    assert any("steps 0-2: 2 with a non-finite loss or gradient skipped (2 so far)" in m for m in msgs), msgs
    assert [r["skipped"] for r in read_stats(tmp_path)] == [2, 2]
    c3 = load_checkpoint(tmp_path / "checkpoints" / "ckpt-00000003")
    assert c3["state"]["skipped"] == 2 and all(torch.isfinite(v).all() for v in c3["model"].values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_training_step_between_sync_points_never_syncs_with_the_device(shapes_data, tmp_path, monkeypatch):
    """torch's sync debug mode raises on any host-device synchronisation inside steps 1..4 of 6."""
    rec = make_recipe(shapes_data, "train.device=\"cuda\"", log_every=6, ckpt_every=6)
    real = loop._Steps._one_step

    def strict(self, *a, **kw):
        quiet_step = 0 < self.step < 5                                    # not the first (warm-up), not a sync point
        torch.cuda.set_sync_debug_mode("error" if quiet_step else "default")
        try:
            return real(self, *a, **kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    monkeypatch.setattr(loop._Steps, "_one_step", strict)
    assert train(rec, tmp_path, log=quiet()).step == 6


# ------------------------------------------------------------------------------------------ init_from

def test_init_from_loads_matching_weights_and_lists_new_ones(reference, shapes_data, tmp_path):
    rec, ref = reference("base")
    ema = last_checkpoint(ref)["ema"]
    # A model with a different fusion: the fusion projections of the checkpoint have no place, the
    # tokenizer (twice the input channels) is new; everything else is loaded.
    shallow = make_recipe(shapes_data, 'model.fusion="shallow"')
    net = build_model(shallow)
    r = init_from_checkpoint(net, str(ref))
    assert r.new == ["tokenizer.weight"] and r.partial == []
    assert "tokenizer.bias" in r.loaded and not any(k.startswith("fusions.") for k in r.loaded)
    assert r.unused and all(k.startswith("fusions.") or k == "tokenizer.weight" for k in r.unused)
    sd = net.state_dict()
    assert all(torch.equal(sd[k], ema[k]) for k in r.loaded)
    # A base model with fewer levels (2): level-indexed tensors take its rows for the levels it had.
    base2 = make_recipe(shapes_data, "pyramid.resolution=[8, 16, 16]")
    run2 = tmp_path / "base2"
    from hpdm_cli.train.checkpoint import save_checkpoint
    small = build_model(base2)
    save_checkpoint(run2, base2, 1, model=small.state_dict(), ema=small.state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    net = build_model(rec)
    r = init_from_checkpoint(net, str(run2))
    assert r.new == r.partial == ["level_embed", "level_token"]
    sd, src = net.state_dict(), small.state_dict()
    assert all(torch.equal(sd[k], src[k]) for k in r.loaded)
    for k in r.new:
        assert torch.equal(sd[k][:2], src[k])                                   # levels 0, 1 from the base
        assert torch.equal(sd[k][2], src[k][1])                                 # level 2 starts as level 1
    # Through train(): the log says what was loaded and what is new.
    msgs = []
    s = train(make_recipe(shapes_data, f"train.init_from={json.dumps(str(run2))}", steps=1), tmp_path / "ft",
              log=quiet(msgs))
    assert s.step == 1
    line = next(m for m in msgs if m.startswith("init_from"))
    assert line == r.describe(str(run2)) and f"{len(r.loaded)} tensors loaded" in line and "level_embed" in line
    # train.steps = 0 saves the weights as init_from starts them (checkpoint 0, e.g. a grown pyramid to
    # sample before training); once, and a later run trains on from it.
    msgs = []
    s = train(make_recipe(shapes_data, f"train.init_from={json.dumps(str(run2))}", steps=0), tmp_path / "z",
              log=quiet(msgs))
    assert s.step == 0 and s.checkpoint is not None and s.checkpoint.name == "ckpt-00000000"
    z = last_checkpoint(tmp_path / "z")
    assert all(torch.equal(z["ema"][k], v) and torch.equal(z["model"][k], v) for k, v in net.state_dict().items())
    assert train(make_recipe(shapes_data, f"train.init_from={json.dumps(str(run2))}", steps=0), tmp_path / "z",
                 log=quiet()).checkpoint is None
    s = train(make_recipe(shapes_data, f"train.init_from={json.dumps(str(run2))}", steps=1), tmp_path / "z",
              log=quiet())
    assert (s.start_step, s.step) == (0, 1)
    # Continuing that run resumes from its checkpoint (init_from is not applied again).
    msgs = []
    s = train(make_recipe(shapes_data, f"train.init_from={json.dumps(str(run2))}", steps=2), tmp_path / "ft",
              log=quiet(msgs))
    assert (s.start_step, s.step) == (1, 2) and not any(m.startswith("init_from") for m in msgs)
    # A checkpoint none of whose tensors fit is refused.
    other = make_recipe(shapes_data, "model.interface_dim=32", "model.latent_dim=32")
    with pytest.raises(TrainError, match="no tensor"):
        init_from_checkpoint(build_model(other), str(run2))


def _saved_model(path, recipe, perturb: bool = True):
    """A model of `recipe` saved as a checkpoint at `path`, its weights perturbed so that every path carries signal."""
    from hpdm_cli.model import HPDMNet
    from hpdm_cli.train.checkpoint import save_checkpoint
    net = HPDMNet(recipe.pyramid, recipe.model)
    if perturb:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(path, recipe, 1, model=net.state_dict(), ema=net.state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    return net


def _denoiser_inputs(recipe, levels: int, B: int = 2):
    """Seeded inputs of a denoiser call on `levels` levels: nested offsets, noisy patches, noise levels, labels."""
    from hpdm_cli.pyramid import sample_nested_offsets
    off = sample_nested_offsets(recipe.pyramid, B, generator=torch.Generator().manual_seed(3))
    x = torch.randn(B, levels, recipe.model.channels, *recipe.pyramid.patch)
    return x, torch.randn(B, levels) * 0.5, off, torch.tensor([1, 3])


@pytest.mark.parametrize("grown_load,same", [("linear", True), ([1, 1, 2, 2, 4, 4], True),
                                             ([1, 2, 2, 3, 3, 4], False)])
def test_a_pyramid_grown_by_a_level_starts_as_its_base(tmp_path, grown_load, same):
    """init_from a model with one level fewer: the grown model's denoiser equals the base's on the base's
    levels when every block processes the same of them (docs/method.md, invariant "a pyramid grown by finer
    levels starts as its base"), and its log says whether it does."""
    from conftest import tiny_recipe
    from hpdm_cli.model import HPDMNet
    kw = dict(num_blocks=6, interface_conv=True, adaptive_norm=True, adaptive_norm_interface=True,
              self_condition=True, qk_norm=True)
    base = tiny_recipe((16, 32, 32), (4, 8, 8), load="linear", **kw)            # 3 levels, [1,1,2,2,3,3]
    grown = tiny_recipe((32, 64, 64), (4, 8, 8), load=grown_load, **kw)          # 4 levels, doubled on every axis
    small = _saved_model(tmp_path / "base", base)
    big = HPDMNet(grown.pyramid, grown.model)
    r = init_from_checkpoint(big, str(tmp_path / "base"))
    assert r.partial == ["level_embed", "level_token"] and not r.unused and r.base_levels == 3
    for k in r.partial:                                   # the new level starts as the finest base level
        assert torch.equal(big.state_dict()[k][:3], small.state_dict()[k])
        assert torch.equal(big.state_dict()[k][3], small.state_dict()[k][2])
    assert ("the checkpoint's 3-level model is reproduced on levels 0-2, level 3 new" in r.grown) == same
    assert ("not its outputs" in r.grown) == (not same) and r.grown in r.describe("x")
    x, c_noise, off, label = _denoiser_inputs(grown, 4)
    with torch.no_grad():
        want = small(x[:, :3], c_noise[:, :3], off[:, :3], label).out
        got = big(x[:, :3], c_noise[:, :3], off[:, :3], label).out
        joint = big(x, c_noise, off, label).out[:, :3]                          # the new level changes none of them
    assert torch.allclose(got, joint, atol=1e-6)
    assert torch.allclose(got, want, atol=1e-5) == same
    assert torch.allclose(got[:, 0], want[:, 0], atol=1e-5)                     # level 0 is in every block either way
    # From a base level alone (a generator, no super-resolution level to start from) the new levels keep
    # their own initial rows.
    one = tiny_recipe((4, 8, 8), (4, 8, 8), **kw)
    _saved_model(tmp_path / "one", one, perturb=False)
    fresh = HPDMNet(grown.pyramid, grown.model)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    r1 = init_from_checkpoint(fresh, str(tmp_path / "one"))
    assert r1.base_levels == 1 and "reproduced on level 0, levels 1-3 new" in r1.grown
    for k in r1.partial:
        assert torch.equal(fresh.state_dict()[k][1:], before[k][1:])
    # A base whose level 2 is another size (8x32x32: frames stop doubling) is not the start of this pyramid.
    assert "patch or level sizes differ" in grown_levels(tiny_recipe((8, 32, 32), (4, 8, 8), **kw), big)


def test_shallow_fusion_grown_from_a_base_level_starts_as_it(tmp_path):
    """init_from a base level alone into a pyramid with shallow fusion: the tokenizer keeps the base's
    pixel columns and its context columns start at zero, so level 0 computes what the base did; a deep-fusion
    pyramid grown into a shallow one is said not to reproduce its outputs (its fusion weights have no place)."""
    from conftest import tiny_recipe
    from hpdm_cli.model import HPDMNet
    kw = dict(num_blocks=4, adaptive_norm=True)
    one = tiny_recipe((4, 8, 8), (4, 8, 8), **kw)
    pyr = tiny_recipe((16, 32, 32), (4, 8, 8), fusion="shallow", **kw)
    small = _saved_model(tmp_path / "one", one)
    big = HPDMNet(pyr.pyramid, pyr.model)
    r = init_from_checkpoint(big, str(tmp_path / "one"))
    assert r.widened == ["tokenizer.weight"] and "tokenizer.weight" in r.new and not r.unused
    assert "reproduced on level 0, levels 1-2 new" in r.grown and "start at zero" in r.describe("x")
    w, w0 = big.state_dict()["tokenizer.weight"], small.state_dict()["tokenizer.weight"]
    assert torch.equal(w[:, :w0.shape[1]], w0) and not w[:, w0.shape[1]:].any()
    x, c_noise, off, label = _denoiser_inputs(pyr, 3)
    with torch.no_grad():
        want = small(x[:, :1], c_noise[:, :1], off[:, :1], label).out
        got = big(x, c_noise, off, label).out[:, :1]
    assert torch.allclose(got, want, atol=1e-5)
    deep = tiny_recipe((8, 16, 16), (4, 8, 8), **kw)                            # 2 levels, deep fusion
    _saved_model(tmp_path / "deep", deep, perturb=False)
    r2 = init_from_checkpoint(HPDMNet(pyr.pyramid, pyr.model), str(tmp_path / "deep"))
    assert r2.unused and "not its outputs" in r2.grown and "have no place here" in r2.grown


def test_stop_flag_records_signals_and_a_second_ctrl_c_stops_at_once():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)                              # a second SIGTERM changes nothing
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)                           # a second Ctrl-C: stop right now
            time.sleep(0.5)
    assert {sig: signal.getsignal(sig) for sig in before} == before      # the handlers are restored


def test_stop_flag_reinstalls_a_handler_that_something_replaced():
    """A handler replaced after the loop started (a library's) is put back at the next sync point."""
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        assert stop.reassert() == []
        signal.signal(signal.SIGTERM, signal.SIG_DFL)                     # what a library might do
        assert stop.reassert() == ["SIGTERM"] and stop.reassert() == []
        os.kill(os.getpid(), signal.SIGTERM)                              # recorded, not fatal
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_handler_replaced_during_training_is_restored_and_sigterm_still_checkpoints(shapes_data, tmp_path,
                                                                                       monkeypatch):
    """Something inside the loop ignores SIGTERM at step 1; at step 3 a SIGTERM still stops the run with a checkpoint."""
    calls = []
    inner = loop.forward_backward

    def hooked(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)                  # a library's own handler
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return inner(*a, **k)
    monkeypatch.setattr(loop, "forward_backward", hooked)
    msgs = []
    s = train(make_recipe(shapes_data, steps=6, log_every=1, ckpt_every=100), tmp_path, log=quiet(msgs))
    assert any("SIGTERM handler was replaced" in m for m in msgs)
    assert s.interrupted == signal.SIGTERM and s.step == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003"]


def test_sigterm_to_the_whole_process_group_with_loader_workers_still_checkpoints(shapes_data, tmp_path):
    """timeout / Slurm / torchrun signal the whole group: data-loader workers must not die before the checkpoint."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hpdm_cli", "train", "tiny", *overrides(shapes_data), "data.num_workers=2",
           "train.steps=400", "--run-dir", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert _wait_for(lambda: len(losses(run)) >= 1, 120, proc), proc.communicate()
        os.killpg(proc.pid, signal.SIGTERM)                               # the group: main process and workers
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in out + err, err
    assert list_checkpoints(run), "no checkpoint was saved"

# ------------------------------------------------------------------------------------------ bad input, from the CLI



def one_line_error(code, err) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hpdm: error: "), (code, err)
    return lines[0]


@pytest.mark.parametrize("bad,expected", [
    ("train.lr=nan", "train.lr = nan: expected a finite number > 0"),
    ("train.lr=-1", "train.lr = -1.0: expected a finite number > 0"),
    ("train.lr=inf", "train.lr = inf: expected a finite number > 0"),
    ("train.ckpt_every=0", "train.ckpt_every = 0: expected an integer >= 1"),
    ("train.log_every=0", "train.log_every = 0: expected an integer >= 1"),
    ("train.grad_clip=nan", "train.grad_clip = nan: expected a finite number >= 0"),
    ("data.short_caption_prob=1.5", "data.short_caption_prob = 1.5: expected"),
    ("data.short_caption_prob=0.5", 'data.short_caption_prob = 0.5 needs data.path = "synthetic:shapes"'),
])
def test_invalid_recipe_value_is_refused_before_anything_is_written(bad, expected, shapes_data, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "tiny", *overrides(shapes_data), bad, "--run-dir", run, "--no-progress")
    assert expected in one_line_error(code, err) and out == ""
    assert not run.exists()


def test_invalid_recipe_value_in_a_real_process(shapes_data, tmp_path):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "hpdm_cli", "train", "tiny", *overrides(shapes_data), "train.lr=nan",
                          "--run-dir", str(run)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "train.lr = nan" in res.stderr
    assert not run.exists()


def test_run_dir_that_is_a_file_is_refused(shapes_data, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    with pytest.raises(TrainError) as e:
        train(make_recipe(shapes_data), f, log=quiet())
    assert "\n" not in str(e.value) and str(f) in str(e.value) and "not a directory" in str(e.value)
    code, out, err = cli(capsys, "train", "tiny", *overrides(shapes_data), "--run-dir", f, "--no-progress")
    assert str(f) in one_line_error(code, err)
    assert f.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_disk_full_during_a_checkpoint_is_a_one_line_error(shapes_data, tmp_path, monkeypatch, capsys):
    from hpdm_cli.train import checkpoint as ckpt_mod
    real, calls = ckpt_mod.save_file, []

    def full(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 3:                             # the 2nd checkpoint (step 4) does not fit any more
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(ckpt_mod, "save_file", full)
    code, out, err = cli(capsys, "train", "tiny", *overrides(shapes_data), "--run-dir", tmp_path, "--no-progress")
    line = one_line_error(code, err)
    assert "No space left on device" in line and "ckpt-00000002" in line
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000002"]   # no partial one
    assert load_checkpoint(tmp_path / "checkpoints" / "ckpt-00000002")["state"]["step"] == 2
    assert lock_holder(tmp_path) is None


def test_disk_full_while_logging_is_a_one_line_error(shapes_data, tmp_path, monkeypatch):
    def full(self, record):
        raise OSError(28, "No space left on device", str(self.path))
    monkeypatch.setattr(loop.StatsWriter, "write", full)
    with pytest.raises(TrainError) as e:
        train(make_recipe(shapes_data, steps=2), tmp_path, log=quiet())
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "stats.jsonl" in msg
    assert lock_holder(tmp_path) is None


# ------------------------------------------------------------------------------------------ non-finite weights

def _poison_checkpoint(ckpt: Path) -> None:
    """Write a NaN into a checkpoint's training weights, keeping the file otherwise valid."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    f = ckpt / "model.safetensors"
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    t = load_file(str(f))
    next(v for v in t.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_file(t, str(f), metadata=meta)


def test_nan_in_the_newest_checkpoint_resumes_from_the_last_finite_one(reference, tmp_path):
    rec, ref = reference("base")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    _poison_checkpoint(run / "checkpoints" / "ckpt-00000006")
    msgs = []
    s = train(rec, run, log=quiet(msgs))
    assert any("skipping" in m and "ckpt-00000006" in m and "non-finite" in m for m in msgs), msgs
    assert (s.start_step, s.step, s.skipped) == (4, 6, 0)                  # trained, not 'skipped every step'
    assert (run / "checkpoints" / "ckpt-00000006.corrupt").is_dir()       # set aside, not deleted
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000004", "ckpt-00000006"]
    assert losses(run) == losses(ref)
    assert_same_state(run, ref)


def test_weights_that_turn_non_finite_are_never_saved(shapes_data, tmp_path, monkeypatch):
    rec = make_recipe(shapes_data, steps=6, ckpt_every=2, keep_last=1)
    from hpdm_cli.train.optim import Lamb
    real, n = Lamb.step, {"calls": 0}

    def blow_up(self, *a, **kw):
        out = real(self, *a, **kw)
        n["calls"] += 1
        if n["calls"] == 3:                                               # step 3 overflows a weight
            self.param_groups[0]["params"][0].data.view(-1)[0] = float("inf")
        return out
    monkeypatch.setattr(Lamb, "step", blow_up)
    with pytest.raises(CheckpointError) as e:
        train(rec, tmp_path, log=quiet())
    msg = str(e.value)
    assert "\n" not in msg and "not saving checkpoint 4" in msg and "ckpt-00000002" in msg
    # keep_last = 1 kept the last good checkpoint; nothing else was written under checkpoints/.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000002"]
    assert lock_holder(tmp_path) is None


def _poison_steps(monkeypatch, bad) -> None:
    """Make the loss of the steps for which bad(step) holds (1-based) NaN."""
    real, n = step.edm_loss, {"calls": 0}

    def poisoned(*a, **kw):
        out = real(*a, **kw)
        n["calls"] += 1
        if bad(n["calls"]):
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(step, "edm_loss", poisoned)


def test_a_run_of_non_finite_steps_stops_with_an_error(shapes_data, tmp_path, monkeypatch):
    rec = make_recipe(shapes_data, "train.max_nonfinite_steps=2", steps=6, ckpt_every=2)
    _poison_steps(monkeypatch, lambda step: step >= 3)                    # every step from step 3 on
    with pytest.raises(TrainError) as e:
        train(rec, tmp_path, log=quiet())
    msg = str(e.value)
    assert "\n" not in msg and "2 of the last 4 steps" in msg and "ckpt-00000002" in msg
    assert "train.max_nonfinite_steps" in msg and msg in (tmp_path / "train.log").read_text()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002"]
    assert [r["step"] for r in read_stats(tmp_path)] == [1, 2, 3, 4]
    assert lock_holder(tmp_path) is None
    monkeypatch.undo()
    s = train(rec, tmp_path, log=quiet())                                 # fixed: resumes from the good one
    assert (s.start_step, s.step, s.skipped) == (2, 6, 0)


def test_a_diverging_run_that_skips_most_steps_but_not_all_stops(shapes_data, tmp_path, monkeypatch):
    """Every other step non-finite (no two in a row) still stops the run once the window fills."""
    rec = make_recipe(shapes_data, "train.max_nonfinite_steps=2", steps=12, ckpt_every=2)
    _poison_steps(monkeypatch, lambda step: step >= 3 and step % 2 == 1)  # steps 3, 5, 7, ...
    with pytest.raises(TrainError) as e:
        train(rec, tmp_path, log=quiet())
    msg = str(e.value)
    assert "\n" not in msg and "2 of the last 4 steps" in msg and "stopped at step 5" in msg
    assert [r["skipped"] for r in read_stats(tmp_path)] == [0, 0, 1, 1, 2]        # steps 1-5


# ------------------------------------------------------------------------------------------ one run per directory

def test_a_second_train_on_a_locked_run_dir_is_refused(shapes_data, tmp_path, capsys):
    run = tmp_path / "run"
    code = ("import sys; from hpdm_cli.io.lock import hold_lock\n"
            f"with hold_lock({str(run)!r}, 'hpdm train'):\n"
            "    print('held', flush=True); sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainError) as e:
            train(make_recipe(shapes_data, steps=1), run, log=quiet())
        msg = str(e.value)
        assert "\n" not in msg and f"pid {holder.pid}" in msg and "host" in msg and "hpdm train" in msg
        code, out, err = cli(capsys, "train", "tiny", *overrides(shapes_data), "--run-dir", run, "--no-progress")
        assert f"pid {holder.pid}" in one_line_error(code, err)
        assert sorted(p.name for p in run.iterdir()) == [".hpdm.lock"]    # nothing written by the refused runs
    finally:
        holder.communicate("\n")
    s = train(make_recipe(shapes_data, steps=1), run, log=quiet())        # free again once the holder exits
    assert s.step == 1 and lock_holder(run) is None


def test_missing_tensorboard_is_said_once(shapes_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # as if tensorboard were not installed
    msgs = []
    train(make_recipe(shapes_data, steps=2), tmp_path, log=quiet(msgs))
    notes = [m for m in msgs if "TensorBoard" in m]
    assert len(notes) == 1 and "pip install tensorboard" in notes[0] and "stats.jsonl" in notes[0]
    assert not (tmp_path / "tensorboard").exists() and len(read_stats(tmp_path)) == 2


def test_hpdm_train_turns_on_faulthandler_so_a_native_crash_leaves_stacks(capsys, monkeypatch, tmp_path):
    """A segfault inside a compiled or graph-captured step would otherwise end the run without a word."""
    import faulthandler
    import sys
    import types
    from conftest import run_cli
    from hpdm_cli.train import loop
    seen = []

    def fake_train(recipe, run_dir, log=None, progress=False):
        seen.append(faulthandler.is_enabled())
        return types.SimpleNamespace(interrupted=None, step=3, start_step=3, steps=3, checkpoint=None)
    was = faulthandler.is_enabled()
    faulthandler.disable()
    monkeypatch.setattr(loop, "train", fake_train)
    try:
        code, out, _ = run_cli(capsys, "train", "tiny", "--run-dir", tmp_path / "run", "--no-progress")
    finally:
        faulthandler.enable(file=sys.__stderr__) if was else faulthandler.disable()
    assert code == 0 and seen == [True] and "nothing to do" in out


# ---------------------------------------------------------------------------------------------
# The data stream and the counters a resume must carry

def test_batches_scale_a_datasets_uint8_clips_as_its_float_samples(shapes_data):
    """The loop reads uint8 clips and scales them on the device: exactly the float32 samples x / 127.5 - 1."""
    from hpdm_cli.data.loader import ClipDataset
    from hpdm_cli.train.distributed import DistInfo
    rec = make_recipe(shapes_data)
    videos, _, _ = Batches(rec, DistInfo(), 4, start_batch=0, total_batches=2).next(torch.device("cpu"), 8)
    ds = ClipDataset(shapes_data, 8, seed=rec.train.seed, num_samples=8, resolution=(32, 32))
    torch.testing.assert_close(videos, torch.stack([ds[k]["video"] for k in range(4)]), rtol=0, atol=1e-6)


def test_a_synthetic_image_dataset_gives_still_images():
    """data.image_path = "synthetic:shapes" renders one frame per image, shown as a still video like a prepared one."""
    from hpdm_cli.train.distributed import DistInfo
    rec = tiny_toml('data.path="synthetic:shapes"', 'data.image_path="synthetic:shapes"', "data.image_fraction=0.5",
                    "data.synthetic_videos=8", "data.num_workers=0", "pyramid.resolution=[4,16,16]")
    videos, _, _ = Batches(rec, DistInfo(), 4, start_batch=0, total_batches=2).next(torch.device("cpu"), 4)
    still = (videos - videos[:, :, :1]).flatten(1).abs().amax(1) == 0
    assert videos.shape == (4, 3, 4, 16, 16) and still.tolist() == [False, False, True, True]


def test_synthetic_batches_resume_at_their_data_position():
    """Batch j of a stream started at batch j is batch j of the stream started at 0 (rendered data too)."""
    from hpdm_cli.train.distributed import DistInfo
    rec = tiny_toml('data.path="synthetic:shapes"', "data.synthetic_videos=8", "data.num_workers=0",
                    "pyramid.resolution=[4,16,16]")
    full = Batches(rec, DistInfo(), 3, start_batch=0, total_batches=4)
    third = [full.next(torch.device("cpu"), 4)[0] for _ in range(3)][2]
    assert torch.equal(Batches(rec, DistInfo(), 3, start_batch=2, total_batches=4).next(torch.device("cpu"), 4)[0],
                       third)


def test_skipped_steps_are_counted_across_a_resume(shapes_data, tmp_path, monkeypatch):
    rec = make_recipe(shapes_data, steps=4, ckpt_every=1, keep_last=10)
    real, calls = step.edm_loss, [0]

    def poisoned(*a, **kw):
        out = real(*a, **kw)
        calls[0] += 1
        if calls[0] == 2:
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(step, "edm_loss", poisoned)
    assert train(rec, tmp_path, log=quiet(), stop_after=2).skipped == 1
    monkeypatch.setattr(step, "edm_loss", real)
    s = train(rec, tmp_path, log=quiet())
    assert (s.step, s.skipped) == (4, 1)


def test_init_from_a_model_with_more_levels_keeps_level_l_as_level_l(tmp_path):
    """A 3-level checkpoint into a 2-level model: the per-level tables take the checkpoint's rows 0 and 1."""
    from conftest import tiny_recipe
    from hpdm_cli.model import HPDMNet
    from hpdm_cli.train.checkpoint import save_checkpoint
    big, small = tiny_recipe((16, 32, 32), (4, 8, 8)), tiny_recipe((8, 16, 16), (4, 8, 8))
    nb = HPDMNet(big.pyramid, big.model)
    with torch.no_grad():
        for p in nb.parameters():
            p.add_(torch.randn_like(p))
    save_checkpoint(tmp_path / "big", big, 1, model=nb.state_dict(), ema=nb.state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    ns = HPDMNet(small.pyramid, small.model)
    r = init_from_checkpoint(ns, str(tmp_path / "big"))
    assert r.partial
    for k in r.partial:
        assert torch.equal(ns.state_dict()[k], nb.state_dict()[k][:2])


def test_ranks_draw_their_own_offsets_sigmas_and_noise():
    a, b = (torch.rand(8, generator=loop.step_generator(0, rank, 5)) for rank in (0, 1))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.rand(8, generator=loop.step_generator(0, 0, 5)))


def test_a_class_run_records_its_class_names_so_sampling_names_classes_without_the_dataset(shapes_data, tmp_path):
    """RUN_DIR/class_names.json: `--class "square moving down"` works once the dataset has moved or gone."""
    import shutil
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.conditioning import resolve_condition
    from hpdm_cli.data.shapes import SHAPES_CLASSES
    from hpdm_cli.train.run_dir import foreign_entries
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    train(make_recipe(data, 'model.cond="class"', "model.num_classes=16", steps=1), tmp_path / "run", log=quiet())
    assert json.loads((tmp_path / "run" / "class_names.json").read_text()) == {"class_names": list(SHAPES_CLASSES)}
    assert foreign_entries(tmp_path / "run") == []                       # the run's own file: it may resume there
    shutil.rmtree(data)
    _, rec, info = load_generator(tmp_path / "run", "cpu")
    assert info.class_names == list(SHAPES_CLASSES) and info.class_names_source.name == "class_names.json"
    assert resolve_condition(rec, class_="square moving down", class_names=info.class_names).label == \
        SHAPES_CLASSES.index("square moving down")


def test_a_compiled_self_conditioned_step_builds_one_graph_whatever_the_pass():
    """torch.compile of a self-conditioned model builds one graph: the training graph serves the first pass too.

    Whether or not a step runs the pass (`edm_loss`'s latent_shape; docs/method.md, section 5): a training graph
    per case would cost a second full compile of the forward and backward on the first step without the pass, and
    a gradient-free graph for the first pass over a third of a cold start's compilation."""
    from torch._dynamo.utils import counters
    from hpdm_cli.diffusion import draw_noise
    from hpdm_cli.pyramid import sample_nested_offsets
    recipe = load_recipe(default_recipe_path("tiny"), ['train.device="cpu"', 'train.precision="fp32"',
                                                       "model.self_condition=true"])
    p, m = recipe.pyramid, recipe.model
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(2, m.channels, *p.resolution, generator=g) * 2 - 1
    offsets = sample_nested_offsets(p, 2, generator=g)
    cond = torch.randint(0, m.num_classes, (2,), generator=g)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = torch.compile(build_model(recipe), backend="aot_eager")   # traces as inductor would, no C++ build
        for first_pass in (True, False, True, False):
            draw = draw_noise(recipe.diffusion, (2, p.num_levels, m.channels, *p.patch), conditional=True,
                              generator=g)
            draw.self_cond = first_pass
            step.forward_backward(compiled, videos, cond, recipe, offsets, draw, 1.0, "fp32")
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()


def test_the_self_conditioning_pass_records_gradients_except_under_ddp(tmp_path, monkeypatch):
    """The first pass runs in the training's gradient mode (the training graph serves it), gradient-free under DDP.

    docs/method.md, section 5: DDP's reducer with a forward whose backward never runs is untested on GPUs."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from hpdm_cli.diffusion import draw_noise
    from hpdm_cli.model.network import HPDMNet
    from hpdm_cli.pyramid import sample_nested_offsets
    from hpdm_cli.train.loop import no_forward_buffer_sync
    recipe = load_recipe(default_recipe_path("tiny"), ['train.device="cpu"', "model.self_condition=true"])
    p, m = recipe.pyramid, recipe.model
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(2, m.channels, *p.resolution, generator=g) * 2 - 1
    offsets = sample_nested_offsets(p, 2, generator=g)
    draw = draw_noise(recipe.diffusion, (2, p.num_levels, m.channels, *p.patch), conditional=True, generator=g)
    draw.self_cond = True
    modes = []
    forward = HPDMNet.forward
    monkeypatch.setattr(HPDMNet, "forward", lambda self, *a, **k: modes.append(torch.is_grad_enabled()) or
                        forward(self, *a, **k))
    net = build_model(recipe)
    step.forward_backward(net, videos, torch.tensor([0, 1]), recipe, offsets, draw, 1.0, "fp32")
    assert modes == [True, True]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        modes.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)          # the loop's keyword is not a deprecated one
            ddp = DistributedDataParallel(net, find_unused_parameters=True, **no_forward_buffer_sync())
        step.forward_backward(ddp, videos, torch.tensor([0, 1]), recipe, offsets, draw, 1.0, "fp32")
        assert modes == [False, True]
    finally:
        dist.destroy_process_group()


def test_compile_scope_blocks_compiles_each_block_once_per_shape_with_the_eager_loss_and_gradients(monkeypatch):
    """train.compile_scope = "blocks": the network is compiled in place, block by block, the blocks (and fusions) of
    one shape sharing one graph, which is what shortens the compile; a training step gives the eager loss and
    gradients. The graphs are counted by a backend that runs them as traced."""
    from conftest import tiny_recipe
    from hpdm_cli.diffusion.edm import draw_noise
    from hpdm_cli.pyramid import sample_nested_offsets

    graphs, original = [], torch.nn.Module.compile

    def traced(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def traced_only(module, *args, **kwargs):
        assert kwargs.get("dynamic") is False                  # static shapes, as the whole network's graph
        return original(module, *args, backend=traced, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", traced_only)
    rec = tiny_recipe(num_blocks=6, self_condition=False)     # 3 levels, load [1, 1, 2, 2, 3, 3]
    rec.train.compile, rec.train.compile_scope = True, "blocks"
    eager = build_model(rec)
    net = build_model(rec)
    net.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    try:
        assert step.compile_model(net, True, "blocks") is net
        regions = step.compiled_regions(net)
        assert len(regions) == 6 + 4 and all(r._compiled_call_impl is not None for r in regions)
        assert net._compiled_call_impl is None and net.tokenizer._compiled_call_impl is None
        B, L = 2, rec.pyramid.num_levels
        videos = torch.rand(B, rec.model.channels, *rec.pyramid.resolution) * 2 - 1
        cond = torch.tensor([1, 3])
        losses, grads = [], []
        for model in (eager, net):
            g = torch.Generator().manual_seed(5)
            off = sample_nested_offsets(rec.pyramid, B, generator=g)
            draw = draw_noise(rec.diffusion, (B, L, rec.model.channels, *rec.pyramid.patch), conditional=True,
                              self_condition=False, generator=g, device=torch.device("cpu"), noise_on_device=False)
            losses.append(step.forward_backward(model, videos, cond, rec, off, draw, 1.0, "fp32").loss.item())
            grads.append([p.grad for p in model.parameters()])
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 3 + 2               # blocks of 1, 2 and 3 levels; fusions of 1 and 2 finer levels
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for ge, gc in zip(*grads):
        assert (ge is None) == (gc is None)
        if ge is not None:
            torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)


def test_compile_scope_blocks_compiles_the_regions_of_the_network_inside_ddp_in_the_asked_mode(monkeypatch):
    """Under DDP the wrapper is returned as it is and the regions of the network it wraps are compiled, in the mode
    that train.compile names."""
    from conftest import tiny_recipe
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kwargs: calls.append((module, kwargs)))
    net = build_model(tiny_recipe(num_blocks=4))

    class Wrapper:                              # what DistributedDataParallel exposes: the wrapped module
        module = net

    ddp = Wrapper()
    assert step.compile_model(ddp, "max-autotune", "blocks") is ddp
    assert [m for m, _ in calls] == step.compiled_regions(net) and len(calls) == 4 + 2   # load [1, 1, 2, 3]
    assert all(k == {"dynamic": False, "mode": "max-autotune"} for _, k in calls)


def test_a_compile_cache_is_written_after_the_first_step_and_loaded_by_the_next_run(shapes_data, tmp_path,
                                                                                      monkeypatch):
    """`train.compile_cache`: a first run writes torch.compile's caches there after its first step (atomically);
    the next run hands the same bytes to torch before its first step; an unreadable file only costs the compile."""
    made, loaded = b"compiled kernels", []
    monkeypatch.setattr(loop, "compile_model", lambda model, setting, scope: model)  # the plumbing, not the compile
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (made, None))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", loaded.append)
    cache = tmp_path / "caches" / "shapes.bin"                                     # its folder made when written
    msgs = []
    train(make_recipe(shapes_data, "train.compile=true", f"train.compile_cache='{cache}'", steps=2),
          tmp_path / "first", log=quiet(msgs))
    assert loaded == [] and any(m.startswith(f"compile cache: none at {cache}") for m in msgs), msgs
    wrote = [m for m in msgs if m.startswith("compile cache: wrote")]
    assert len(wrote) == 1 and msgs.index(wrote[0]) > next(i for i, m in enumerate(msgs) if m.startswith("first step"))
    assert step.pack_compile_caches() == cache.read_bytes() and os.listdir(cache.parent) == ["shapes.bin"]
    msgs.clear()
    train(make_recipe(shapes_data, "train.compile=true", f"train.compile_cache='{cache}'", steps=1),
          tmp_path / "second", log=quiet(msgs))
    assert loaded == [made] and any(m.startswith(f"compile cache: loaded 0.0 MiB from {cache}") for m in msgs), msgs
    cache.write_bytes(b"not a cache")                                   # damaged: said, and the run goes on
    msgs.clear()
    summary = train(make_recipe(shapes_data, "train.compile=true", f"train.compile_cache='{cache}'", steps=1),
                    tmp_path / "third", log=quiet(msgs))
    assert summary.step == 1 and any(m.startswith(f"compile cache: {cache} is unusable") for m in msgs), msgs
    assert len(loaded) == 1 and step.pack_compile_caches() == cache.read_bytes()     # rewritten after its step


def test_a_compile_cache_without_compile_is_said_to_be_unused_and_a_folder_is_refused(shapes_data, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: pytest.fail("nothing compiled to save"))
    msgs = []
    train(make_recipe(shapes_data, f"train.compile_cache='{tmp_path / 'c.bin'}'", steps=1), tmp_path / "run",
          log=quiet(msgs))
    assert any("train.compile_cache" in m and "unused: train.compile is false" in m for m in msgs), msgs
    assert not (tmp_path / "c.bin").exists()
    with pytest.raises(TrainError, match="train.compile_cache = .*it is a directory"):
        train(make_recipe(shapes_data, "train.compile=true", f"train.compile_cache='{tmp_path}'", steps=1),
              tmp_path / "run2", log=quiet())
    assert not (tmp_path / "run2").exists()


def test_a_compiled_run_says_what_its_first_steps_cost_and_where_torch_keeps_them(shapes_data, tmp_path,
                                                                                  monkeypatch):
    """`train.compile` on: the console and train.log name the first steps' compilation and torch's cache folder."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(loop, "compile_model", lambda model, setting, scope: model)  # the message, not the compile
    fb, upd = loop.forward_backward, loop.apply_update                # each phase made slow, as compiling makes it
    monkeypatch.setattr(loop, "forward_backward", lambda *a, **k: time.sleep(0.3) or fb(*a, **k))
    monkeypatch.setattr(loop, "apply_update", lambda *a, **k: time.sleep(0.6) or upd(*a, **k))
    msgs = []
    train(make_recipe(shapes_data, "train.compile=true", steps=1), tmp_path / "run", log=quiet(msgs))
    said = [m for m in msgs if m.startswith("train.compile = true:")]
    assert len(said) == 1 and str(tmp_path / "inductor") in said[0], msgs
    assert said[0] in (tmp_path / "run" / "train.log").read_text()
    first = [m for m in msgs if m.startswith("first step:")]          # the cold start split: network, update
    timing = re.fullmatch(r"first step: (\d+\.\d) s for the gradients, (\d+\.\d) s for the update "
                          r"\(torch.compile's compilation included\)", first[0]) if len(first) == 1 else None
    assert timing, msgs
    grads, update = map(float, timing.groups())
    assert grads >= 0.3 and update >= 0.6, (grads, update)
    msgs.clear()
    train(make_recipe(shapes_data, steps=1), tmp_path / "eager", log=quiet(msgs))
    assert not any("train.compile" in m or m.startswith("first step:") for m in msgs)
