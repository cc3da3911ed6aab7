"""Checkpoints: atomic writes, crash mid-write, keep-last-N, corrupt files, no pickle, exact round trips."""

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open

from hpdm_cli.recipe import recipe_from_toml
from hpdm_cli import checkpoint as use
from hpdm_cli.checkpoint import load_sampling_weights, resolve_sampling_weights
from hpdm_cli.train import checkpoint as ck
from hpdm_cli.train.checkpoint import (CheckpointError, architecture_of, flatten_optimizer, latest_checkpoint,
                                       list_checkpoints, load_checkpoint, read_weights_file, save_checkpoint,
                                       unflatten_optimizer)
from hpdm_cli.train.optim import EMA, Lamb, param_groups
from hpdm_cli.train.step import build_model

from conftest import tiny_recipe


@pytest.fixture(scope="module")
def trained():
    """A tiny model, its EMA and a LAMB optimiser after two steps (so that every state tensor exists)."""
    recipe = tiny_recipe()
    net = build_model(recipe)
    ema = EMA(net, 2.0)
    opt = Lamb(param_groups(net, 0.01), lr=1e-3)
    for _ in range(2):
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        ema.update(net)
    return recipe, net, ema, opt


def save(run, trained, step, keep_last=3):
    recipe, net, ema, opt = trained
    return save_checkpoint(run, recipe, step, model=net.state_dict(), ema=ema.state_dict(),
                           optimizer=opt.state_dict(), extra_tensors={"torch_rng": torch.get_rng_state()},
                           state={"skipped": 0}, keep_last=keep_last)


def test_round_trip_is_exact_and_self_describing(trained, tmp_path):
    recipe, net, ema, opt = trained
    path = save(tmp_path, trained, 7)
    assert path == tmp_path / "checkpoints" / "ckpt-00000007"
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "model.safetensors", "optim.safetensors",
                                                     "state.json"]
    c = load_checkpoint(path)
    assert c["state"] == {"skipped": 0, "step": 7}
    sd = net.state_dict()
    assert c["model"].keys() == sd.keys() and all(torch.equal(c["model"][k], sd[k]) for k in sd)
    assert all(torch.equal(c["ema"][k], v) for k, v in ema.state_dict().items())
    assert torch.equal(c["extra"]["torch_rng"], torch.get_rng_state())
    # The optimiser state loads into a fresh LAMB and continues exactly like the original.
    net2 = build_model(recipe)
    opt2 = Lamb(param_groups(net2, 0.01), lr=1e-3)                       # groups of the fresh model, as the loop
    net2.load_state_dict(c["model"])
    opt2.load_state_dict(c["optimizer"])
    g = [torch.randn_like(p) for p in net.parameters()]
    for n, o in ((net, opt), (net2, opt2)):
        for p, gi in zip(n.parameters(), g):
            p.grad = gi.clone()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))
    # The weights carry the recipe and architecture: enough to sample from a file alone.
    w, rec, step = read_weights_file(path / "ema.safetensors")
    assert step == 7 and architecture_of(rec) == architecture_of(recipe)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["hpdm_arch"]) == json.loads(architecture_of(recipe))
    assert resolve_sampling_weights(tmp_path) == path / "ema.safetensors"
    assert resolve_sampling_weights(tmp_path / "checkpoints") == path / "ema.safetensors"   # the run's folder of them
    assert load_sampling_weights(tmp_path / "checkpoints")[0] == path / "ema.safetensors"
    assert recipe_from_toml(c["meta"]["hpdm_recipe"]) == recipe


def test_architecture_differences_name_a_few_keys_each_side():
    """The keys a run's stored architecture and a recipe's differ in, for the message that refuses the run."""
    import dataclasses
    from hpdm_cli.train.checkpoint import architecture_differences
    r = tiny_recipe((8, 16, 16), (4, 8, 8))
    edit = lambda **m: dataclasses.replace(r, model=dataclasses.replace(r.model, **m))   # noqa: E731
    a, b = architecture_of(r), architecture_of(edit(latent_dim=r.model.latent_dim * 2, num_blocks=7))
    assert architecture_differences(a, b) == (f"model.latent_dim {r.model.latent_dim} there, "
                                              f"{2 * r.model.latent_dim} here; model.num_blocks "
                                              f"{r.model.num_blocks} there, 7 here")
    many = architecture_of(edit(latent_dim=8, num_blocks=7, head_dim=1, num_latents=3, text_dim=5))
    assert architecture_differences(a, many).endswith("; and 2 more") and architecture_differences(a, a) == ""


