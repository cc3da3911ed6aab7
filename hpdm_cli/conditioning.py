"""What a generated video is conditioned on: a prompt or a class resolved against a model's recipe.

* `resolve_condition` turns a prompt or a class into the network's condition: class ids for
  class models (a name, an id, or a prompt that names a class), MiniLM/T5 embeddings for text
  models, nothing (the null condition) when neither is given.
* `precomputed_condition` takes a text model's condition from precomputed embeddings (a prompt
  table, or a single embedding file) before any text encoder is loaded.

`GenerateError` (a user-fixable problem with a sampling or upscaling request) is defined here,
the lowest module that raises it; the sample and upscale drivers raise it too. Messages name the
request's parts in words (a prompt, a class, a prompt table, a prompt embedding), not the
command-line options that carry them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .checkpoint import GeneratorInfo
from .config import Recipe
from .data.shards import is_dataset
from .errors import HPDMError

__all__ = ["GenerateError", "Condition", "resolve_condition", "precomputed_condition", "request_condition"]


class GenerateError(HPDMError, ValueError):
    """A user-fixable problem with a sampling or upscaling request (message says what to do)."""


@dataclass
class Condition:
    """What the network is conditioned on: nothing (null condition), a class id or a text embedding."""

    kind: str = "none"                          # "none", "class" or "text"
    label: Optional[int] = None                 # class id
    name: str = ""                              # class name or prompt
    embedding: Optional[torch.Tensor] = None    # text embedding [1, tokens, dim]
    unread: str = ""                            # the prompt's end past the text encoder's token limit (not read)

    def batch(self, n: int, device=None) -> Optional[torch.Tensor]:
        """The condition of `n` samples ([n] ids or [n, tokens, dim] embeddings), or None."""
        if self.kind == "class":
            return torch.full((n,), int(self.label), dtype=torch.long, device=device)
        if self.kind == "text":
            return self.embedding.to(device).expand(n, *self.embedding.shape[1:])
        return None

    def describe(self) -> str:
        """A short human description: "class 2 (circle)", "prompt '...'" or "unconditional"."""
        if self.kind == "class":
            return f"class {self.label}" + (f" ({self.name})" if self.name else "")
        if self.kind == "text":
            return f"prompt {self.name!r}"
        return "unconditional"

    def read(self) -> str:
        """The part of the prompt the text encoder read (all of it unless it was cut)."""
        full = self.name.rstrip()
        return full[: len(full) - len(self.unread)] if self.unread and full.endswith(self.unread) else self.name

    def notes(self, shapes_model: bool = False, short_captions: bool = False) -> list:
        """Warnings about the prompt: the end the text encoder cut off; with `shapes_model` (the packaged model,
        given a prompt), words its captions never used and pairings its data never shows, in the part read
        (`short_captions`: it was also trained on captions without their background, so none needs naming)."""
        out = [self.cut_note()] if self.unread else []
        if shapes_model and self.kind == "text":
            from .data.shapes import unknown_words, unseen_pairing
            out += [n for n in (unknown_words(self.read(), short_captions=short_captions),
                                unseen_pairing(self.read())) if n]
        return out

    def cut_note(self) -> str:
        """A warning that the text encoder cut the prompt, naming the unread end ("" if it read all of it)."""
        if not self.unread:
            return ""
        read = self.read()
        mid_word = read != self.name and read[-1:].isalnum() and self.unread[:1].isalnum()   # a word cut in two
        cut = ("..." if mid_word else "") + self.unread
        return f"the prompt is longer than the model's text encoder reads: {cut!r} is cut off and has no effect; " \
               "shorten the prompt"


def _norm_name(text: str) -> str:
    """Comparable form of a class name or prompt: CamelCase split, lower case, no punctuation or articles."""
    return "".join(_words(text))


def _words(text: str) -> list:
    """The words of a class name or prompt as `_norm_name` compares them (a leading article dropped)."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(text))
    words = re.sub(r"[^0-9a-z]+", " ", text.lower()).split()
    while words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return words


