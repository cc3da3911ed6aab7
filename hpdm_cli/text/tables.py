"""Text-embedding tables: caption embeddings stored with a dataset, and prompt tables for sampling.

Text-to-video training needs one embedding per caption and sampling one per prompt. Computing
them needs the text encoder (its package and weights); a table computed once where the encoder
is installed lets training and sampling run on a host without it.

A table is one safetensors file (format "hpdm-text-embeddings", version 1):

    tensors   embeddings    float32 [N, tokens, dim]   row i is the encoder's output for texts[i]
              texts         uint8 [bytes]              the N texts, a UTF-8 JSON list (row order)
    metadata  format        "hpdm-text-embeddings"
              version       "1"
              kind          "captions": texts is the dataset's captions.json (row = caption_id);
                            "prompts": any list of prompts (e.g. a generator's caption vocabulary)
              encoder       the encoder's name, e.g. "minilm:all-MiniLM-L6-v2@989cb896bc4e"
              family        the name without its fingerprint ("minilm:all-MiniLM-L6-v2", "t5:<dir name>"):
                            what a recipe's model.text_encoder is matched on (`spec_family`)
              fingerprint   the part of the name after "@": a hash of the model's files
              spec          the spec the encoder was loaded from ("minilm", "t5:/models/t5-v1_1-xxl")
              tokens, dim   the embedding shape per text
              count         N
              texts_sha256  sha256 of the texts as compact JSON (json.dumps(texts, ensure_ascii=False,
                            separators=(",", ":")), UTF-8): tells whether a caption table still
                            matches its dataset's captions.json

Where tables live:

    DATASET/caption_embeddings.<family>.safetensors   one per encoder family (`hpdm prepare`)
    DATASET/prompt_embeddings.<family>.safetensors    the shapes generator's whole caption vocabulary
    RUN_DIR/prompt_embeddings.safetensors             written by training: its captions and the
                                                      datasets' prompt tables, for `hpdm sample`

(`<family>` is the family with characters other than letters, digits, ".", "_" and "-"
replaced: "minilm-all-MiniLM-L6-v2".) safetensors is imported lazily. `embed_prompts` gives any
prompts' embeddings for a model: from the tables it finds, the rest from the encoder.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..data.prepare.options import IMAGES_SUBDIR
from ..train.run_dir import RUN_TABLE                  # a run directory's prompt table: PROMPTS + ".safetensors"
from . import encoders
from .encoders import TextEncoderError, spec_family

__all__ = [
    "FORMAT", "VERSION", "RUN_TABLE", "EmbeddingTable", "texts_sha256", "table_path", "write_table", "read_table",
    "read_header", "tables_in", "embed_dataset", "dataset_has_captions", "stored_caption_table",
    "stored_caption_embeddings", "remove_stale_tables", "write_run_table", "check_spec", "load_encoder", "up_to_date",
    "PromptLookup", "read_prompt_embedding", "embed_prompts",
]

FORMAT = "hpdm-text-embeddings"
VERSION = 1
CAPTIONS = "caption_embeddings"
PROMPTS = "prompt_embeddings"
RUN_TABLE_MAX_BYTES = 256 << 20           # embeddings a run directory's prompt table holds at most


def texts_sha256(texts: Sequence[str]) -> str:
    """Hex sha256 of an ordered text list (compact UTF-8 JSON), as stored in a table's metadata."""
    payload = json.dumps(list(texts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _family_slug(family: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", family).strip("-")[:80] or "encoder"


def table_path(directory: str | os.PathLike, kind: str, family: str) -> Path:
    """Where a dataset keeps its table of `kind` ("captions" or "prompts") for an encoder family."""
    prefix = {"captions": CAPTIONS, "prompts": PROMPTS}[kind]
    return Path(directory) / f"{prefix}.{_family_slug(family)}.safetensors"


@dataclass
class EmbeddingTable:
    """A text-embedding table in memory: texts, their embeddings [N, tokens, dim] and the encoder's identity."""

    texts: list
    embeddings: torch.Tensor
    encoder: str
    spec: str = ""
    kind: str = "prompts"
    path: Optional[Path] = None
    _index: dict = field(default_factory=dict, repr=False)

    @property
    def family(self) -> str:
        """The encoder name without its fingerprint."""
        return self.encoder.split("@", 1)[0]

    @property
    def fingerprint(self) -> str:
        """The fingerprint part of the encoder name ("" when it has none)."""
        return self.encoder.split("@", 1)[1] if "@" in self.encoder else ""

    @property
    def tokens(self) -> int:
        """Embedding tokens per text."""
        return int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.embeddings.shape[2])

    def fits(self, family: str, tokens: int, dim: int) -> bool:
        """True when this table was made by encoder `family` with `tokens` x `dim` embeddings."""
        return self.family == family and self.tokens == int(tokens) and self.dim == int(dim)

    def lookup(self, prompt: str) -> Optional[torch.Tensor]:
        """The embedding [1, tokens, dim] of `prompt` (exact text, else with whitespace collapsed), or None."""
        if not self._index:
            for i, t in enumerate(self.texts):
                self._index.setdefault(t, i)
                self._index.setdefault(" ".join(t.split()), i)
        i = self._index.get(prompt)
        if i is None:
            i = self._index.get(" ".join(str(prompt).split()))
        return None if i is None else self.embeddings[i : i + 1].clone()


# ============================================================================ reading and writing

def write_table(path: str | os.PathLike, texts: Sequence[str], embeddings: torch.Tensor, *, encoder: str,
                spec: str = "", kind: str = "prompts") -> Path:
    """Atomically write a table (temporary file, fsync, rename): row i of `embeddings` belongs to texts[i]."""
    from safetensors.torch import save_file

    from ..io import atomic_path
    texts = [str(t) for t in texts]
    emb = embeddings.detach().to("cpu", torch.float32).contiguous()
    if emb.ndim != 3 or emb.shape[0] != len(texts):
        raise TextEncoderError(f"embeddings of shape {tuple(emb.shape)} for {len(texts)} texts: expected "
                               f"[{len(texts)}, tokens, dim]")
    if kind not in ("captions", "prompts"):
        raise TextEncoderError(f"table kind {kind!r}: expected captions or prompts")
    blob = torch.frombuffer(bytearray(json.dumps(texts, ensure_ascii=False).encode("utf-8")), dtype=torch.uint8)
    meta = {"format": FORMAT, "version": str(VERSION), "kind": kind, "encoder": encoder,
            "family": encoder.split("@", 1)[0], "fingerprint": encoder.split("@", 1)[1] if "@" in encoder else "",
            "spec": spec, "tokens": str(emb.shape[1]), "dim": str(emb.shape[2]), "count": str(len(texts)),
            "texts_sha256": texts_sha256(texts)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"embeddings": emb, "texts": blob.clone()}, tmp, metadata=meta)
        os.chmod(tmp, 0o644)                      # a dataset file others may read, like the shards
    return path


def read_header(path: str | os.PathLike) -> Optional[dict]:
    """The metadata of a table file (reads only its header), or None when it is not a readable table."""
    try:
        from safetensors import safe_open
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - any unreadable file is "not a table"
        return None
    return meta if meta.get("format") == FORMAT else None


@contextlib.contextmanager
def _opened(path: Path, unreadable: str) -> Iterator[tuple]:
    """(file, metadata, tensor names) of a safetensors file; any failure while reading it is TextEncoderError.

    `unreadable` is that error's message, with `{error}` standing for the failure's type name.
    """
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt", device="cpu") as f:
            yield f, dict(f.metadata() or {}), list(f.keys())
    except Exception as e:  # noqa: BLE001
        raise TextEncoderError(unreadable.format(error=type(e).__name__)) from None


def _open_table(path: Path, rows: Optional[Callable] = None) -> tuple:
    """(metadata, texts, embeddings) of a table file; `rows(texts)` picks the rows to read (default: all)."""
    if not path.is_file():
        raise TextEncoderError(f"prompt/caption embedding table {str(path)!r} not found")
    with _opened(path, f"{path} is not a readable safetensors file ({{error}}): re-create it with "
                       "`hpdm prepare --embed-captions DATASET_DIR`") as (f, meta, keys):
        ok = meta.get("format") == FORMAT and {"embeddings", "texts"} <= set(keys)
        texts = _decode_texts(f.get_tensor("texts")) if ok else None
        emb = None
        if ok and isinstance(texts, list):
            sl = f.get_slice("embeddings")
            shape = tuple(sl.get_shape())
            if len(shape) != 3 or shape[0] != len(texts) or sl.get_dtype() not in ("F32", "float32"):
                texts = None
            elif rows is None:
                emb = f.get_tensor("embeddings")
            else:
                i = rows(texts)
                emb = None if i is None else sl[i : i + 1]
    if not ok:
        raise TextEncoderError(f"{path} is not an hpdm text-embedding table (no {FORMAT} metadata): use a file "
                               "written by `hpdm prepare` or training, or give a single embedding as a prompt "
                               "embedding file")
    if meta.get("version") != str(VERSION):
        raise TextEncoderError(f"{path}: table format version {meta.get('version')!r} is not supported "
                               f"(expected {VERSION}): re-create it with `hpdm prepare --embed-captions`")
    if not isinstance(texts, list) or texts_sha256(texts) != meta.get("texts_sha256"):
        raise TextEncoderError(f"{path} is corrupt (texts and embeddings disagree): re-create it with "
                               "`hpdm prepare --embed-captions DATASET_DIR`")
    return meta, [str(t) for t in texts], emb


def _decode_texts(blob: torch.Tensor):
    try:
        return json.loads(blob.numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def read_table(path: str | os.PathLike) -> EmbeddingTable:
    """Load a table file; TextEncoderError (one line, saying how to fix it) when it is not a valid one."""
    path = Path(path)
    meta, texts, emb = _open_table(path)
    return EmbeddingTable(texts=texts, embeddings=emb, encoder=meta.get("encoder", ""), spec=meta.get("spec", ""),
                          kind=meta.get("kind", "prompts"), path=path)


def tables_in(directory: str | os.PathLike, kind: Optional[str] = None) -> list:
    """The table files in `directory` (not recursive): caption tables first, then prompt tables, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        return []
    kinds = [kind] if kind else ["captions", "prompts"]
    out = []
    for k in kinds:
        prefix = {"captions": CAPTIONS, "prompts": PROMPTS}[k]
        out += sorted(p for p in d.glob(prefix + "*.safetensors") if p.is_file())
    return out


# ============================================================================ datasets

def _dataset_parts(directory: str | os.PathLike) -> list:
    """The dataset at `directory` and, when there is one, its image part (`directory/images`)."""
    from ..data.shards import DataError, is_dataset
    d = Path(directory)
    if not is_dataset(d):
        raise DataError(f"{str(d)!r} is not a prepared dataset (no dataset.json): give the OUT_DIR of an "
                        "earlier `hpdm prepare`")
    return [d] + ([d / IMAGES_SUBDIR] if is_dataset(d / IMAGES_SUBDIR) else [])


def _captions_of(directory: Path) -> list:
    from ..data.shards import VideoDataset
    with VideoDataset(directory) as ds:
        return ds.captions()


def dataset_has_captions(directory: str | os.PathLike) -> bool:
    """True when some video (or image) of the dataset has a non-empty caption."""
    return any(any(c for c in _captions_of(p)) for p in _dataset_parts(directory))


def _vocabulary_of(directory: Path) -> list:
    """The prompt vocabulary of a generated dataset (the shapes generator's captions), else []."""
    from ..data.shards import VideoDataset
    with VideoDataset(directory) as ds:
        generator = ds.meta.get("generator")
    if generator == "shapes":
        from ..data.shapes import shapes_prompts
        return shapes_prompts()
    return []


def check_spec(spec: str) -> None:
    """Fail early, without loading the model, when `spec` names an encoder that cannot be loaded here."""
    family = spec_family(spec)
    if family.startswith(("minilm:", "minilm-tokens:")):
        encoders.minilm_model_dir()
    else:
        d = Path(spec.split(":", 1)[1].strip()).expanduser()
        if not (d / "config.json").is_file():
            raise TextEncoderError(f"text encoder {spec}: {str(d)!r} is not a T5 model directory (no config.json): "
                                   "give a local directory saved with save_pretrained")


def load_encoder(spec: str, *, tokens: Optional[int] = None, device: str | torch.device = "cpu"):
    """Load the text encoder of `spec`; a missing package (transformers) becomes a one-line TextEncoderError."""
    try:
        return encoders.load_text_encoder(spec, device=device, tokens=tokens)
    except ImportError as e:
        raise TextEncoderError(f"the text encoder {spec!r} needs the package {e.name or 'transformers'}: "
                               f"pip install {e.name or 'transformers'}") from None


def up_to_date(directory: str | os.PathLike, spec: str, tokens: Optional[int] = None) -> bool:
    """True when every part of the dataset already holds a caption table of `spec`'s family that fits its captions."""
    family = spec_family(spec)
    for part in _dataset_parts(directory):
        meta = read_header(table_path(part, "captions", family))
        if (meta is None or meta.get("texts_sha256") != texts_sha256(_captions_of(part))
                or (tokens is not None and meta.get("tokens") != str(tokens))):
            return False
        if _vocabulary_of(part) and read_header(table_path(part, "prompts", family)) is None:
            return False
    return True


def embed_dataset(directory: str | os.PathLike, spec: str = "minilm", *, encoder=None, tokens: Optional[int] = None,
                  device: str | torch.device = "cpu", vocabulary: Optional[bool] = None,
                  log: Callable[[str], None] = lambda m: None) -> list:
    """Compute and store the caption embeddings of a prepared dataset (and of its image part); return the files.

    Each part gets `caption_embeddings.<family>.safetensors` (row i = caption_id i). A dataset
    made by the shapes generator also gets `prompt_embeddings.<family>.safetensors` with the
    generator's whole caption vocabulary (`vocabulary=False` skips it, True requires it).
    Caption tables of other encoders that no longer match the captions are removed. `encoder`
    (an already loaded one) replaces loading `spec`.
    """
    parts = _dataset_parts(directory)
    if encoder is None:
        encoder = load_encoder(spec, tokens=tokens, device=device)
    family = encoder.name.split("@", 1)[0]
    written = []
    for part in parts:
        captions = _captions_of(part)
        log(f"embedding {len(captions)} captions of {part} with {encoder.name}")
        emb = encoders.encode_texts(encoder, captions)
        written.append(write_table(table_path(part, "captions", family), captions, emb, encoder=encoder.name,
                                   spec=spec, kind="captions"))
        vocab = _vocabulary_of(part) if vocabulary is not False else []
        if vocab:
            log(f"embedding the {len(vocab)} prompts of the generator's caption vocabulary")
            written.append(write_table(table_path(part, "prompts", family), vocab,
                                       encoders.encode_texts(encoder, vocab), encoder=encoder.name, spec=spec))
        elif vocabulary:
            raise TextEncoderError(f"{part} was not made by a generator with a known caption vocabulary")
        remove_stale_tables(part)
    return written


def remove_stale_tables(directory: str | os.PathLike) -> list:
    """Delete the caption tables of a dataset (and its image part) that no longer match its captions; return them."""
    removed = []
    for part in _dataset_parts(directory):
        digest = texts_sha256(_captions_of(part))
        for p in tables_in(part, "captions"):
            meta = read_header(p)
            if meta is None or meta.get("texts_sha256") != digest:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def stored_caption_table(directory: str | os.PathLike, captions: Sequence[str], family: str, tokens: int,
                         dim: int) -> tuple:
    """(table, "") with the stored embeddings of `captions` for this encoder shape, or (None, why not)."""
    d = Path(directory)
    path = table_path(d, "captions", family)
    meta = read_header(path)
    if meta is None:
        others = [read_header(p) for p in tables_in(d, "captions")]
        have = ", ".join(f"{m['encoder']} {m['tokens']}x{m['dim']}" for m in others if m) or "none"
        return None, f"no caption embeddings of {family} stored with {d} (stored: {have})"
    if meta.get("tokens") != str(tokens) or meta.get("dim") != str(dim):
        return None, (f"the caption embeddings stored with {d} are {meta.get('tokens')}x{meta.get('dim')}, the recipe "
                      f"needs {tokens}x{dim}")
    if meta.get("texts_sha256") != texts_sha256(captions):
        return None, f"the caption embeddings stored with {d} are of other captions (the dataset was re-prepared)"
    table = read_table(path)
    if table.texts != list(captions):
        return None, f"the caption embeddings stored with {d} are of other captions"
    return table, ""


def stored_caption_embeddings(sources: Sequence[str | os.PathLike], captions: Sequence[str], spec: str, tokens: int,
                              dim: int) -> tuple:
    """The joint caption embeddings of datasets `sources` (their captions concatenated in order) from their tables.

    Returns (embeddings [len(captions), tokens, dim], tables, "") when every dataset holds a
    fitting table, else (None, [], why not). Never loads the encoder.
    """
    family = spec_family(spec)
    if not sources:
        return None, [], "no dataset given"
    tables, n = [], 0
    for src in sources:
        caps = _captions_of(Path(src))
        table, why = stored_caption_table(src, caps, family, tokens, dim)
        if table is None:
            return None, [], why
        tables.append(table)
        n += len(caps)
    emb = torch.cat([t.embeddings for t in tables])
    if n != len(captions) or [c for t in tables for c in t.texts] != list(captions):
        return None, [], "the stored caption tables do not cover the training captions"
    return emb, tables, ""


def write_run_table(run_dir: str | os.PathLike, captions: Sequence[str], embeddings: torch.Tensor, *, encoder: str,
                    spec: str, sources: Sequence[str | os.PathLike] = (),
                    max_bytes: int = RUN_TABLE_MAX_BYTES) -> tuple:
    """Write RUN_DIR/prompt_embeddings.safetensors for sampling; return (path, rows written, distinct texts).

    It holds the datasets' fitting prompt tables (e.g. the shapes vocabulary), then the distinct
    training captions, each text once, up to `max_bytes` of embeddings (a large caption set
    stays with its dataset, where a prompt table given as DATASET_DIR finds it).
    """
    family = encoder.split("@", 1)[0]
    shape = (str(embeddings.shape[1]), str(embeddings.shape[2]))
    texts, rows = [], []
    for src in sources:
        p = table_path(src, "prompts", family)
        meta = read_header(p)
        if meta is not None and (meta.get("tokens"), meta.get("dim")) == shape:
            t = read_table(p)
            texts += t.texts
            rows.append(t.embeddings)
    texts += list(captions)
    rows.append(embeddings.detach().cpu().float())
    emb = torch.cat(rows)
    first: dict = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    keep = sorted(first.values())
    row_bytes = emb[0].numel() * 4 if len(emb) else 1
    limit = max(0, int(max_bytes) // row_bytes)
    path = Path(run_dir) / RUN_TABLE
    write_table(path, [texts[i] for i in keep[:limit]], emb[keep[:limit]], encoder=encoder, spec=spec)
    return path, min(limit, len(keep)), len(keep)


# ============================================================================ sampling

def read_prompt_embedding(path: str | os.PathLike, tokens: int, dim: int) -> tuple:
    """(embedding [1, tokens, dim], name) from a safetensors file holding one embedding.

    The file holds one tensor (named "embedding", or its only tensor) of shape [tokens, dim] or
    [1, tokens, dim]; a table with a single row works too. The name is the metadata's "prompt"
    (or the table's text), else the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise TextEncoderError(f"prompt embedding {str(path)!r}: no such file")
    with _opened(path, f"prompt embedding {path}: not a readable safetensors file ({{error}}): give a "
                       ".safetensors holding one [tokens, dim] tensor, or --prompt TEXT") as (f, meta, keys):
        key = "embedding" if "embedding" in keys else (keys[0] if len(keys) == 1 else None)
        t = f.get_tensor(key) if key is not None and meta.get("format") != FORMAT else None
    name = meta.get("prompt") or path.name
    if meta.get("format") == FORMAT:
        table = read_table(path)
        if len(table.texts) != 1:
            raise TextEncoderError(f"prompt embedding {path} is a table of {len(table.texts)} prompts: give it as a "
                                   "prompt table, with the prompt to look up")
        t, name = table.embeddings, table.texts[0] or path.name
    if t is None:
        raise TextEncoderError(f"prompt embedding {path} holds {len(keys)} tensors ({', '.join(keys[:4])}): store "
                               "one tensor, named \"embedding\"")
    shape = tuple(t.shape)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] != 1 or tuple(t.shape[1:]) != (int(tokens), int(dim)):
        raise TextEncoderError(f"prompt embedding {path} has shape {shape}, the model needs "
                               f"[{tokens}, {dim}] (or [1, {tokens}, {dim}])")
    if not t.is_floating_point() or not torch.isfinite(t).all():
        raise TextEncoderError(f"prompt embedding {path}: the embedding must be finite floating-point numbers")
    return t.to(torch.float32).clone(), name


@dataclass
class _Listed:
    """A table file known to fit the model: its path, encoder name and texts (rows are read on demand)."""

    path: Path
    encoder: str
    texts: list
    index: dict


class PromptLookup:
    """Prompt tables for one model's encoder: explicit ones (must fit the model) and found ones (fitting ones kept).

    Only the texts of a table are read up front; a hit reads that one row, so looking up a
    prompt in a large caption table stays cheap.
    """

    def __init__(self, spec: str, tokens: int, dim: int):
        self.family, self.tokens, self.dim = spec_family(spec), int(tokens), int(dim)
        self.tables: list = []
        self._seen: set = set()

    def add(self, path: str | os.PathLike, *, explicit: bool = False) -> int:
        """Add a table file, or every fitting table in a folder (a dataset, its image part, a run); return how many."""
        p = Path(path)
        if explicit and not p.exists():
            raise TextEncoderError(f"prompt table {str(p)!r}: no such file or folder")
        files = tables_in(p) + tables_in(p / IMAGES_SUBDIR) if p.is_dir() else ([p] if p.is_file() else [])
        added, misfits = 0, []
        for f in files:
            key = f.resolve()
            if key in self._seen:
                continue
            meta = read_header(f)
            if meta is None:
                if explicit and f == p:
                    _open_table(f)                       # raises the reason it is not a table
                continue
            if (meta.get("family"), meta.get("tokens"), meta.get("dim")) != (self.family, str(self.tokens),
                                                                              str(self.dim)):
                misfits.append(f"{meta.get('encoder')} {meta.get('tokens')}x{meta.get('dim')}")
                continue
            meta, texts, _ = _open_table(f, rows=lambda texts: None)
            index: dict = {}
            for i, t in enumerate(texts):
                index.setdefault(t, i)
                index.setdefault(" ".join(t.split()), i)
            self._seen.add(key)
            self.tables.append(_Listed(f, meta.get("encoder", ""), texts, index))
            added += 1
        if explicit and not added:
            what = f"its tables are of {', '.join(misfits)}" if misfits else "it holds no prompt/caption table"
            raise TextEncoderError(f"prompt table {p}: {what}, the model needs {self.family} "
                                   f"{self.tokens}x{self.dim}")
        return added

    def lookup(self, prompt: str) -> tuple:
        """(embedding [1, tokens, dim], table path) of `prompt` from the first table that has it, else (None, None).

        A prompt matches a text exactly, or after collapsing runs of whitespace.
        """
        for t in self.tables:
            i = t.index.get(prompt, t.index.get(" ".join(str(prompt).split())))
            if i is not None:
                _, _, emb = _open_table(t.path, rows=lambda texts: i)
                return emb.to(torch.float32).clone(), t.path
        return None, None

    def describe_miss(self, prompt: str) -> str:
        """Why `prompt` was not found, with the closest prompts the tables do have."""
        if not self.tables:
            return "no prompt table was found for this model"
        texts = list(dict.fromkeys(x for t in self.tables for x in t.texts if x))
        near = difflib.get_close_matches(str(prompt), texts, n=3, cutoff=0.0)
        where = ", ".join(str(t.path) for t in self.tables[:2]) + (" ..." if len(self.tables) > 2 else "")
        return (f"it is not among the {len(texts)} prompts of {where}"
                + (f" (closest: {'; '.join(repr(x) for x in near)})" if near else ""))


def embed_prompts(recipe, prompts: Sequence[str], search: Sequence = (),
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Text embeddings [N, tokens, dim] of prompts for the recipe's model: from the prompt tables found in `search`
    (table files, datasets, runs) and `data.prompt_table`, the rest from the text encoder (loaded only then, on
    `device`); returned on the CPU."""
    from .encoders import check_output_size
    m = recipe.model
    lookup = PromptLookup(m.text_encoder, m.text_tokens, m.text_dim)
    for where in [*search, recipe.data.prompt_table]:
        if where and Path(where).exists():
            lookup.add(where)
    rows, missing = {}, []
    for p in dict.fromkeys(prompts):
        emb, _ = lookup.lookup(p)
        if emb is None:
            missing.append(p)
        else:
            rows[p] = emb[0]
    if missing:
        enc = load_encoder(m.text_encoder, tokens=m.text_tokens, device=device)
        check_output_size(enc, m.text_tokens, m.text_dim)
        for p, e in zip(missing, enc.encode(missing).float().cpu()):
            rows[p] = e
    return torch.stack([rows[p] for p in prompts])
