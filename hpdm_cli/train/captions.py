"""The training captions' text embeddings (stored with the dataset, looked up in a prompt table, or encoded), and
the text whitening that a model takes from them (`model.text_whitening`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Recipe
from . import TrainError
from .run_dir import CACHE


def caption_embeddings(recipe: Recipe, captions: list, run_dir: Path, device, sources=(), say=None,
                       main: bool = True) -> torch.Tensor:
    """Embeddings [len(captions), tokens, dim] of the training captions, on `device`.

    They come from the tables stored with the datasets (`hpdm prepare`) when those fit the recipe's
    encoder and shape, without importing the encoder; otherwise the encoder computes them (cached in
    RUN_DIR/cache). The main process also writes RUN_DIR/prompt_embeddings.safetensors for sampling.
    """
    from ..data.synthetic import is_synthetic
    from ..text.tables import stored_caption_embeddings, write_run_table
    m = recipe.model
    emb, tables, why = stored_caption_embeddings([s for s in sources if not is_synthetic(s)], captions,
                                                 m.text_encoder, m.text_tokens, m.text_dim)
    if emb is None and recipe.data.prompt_table:
        emb, tables, why = _table_embeddings(recipe, captions)
    if emb is not None:
        name = tables[0].encoder
        if say:
            say(f"caption embeddings: {len(captions)} stored with the dataset ({name}); the text encoder is not loaded")
    else:
        if say:
            say(f"caption embeddings: {why}; computing them with the text encoder {m.text_encoder}")
        emb, name = _encode_captions(recipe, captions, run_dir, device, sources)
    if main:
        path, n, total = write_run_table(run_dir, captions, emb, encoder=name, spec=m.text_encoder, sources=sources)
        if say:
            say(f"prompt table for sampling: {path} ({n} prompts" + (f" of {total}: size limit" if n < total else "")
                + ")")
    return emb.to(device)


def _table_embeddings(recipe: Recipe, captions: list) -> tuple:
    """(embeddings, tables, "") of every caption looked up in `data.prompt_table`, or (None, [], why not)."""
    from ..text.encoders import TextEncoderError
    from ..text.tables import PromptLookup
    m = recipe.model
    lookup = PromptLookup(m.text_encoder, m.text_tokens, m.text_dim)
    try:
        lookup.add(recipe.data.prompt_table, explicit=True)
    except TextEncoderError as e:
        raise TrainError(f"data.prompt_table: {str(e).splitlines()[0]}") from None
    rows = []
    for c in captions:
        emb, _ = lookup.lookup(c)
        if emb is None:
            return None, [], f"caption {c!r} is not in data.prompt_table ({lookup.describe_miss(c)})"
        rows.append(emb)
    return torch.cat(rows), lookup.tables, ""


def _encode_captions(recipe: Recipe, captions: list, run_dir: Path, device, sources=()) -> tuple:
    """(embeddings, encoder name) of the captions from the recipe's text encoder (cached in RUN_DIR/cache)."""
    from ..text.encoders import TextEncoderError, cached_embeddings, check_output_size
    from ..text.tables import load_encoder
    m = recipe.model
    try:
        enc = load_encoder(m.text_encoder, device=device, tokens=m.text_tokens)
    except TextEncoderError as e:
        data = [str(s) for s in sources] or ["DATASET_DIR"]
        raise TrainError(f"{str(e).splitlines()[0]}; or, on a host that has the text encoder, store the caption "
                         f"embeddings with the dataset: hpdm prepare --embed-captions {data[0]} --text-encoder "
                         f"{m.text_encoder}" + (f" (and the same for {', '.join(data[1:])})" if data[1:] else "")
                         + ", then copy the dataset folder here") from None
    check_output_size(enc, m.text_tokens, m.text_dim)
    return cached_embeddings(enc, captions, run_dir / CACHE), enc.name


def whiten_text_states(net: torch.nn.Module, ema, emb: torch.Tensor, distributed: bool = False) -> str:
    """Set the network's (and its EMA's) text whitening from the training captions' states; a line for the log.

    `model.text_whitening` (hpdm_cli/text/whitening.py): the statistics are set once, at a fresh run's start,
    and travel with the weights: a resumed run, its exports and its samples use the same ones. `emb` holds
    the distinct captions this process sees; with `distributed`, rank 0's statistics are broadcast to every
    rank (a rank of synthetic data sees only its own videos' captions, and DDP does not sync buffers).
    """
    from ..text.whitening import whitening_stats
    try:
        mean, matrix = whitening_stats(emb)
    except ValueError as e:
        raise TrainError(f"model.text_whitening: {e}; set model.text_whitening = false") from None
    with torch.no_grad():
        for name, value in (("text_mean", mean), ("text_whiten", matrix)):
            buf = getattr(net, name)
            buf.copy_(value)
            if distributed:
                torch.distributed.broadcast(buf, src=0)
            if ema is not None:
                ema.shadow[name].copy_(buf)
    return (f"model.text_whitening: the text states whitened with the statistics of {emb.shape[0]} distinct "
            "training captions" + (" (rank 0's)" if distributed else "") + ", kept with the weights")