def _named_in(prompt: str, names: Sequence[str]) -> list:
    """Ids of the classes whose words run, in order, inside the prompt's, the longest such names only."""
    words = _words(prompt)
    found = {}
    for i, n in enumerate(names):
        w = _words(n)
        if w and any(words[j:j + len(w)] == w for j in range(len(words) - len(w) + 1)):
            found[i] = len(w)
    longest = max(found.values(), default=0)
    return [i for i, k in found.items() if k == longest]


def _class_list(names: Sequence[str], num_classes: int, source) -> str:
    """The model's classes for an error message: names with their ids, or the id range."""
    if names:
        return "classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names))
    where = f" (no dataset.json found at data.path = {source!r})" if source else ""
    return f"this model has class ids 0..{num_classes - 1} and no class names{where}"


def resolve_condition(recipe: Recipe, prompt: Optional[str] = None, class_: Optional[str | int] = None, *,
                      class_names: Sequence[str] = (), device="cpu", encoder=None) -> Condition:
    """The condition for a prompt or a class on this recipe's model (GenerateError or TextEncoderError if unfit).

    Class models take a class name or id, or a prompt that names a class (case, punctuation,
    CamelCase and a leading article are ignored), or whose words contain one class's name in order
    (the longest such name; two different ones are refused); text models take a prompt (encoded with the
    recipe's text encoder, or `encoder`); neither given = the null condition.
    """
    m = recipe.model
    if prompt is not None and class_ is not None:
        raise GenerateError("give either a prompt or a class, not both")
    if prompt is None and class_ is None:
        return Condition()
    if m.cond == "none":
        raise GenerateError("this model is unconditional (model.cond = \"none\"): give neither a prompt nor a class")
    if m.cond == "text":
        if class_ is not None:
            raise GenerateError("this model is text-conditioned: describe the video with a prompt instead of a "
                                "class")
        if not str(prompt).strip():
            return Condition()
        from .text.encoders import check_output_size
        if encoder is None:
            from .text.tables import load_encoder
            encoder = load_encoder(m.text_encoder, device=device, tokens=m.text_tokens)
        check_output_size(encoder, m.text_tokens, m.text_dim)
        emb = encoder.encode([str(prompt)]).float().cpu()
        unread = getattr(encoder, "unread", None)           # TextEncoder's; a duck-typed encoder may lack it
        return Condition(kind="text", name=str(prompt), embedding=emb, unread=unread(str(prompt)) if unread else "")
    # Class-conditional model.
    names = [str(n) for n in class_names]
    src = recipe.data.path
    if class_ is not None:
        text = str(class_).strip()
        exact = [i for i, n in enumerate(names) if n == text]
        if exact:
            return Condition(kind="class", label=exact[0], name=names[exact[0]])
        if re.fullmatch(r"[+-]?\d+", text):
            i = int(text)
            if not 0 <= i < m.num_classes:
                raise GenerateError(f"class {i}: class ids run from 0 to {m.num_classes - 1}; "
                                    + _class_list(names, m.num_classes, src))
            return Condition(kind="class", label=i, name=names[i] if i < len(names) else "")
        what = f"unknown class {text!r}"
    else:
        text = str(prompt)
        what = f"prompt {text!r} does not name a class of this class-conditional model (give a class name or id)"
    key = _norm_name(text)
    hits = [i for i, n in enumerate(names) if key and _norm_name(n) == key]
    if hits:
        return Condition(kind="class", label=hits[0], name=names[hits[0]])
    if prompt is not None:                             # a prompt that names one class among other words
        hits = _named_in(text, names)
        if len(hits) == 1:
            return Condition(kind="class", label=hits[0], name=names[hits[0]])
        if hits:
            what = (f"prompt {text!r} names several classes ({', '.join(names[i] for i in hits)}): give one class "
                    "name or id")
    raise GenerateError(f"{what}; " + _class_list(names, m.num_classes, src))


def _table_dirs(recipe: Recipe, info: GeneratorInfo) -> list:
    """Folders that may hold prompt tables for this checkpoint: its run, its folder, its datasets (if found)."""
    search = info.search_dirs
    dirs = list(info.folders)
    for rel in (recipe.data.path, recipe.data.image_path):
        if rel:
            p = Path(rel)
            dirs += [d for d in ([p] if p.is_absolute() else [p] + [s / p for s in search])
                     if is_dataset(d)]
    return dirs