def test_the_architecture_is_what_shapes_the_weights():
    """Tile overlap (sampling) and patch offsets (training) leave the weights alone, so a run may switch
    them and resume; a patch size does not."""
    import dataclasses
    from conftest import tiny_recipe
    r = tiny_recipe((8, 16, 16), (4, 8, 8))
    edit = lambda **kw: dataclasses.replace(r, pyramid=dataclasses.replace(r.pyramid, **kw))   # noqa: E731
    assert architecture_of(edit(offsets="grid")) == architecture_of(edit(offsets="continuous"))
    assert architecture_of(edit(overlap="none")) == architecture_of(edit(overlap="fhw"))
    assert architecture_of(edit(patch=(4, 4, 4))) != architecture_of(r)


def test_flatten_optimizer_round_trip(trained):
    _, _, _, opt = trained
    sd = opt.state_dict()
    tensors, groups = flatten_optimizer(sd)
    assert all(torch.is_tensor(v) for v in tensors.values())
    back = unflatten_optimizer(tensors, json.loads(json.dumps(groups)))
    assert back["state"].keys() == sd["state"].keys()
    for i, st in sd["state"].items():
        assert all(torch.equal(st[k], back["state"][i][k]) for k in st)


def test_keep_last_prunes_and_resaving_a_step_replaces_it(trained, tmp_path):
    for s in (1, 2, 3, 4, 5):
        save(tmp_path, trained, s, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000004", "ckpt-00000005"]
    save(tmp_path, trained, 5, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000004", "ckpt-00000005"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000004", "ckpt-00000005"]
    save(tmp_path, trained, 6, keep_last=0)                                    # 0 = keep every checkpoint
    assert len(list_checkpoints(tmp_path)) == 3


@pytest.mark.parametrize("failing_file", [1, 2, 3])
def test_crash_mid_write_leaves_the_previous_checkpoint(trained, tmp_path, monkeypatch, failing_file):
    save(tmp_path, trained, 1)
    real, calls = ck.save_file, []

    def crashing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == failing_file:
            with open(path, "wb") as f:                                  # a partial file, then the writer dies
                f.write(b"\x12" * 64)
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(ck, "save_file", crashing)
    with pytest.raises(CheckpointError) as e:                            # a disk full is a one-line user error
        save(tmp_path, trained, 2)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "ckpt-00000002" in msg
    assert "newest checkpoint is ckpt-00000001" in msg
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000001"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000001"]
    assert latest_checkpoint(tmp_path)["state"]["step"] == 1


def test_unwritable_checkpoints_dir_is_a_one_line_error(trained, tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the checkpoints directory belongs")
    with pytest.raises(CheckpointError) as e:
        save(tmp_path, trained, 1)
    assert "\n" not in str(e.value) and "cannot write checkpoint" in str(e.value)


def _poison(path, name="model.safetensors", value=float("nan")):
    """Write `value` into the first element of the first float tensor of a checkpoint file (metadata kept)."""
    from safetensors.torch import load_file, save_file
    f = path / name
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    t = load_file(str(f))
    key = next(k for k, v in t.items() if v.is_floating_point())
    t[key].view(-1)[0] = value
    save_file(t, str(f), metadata=meta)
    return key


@pytest.mark.parametrize("part", ["model", "ema", "optimizer"])
def test_non_finite_weights_are_never_saved(trained, tmp_path, part):
    recipe, net, ema, opt = trained
    save(tmp_path, trained, 1)
    parts = dict(model=net.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict())
    bad = {k: v.clone() for k, v in parts[part].items()} if part != "optimizer" else \
        {"state": {i: {k: v.clone() for k, v in st.items()} for i, st in parts[part]["state"].items()},
         "param_groups": parts[part]["param_groups"]}
    t = next(iter(bad.values())) if part != "optimizer" else bad["state"][0]["exp_avg"]
    t.view(-1)[0] = float("inf")
    parts[part] = bad
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path, recipe, 2, extra_tensors={}, state={}, keep_last=1, **parts)
    msg = str(e.value)
    assert "\n" not in msg and "not saving checkpoint 2" in msg and "ckpt-00000001" in msg
    # keep_last = 1 did not prune the good checkpoint in favour of the bad one; nothing half-written.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-00000001"]
    # A run without a good checkpoint is not told to resume from one.
    with pytest.raises(CheckpointError, match=r"no longer finite .*; no checkpoint was saved before; lower train.lr "
                                              r"or set train.grad_clip and start again$"):
        save_checkpoint(tmp_path / "fresh", recipe, 2, extra_tensors={}, state={}, keep_last=1, **parts)


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optim.safetensors"])
def test_non_finite_checkpoint_on_disk_is_skipped_like_a_corrupt_one(trained, tmp_path, name):
    save(tmp_path, trained, 1)
    newest = save(tmp_path, trained, 2)
    key = _poison(newest, name)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(newest)
    assert "\n" not in str(e.value) and "non-finite" in str(e.value) and key in str(e.value)
    warnings = []
    c = latest_checkpoint(tmp_path, warn=warnings.append, set_aside=True)
    assert c["path"].name == "ckpt-00000001"
    assert len(warnings) == 1 and "non-finite" in warnings[0] and "ckpt-00000002" in warnings[0]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000001"]