def precomputed_condition(recipe: Recipe, info: GeneratorInfo, prompt: Optional[str] = None,
                          class_: Optional[str] = None, *, prompt_table=None, prompt_embedding=None,
                          device="cpu") -> Optional[Condition]:
    """A text model's condition from precomputed embeddings; None leaves it to `resolve_condition`.

    `prompt_embedding` (a safetensors file of one embedding) is the condition itself. A `prompt`
    is looked up in `prompt_table` (a table file, or a folder of tables), then in the tables next
    to the checkpoint (RUN_DIR/prompt_embeddings.safetensors, written by training) and those stored
    with its datasets; only a prompt no table has is encoded, with the recipe's text encoder.
    """
    from .text.encoders import TextEncoderError
    from .text.tables import PromptLookup, load_encoder, read_prompt_embedding
    m = recipe.model
    if prompt_table is None and prompt_embedding is None and (m.cond != "text" or prompt is None):
        return None
    if m.cond != "text":
        raise GenerateError(f"a prompt table or prompt embedding needs a text-conditioned model; this one has "
                            f"model.cond = \"{m.cond}\"")
    try:
        if prompt_embedding is not None:
            if prompt is not None or class_ is not None:
                raise GenerateError("give either a prompt embedding or a prompt, not both")
            emb, name = read_prompt_embedding(prompt_embedding, m.text_tokens, m.text_dim)
            return Condition(kind="text", name=name, embedding=emb)
        if prompt is None:
            raise GenerateError("a prompt table needs a prompt (the text to look up in it)")
        if class_ is not None or not str(prompt).strip():
            return None                                   # resolve_condition: an error / the null condition
        lookup = PromptLookup(m.text_encoder, m.text_tokens, m.text_dim)
        if prompt_table is not None:
            lookup.add(prompt_table, explicit=True)
        for d in _table_dirs(recipe, info):
            lookup.add(d)
        emb, _ = lookup.lookup(str(prompt))
        if emb is not None:                   # stored as the encoder made it: cut where the encoder cuts
            from .text.encoders import prompt_unread
            return Condition(kind="text", name=str(prompt), embedding=emb,
                             unread=prompt_unread(m.text_encoder, m.text_tokens, str(prompt)))
        try:
            encoder = load_encoder(m.text_encoder, device=device, tokens=m.text_tokens)
        except TextEncoderError as e:
            raise GenerateError(f"cannot embed the prompt {str(prompt)!r}: {lookup.describe_miss(str(prompt))}, and "
                                f"{str(e).splitlines()[0]}; or give a prompt table (a table file or a dataset "
                                "folder) or a prompt embedding file") from None
    except TextEncoderError as e:
        raise GenerateError(str(e).splitlines()[0]) from None
    return resolve_condition(recipe, prompt, None, device=device, encoder=encoder)


def request_condition(recipe: Recipe, info: GeneratorInfo, prompt: Optional[str] = None,
                      class_: Optional[str] = None, *, prompt_table=None, prompt_embedding=None,
                      device="cpu", guided: bool = False) -> Condition:
    """The condition of a sampling request: precomputed embeddings first, else `resolve_condition`.

    `guided`: the request names a guidance scale other than 1, which needs a prompt or a class to steer towards."""
    if prompt is not None and not str(prompt).strip():
        raise GenerateError("--prompt is empty: describe the video, or leave --prompt out for an unconditional one")
    cond = precomputed_condition(recipe, info, prompt, class_, prompt_table=prompt_table,
                                 prompt_embedding=prompt_embedding, device=device)
    if cond is None:
        cond = resolve_condition(recipe, prompt, class_, class_names=info.class_names, device=device)
    if guided and cond.kind == "none":
        if recipe.model.cond == "none":
            raise GenerateError("--guidance steers a video towards its prompt or class, and this model is "
                                "unconditional: leave --guidance out (or give 1: no guidance)")
        raise GenerateError("--guidance steers a video towards its prompt or class: give --prompt or --class with it")
    return cond