def test_sampling_weights_fall_back_past_unusable_checkpoints(trained, tmp_path):
    save(tmp_path, trained, 1)
    mid = save(tmp_path, trained, 2)
    newest = save(tmp_path, trained, 3)
    _poison(newest, "ema.safetensors")                                   # NaN in the weights sampling reads
    p = mid / "ema.safetensors"
    p.write_bytes(p.read_bytes()[:100])                                  # truncated
    warnings = []
    path, weights, recipe, step = load_sampling_weights(tmp_path, warn=warnings.append)
    assert path.parent.name == "ckpt-00000001" and step == 1 and path.name == "ema.safetensors"
    assert len(warnings) == 3 and "ckpt-00000003" in warnings[0] and "ckpt-00000002" in warnings[1]
    assert "ckpt-00000001" in warnings[2] and all("\n" not in w for w in warnings)
    # Given explicitly, an unusable checkpoint is an error (no silent substitute).
    for explicit in (newest, newest / "ema.safetensors"):
        with pytest.raises(CheckpointError, match="non-finite"):
            load_sampling_weights(explicit)
    # None usable: one line about the newest.
    _poison(tmp_path / "checkpoints" / "ckpt-00000001", "ema.safetensors", float("-inf"))
    with pytest.raises(CheckpointError) as e:
        load_sampling_weights(tmp_path, warn=warnings.append)
    assert "\n" not in str(e.value) and "ckpt-00000003" in str(e.value) and "2 older" in str(e.value)


def test_killed_writer_leaves_only_a_hidden_temp_dir(trained, tmp_path):
    """A writer killed outright (no cleanup) leaves a hidden temp dir: never read, removed by the next save."""
    save(tmp_path, trained, 1)
    stale = tmp_path / "checkpoints" / ".tmp-ckpt-00000002-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 10)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000001"]
    assert latest_checkpoint(tmp_path)["path"].name == "ckpt-00000001"
    save(tmp_path, trained, 2)
    assert not stale.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000001", "ckpt-00000002"]


@pytest.mark.parametrize("damage", ["truncate-model", "truncate-ema", "truncate-optim", "no-state", "bad-json",
                                    "missing-ema", "overwrite-model", "overwrite-optim", "record-files"])
def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(trained, tmp_path, damage):
    """Also a file gone (a missing EMA would resume with a fresh one) or overwritten with finite values (which
    loads as other weights): the size and CRC-32 state.json records at the save tell."""
    save(tmp_path, trained, 1)
    newest = save(tmp_path, trained, 2)
    kind, _, name = damage.partition("-")
    if kind == "truncate":
        p = newest / f"{name}.safetensors"
        p.write_bytes(p.read_bytes()[: p.stat().st_size - 10])
    elif kind == "missing":
        (newest / f"{name}.safetensors").unlink()
    elif kind == "overwrite":
        p = newest / f"{name}.safetensors"
        data = bytearray(p.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 4096] = b"\x3f" * 4096                             # finite floats (about 0.75)
        p.write_bytes(bytes(data))
    elif kind == "record":                                              # the size/CRC record itself damaged
        st = json.loads((newest / "state.json").read_text())
        (newest / "state.json").write_text(json.dumps(dict(st, files=["not", "a", "table"])))
    elif kind == "no":
        (newest / "state.json").unlink()
    else:
        (newest / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(newest)
    assert "\n" not in str(e.value) and newest.name in str(e.value)
    warnings = []
    c = latest_checkpoint(tmp_path, warn=warnings.append)
    assert c["path"].name == "ckpt-00000001" and c["state"]["step"] == 1
    assert len(warnings) == 1 and "ckpt-00000002" in warnings[0]
    assert newest.exists()                                              # only reported by default...
    c = latest_checkpoint(tmp_path, warn=warnings.append, set_aside=True)
    assert c["path"].name == "ckpt-00000001"
    assert not newest.exists() and (tmp_path / "checkpoints" / "ckpt-00000002.corrupt").is_dir()
    assert "renamed to ckpt-00000002.corrupt" in warnings[-1]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000001"]   # ...set aside for good


def test_sampling_skips_damaged_weights_and_a_checkpoint_landing_mid_look(trained, tmp_path, monkeypatch):
    """`load_sampling_weights` checks the EMA file against its checkpoint's record (falling back past a damaged
    one); a first checkpoint saved between its two looks at the run is read, not an IndexError."""
    import hpdm_cli.checkpoint as ck
    save(tmp_path, trained, 1)
    newest = save(tmp_path, trained, 2)
    data = bytearray((newest / "ema.safetensors").read_bytes())
    data[-64:] = b"\x3f" * 64
    (newest / "ema.safetensors").write_bytes(bytes(data))
    said = []
    w, _, _, step = ck.load_sampling_weights(tmp_path, warn=said.append)
    assert step == 1 and "ema.safetensors changed since it was saved" in said[0]
    import shutil
    shutil.rmtree(newest)                                                # the run's one checkpoint: ckpt-00000001
    real, calls = ck._run_checkpoints, []
    monkeypatch.setattr(ck, "_run_checkpoints", lambda p: (calls.append(1), [] if len(calls) == 1 else real(p))[1])
    w, _, _, step = ck.load_sampling_weights(tmp_path)
    assert w.parent.name == "ckpt-00000001" and step == 1 and len(calls) == 2


def test_no_pickle_is_ever_loaded(trained, tmp_path, monkeypatch):
    save(tmp_path, trained, 3)

    def forbidden(*a, **kw):
        raise AssertionError("unpickling is forbidden")
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    c = latest_checkpoint(tmp_path)
    assert c["state"]["step"] == 3
    read_weights_file(resolve_sampling_weights(tmp_path))
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert all(f.endswith((".safetensors", ".json")) for f in files), files


def test_errors_are_one_line(tmp_path):
    for bad in (tmp_path / "nothing", tmp_path):
        with pytest.raises(CheckpointError) as e:
            resolve_sampling_weights(bad)
        assert "\n" not in str(e.value)
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"junk")
    with pytest.raises(CheckpointError) as e:
        read_weights_file(f)
    assert "\n" not in str(e.value) and "x.safetensors" in str(e.value)
    assert str(e.value).endswith(ck.UNREADABLE_FIX) and "give a run directory" in ck.UNREADABLE_FIX
    with pytest.raises(CheckpointError, match="y.safetensors: no such file$"):              # missing, not damaged
        read_weights_file(tmp_path / "y.safetensors")
    os.makedirs(tmp_path / "checkpoints" / "ckpt-00000005")
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="ckpt-00000005: this checkpoint has no model.safetensors"):
        resolve_sampling_weights(tmp_path / "checkpoints" / "ckpt-00000005")       # named as one, weights missing


def test_export_writes_the_ema_weights_in_fp16_with_an_edited_recipe(trained, tmp_path):
    recipe, net, ema, opt = trained
    save(tmp_path / "run", trained, 4)
    out = use.export_weights(tmp_path / "run", tmp_path / "small.safetensors",
                            overrides=['train.init_from="elsewhere.safetensors"', "train.compile=false"])
    weights, stored, step = read_weights_file(out)
    assert step == 4 and stored.train.init_from == "elsewhere.safetensors" and stored.train.compile is False
    assert architecture_of(stored) == architecture_of(recipe)
    sd = ema.state_dict()
    assert weights.keys() == sd.keys()
    for k, v in sd.items():
        if v.is_floating_point():
            assert weights[k].dtype == torch.float16 and torch.equal(weights[k], v.half()), k
    # An override that changes the weights' shapes is refused, and nothing is written.
    with pytest.raises(CheckpointError, match="architecture"):
        use.export_weights(tmp_path / "run", tmp_path / "bad.safetensors", overrides=["model.latent_dim=64"])
    assert not (tmp_path / "bad.safetensors").exists()


def test_packaging_clears_the_training_hosts_settings_and_keeps_the_old_file_on_failure(trained, tmp_path,
                                                                                        monkeypatch):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "package_model", Path(__file__).resolve().parent.parent / "scripts" / "package_model.py")
    pm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pm)
    import copy
    recipe, net, ema, opt = trained
    recipe = copy.deepcopy(recipe)                                        # the fixture is shared
    recipe.train.init_from, recipe.data.prompt_table, recipe.train.compile = "/host/a", "/host/t", "reduce-overhead"
    save(tmp_path / "run", (recipe, net, ema, opt), 6)
    out = tmp_path / "model.safetensors"
    assert pm.main([str(tmp_path / "run"), "--out", str(out), "--set", "sample.level_steps=[8,4,2]"]) == 0
    _, stored, _ = read_weights_file(out)
    assert (stored.train.init_from, stored.data.prompt_table, stored.train.compile) == ("", "", False)
    assert list(stored.sample.level_steps) == [8, 4, 2]
    before = out.read_bytes()
    monkeypatch.setattr(pm, "MAX_BYTES", 1000)
    assert pm.main([str(tmp_path / "run"), "--out", str(out)]) == 2           # over the budget: refused
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "run"]


def test_packaged_names_the_packaged_model_unless_a_path_of_that_name_exists(tmp_path, monkeypatch):
    """--ckpt packaged (sample, upscale, eval) and train.init_from = "packaged" reach the packaged model through
    one resolver; a run folder called "packaged" in the working directory is still itself."""
    from hpdm_cli.assets import DEFAULT_MODEL
    monkeypatch.chdir(tmp_path)
    assert use.resolve_sampling_weights("packaged") == DEFAULT_MODEL
    path, weights, recipe, _ = use.load_sampling_weights("packaged")
    assert path == DEFAULT_MODEL
    from hpdm_cli.model.network import HPDMNet
    from hpdm_cli.train.init_from import init_from_checkpoint
    r = init_from_checkpoint(HPDMNet(recipe.pyramid, recipe.model), "packaged")
    assert not r.new and not r.unused and len(r.loaded) == len(weights)
    from hpdm_cli.assets import GUIDE_MODEL, resolve_guide
    assert resolve_guide("packaged") == GUIDE_MODEL
    (tmp_path / "packaged").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints in this run directory"):
        use.resolve_sampling_weights("packaged")
    assert resolve_guide("packaged") == GUIDE_MODEL     # the packaged model's stored recipe names its guide so


def test_a_dataset_given_as_the_checkpoint_is_named_as_one(tmp_path):
    (tmp_path / "dataset.json").write_text('{"format": "hpdm-shards"}')
    with pytest.raises(CheckpointError, match="this is a prepared dataset, not a run directory: give a run directory"):
        resolve_sampling_weights(tmp_path)
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(CheckpointError, match="no checkpoints in this run directory"):
        resolve_sampling_weights(tmp_path)


def test_what_makes_a_folder_a_run_a_trained_run_or_a_checkpoint(tmp_path):
    """A run has begun in a folder that holds checkpoints/ or its recipe.toml (`hpdm prepare` writes no dataset
    there); it has trained when it holds checkpoints/ or logged steps beside its recipe (`hpdm eval-fvd` takes it
    as a model, and a folder of videos with a stray recipe.toml as videos); a checkpoint folder holds
    model.safetensors."""
    from hpdm_cli.data.shards import DataError
    from hpdm_cli.drivers.prepare import run_prepare
    from hpdm_cli.eval.fvd_sources import source_kind
    from hpdm_cli.train.run_dir import is_checkpoint_dir, is_run_dir, is_trained_run
    started, logged, empty, ckpt = (tmp_path / n for n in ("started", "logged", "empty", "ckpt"))
    for d in (started, logged, empty, ckpt):
        d.mkdir()
    for d in (started, logged):
        (d / "recipe.toml").write_text("")
    (logged / "stats.jsonl").write_text("")
    (ckpt / "model.safetensors").write_bytes(b"")
    folders = (started, logged, empty, ckpt)
    assert [is_run_dir(d) for d in folders] == [True, True, False, False]
    assert [is_trained_run(d) for d in folders] == [False, True, False, False]
    assert [is_checkpoint_dir(d) for d in folders] == [False, False, False, True]
    assert [source_kind(d) for d in folders] == ["folder", "checkpoint", "folder", "checkpoint"]
    with pytest.raises(DataError, match="holds an hpdm train run"):
        run_prepare(None, started, num_videos=2, seed=0, synthetic="shapes")


def test_a_missing_packaged_model_says_how_to_restore_it(monkeypatch, tmp_path):
    """A checkout or install without the packaged weights names them as the packaged model and says how to restore
    them, where any other missing path is just missing."""
    import hpdm_cli.checkpoint as checkpoint
    from hpdm_cli.checkpoint import CheckpointError
    gone = tmp_path / "assets" / "shapes-t2v.safetensors"
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", gone)
    with pytest.raises(CheckpointError, match=r"the packaged model is missing from this installation: reinstall hpdm"):
        resolve_sampling_weights(gone)
    with pytest.raises(CheckpointError, match=r"no such checkpoint file or run directory$"):
        resolve_sampling_weights(tmp_path / "elsewhere.safetensors")
