"""`train.init_from`: start a model from another model's weights, copying what fits.

A checkpoint with fewer pyramid levels grows the pyramid by finer levels (the paper fine-tunes its
large text-to-video model from a low-resolution generator); `grown_levels` says whether the grown
model starts by computing the base's outputs on the levels both have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..config import Recipe
from ..model.network import HPDMNet
from . import TrainError
from ..checkpoint import resolve_sampling_weights
from .checkpoint import CheckpointError, read_weights_file


@dataclass
class InitReport:
    """What `init_from_checkpoint` copied into a model (tensor names)."""

    loaded: list                                 # copied whole
    partial: list                                # per-level tables: the rows of the levels both models have
    new: list                                    # kept their initialisation (partial and widened ones included)
    unused: list                                 # checkpoint tensors with no place in the model
    grown: str = ""                              # for a checkpoint with fewer levels: how its levels start here
    base_levels: int = 0                         # the checkpoint's number of pyramid levels
    widened: list = field(default_factory=list)  # the tokenizer, given shallow fusion's context channels at zero

    def describe(self, path: str) -> str:
        """One log line: what was loaded, partly loaded and new."""
        return (f"init_from {path}: {len(self.loaded)} tensors loaded, "
                + (f"{len(self.partial)} per-level tables loaded for the levels both models have "
                   f"({', '.join(self.partial)}), " if self.partial else "")
                + (f"{', '.join(self.widened)} loaded for the pixels, its shallow-fusion context inputs "
                   "start at zero, " if self.widened else "")
                + f"{len(self.new)} new" + (f": {', '.join(self.new[:12])}" if self.new else "")
                + (" ..." if len(self.new) > 12 else "")
                + (f"; {len(self.unused)} checkpoint tensors unused" if self.unused else "")
                + (f"; {self.grown}" if self.grown else ""))


def grown_levels(base: Recipe, net: HPDMNet, unused: Sequence[str] = ()) -> str:
    """For a base model with fewer levels than `net`: whether `net` starts by computing them as the base did.

    A pyramid grown by finer levels (the paper's large text-to-video model is fine-tuned from a
    low-resolution generator) keeps the base's outputs on the levels both have exactly when those
    levels have the same patch and sizes, every block processes the same of them (min(n_b, L0)
    equals the base's n_b) and every base weight found its place (`unused` names those that did
    not): finer levels never reach coarser ones (docs/method.md, invariant "Causality: coarse to fine only").
    Returns "" when the base has as many levels or more, else a short statement for the log.
    """
    L0, L = base.pyramid.num_levels, net.num_levels
    if L0 >= L:
        return ""
    why = ""
    if unused:
        why = f"{len(unused)} of its tensors have no place here ({', '.join(list(unused)[:3])})"
    elif tuple(base.pyramid.patch) != tuple(net.pyramid.patch) or any(
            base.pyramid.level_resolution(l) != net.pyramid.level_resolution(l) for l in range(L0)):
        why = "their patch or level sizes differ"
    else:
        ours, theirs = [min(n, L0) for n in net.load], base.model.resolved_load(L0)
        if ours != theirs:
            why = f"the blocks process them as {ours}, the checkpoint's as {theirs} (model.load)"
    span = lambda a, b: f"levels {a}-{b}" if b > a else f"level {a}"                      # noqa: E731
    return (f"the checkpoint's {L0}-level model is reproduced on {span(0, L0 - 1)}, {span(L0, L - 1)} new" if not why
            else f"the checkpoint's weights, not its outputs, on {span(0, L0 - 1)}: {why}")


def init_from_weights(path: str) -> Path:
    """The weights file `train.init_from` names (TrainError naming the key when it names none)."""
    try:
        return resolve_sampling_weights(path)
    except CheckpointError as e:
        raise TrainError(f"train.init_from = {path!r}: {str(e).splitlines()[0]}") from None


def init_from_checkpoint(net: torch.nn.Module, path: str) -> InitReport:
    """Copy the weights of checkpoint `path` that fit into `net` (`train.init_from`); report what was copied.

    `path` is a run, checkpoint or weights file, or "packaged" (the packaged shapes model, as a
    base to grow). The weights are the checkpoint's EMA when it has one; a tensor is copied when its name and
    shape match. Per-level tables (`level_embed`, `level_token`) of a model with fewer or more
    levels take the rows of the levels both have: level l of the checkpoint is level l here (the
    base generator is the level-0 model); levels the checkpoint lacks take its finest level's rows
    when that is a super-resolution level (a new level then starts near its loss when the blocks
    give it the same compute: docs/results.md, section 24), else keep theirs; they count as new. Raises TrainError when what fits is
    under 10% of the model's parameters (an unrelated checkpoint).
    """
    weights, base, _ = read_weights_file(init_from_weights(path))
    own = net.state_dict()
    loaded, partial, widened = {}, [], []
    for k, v in weights.items():
        if k not in own:
            continue
        mine = own[k]
        if mine.shape == v.shape:
            loaded[k] = v
        elif k == "tokenizer.weight" and mine.shape == (v.shape[0], 2 * v.shape[1]):
            # Shallow fusion here, not in the checkpoint: its tokens read (pixels, context) channel-major,
            # so the checkpoint's columns are the pixels' and the context's start at zero; level 0, whose
            # context is zero, then computes what the checkpoint did.
            loaded[k] = torch.cat([v.to(mine.dtype), torch.zeros_like(mine[:, v.shape[1]:])], dim=1)
            widened.append(k)
        elif "level" in k.rsplit(".", 1)[-1] and v.ndim == mine.ndim >= 1 and v.shape[1:] == mine.shape[1:]:
            n = min(v.shape[0], mine.shape[0])
            t = mine.detach().clone()
            t[:n] = v[:n].to(t.dtype)
            if n > 1:                            # a new finer level starts as the finest super-resolution level
                t[n:] = v[n - 1].to(t.dtype)     # an octave up (a base level alone, a generator, is no such start)
            loaded[k] = t
            partial.append(k)
    params = dict(net.named_parameters())
    total = sum(p.numel() for p in params.values())
    got = sum(params[k].numel() for k in loaded if k in params)
    if got < 0.1 * total:                       # a few coincidentally equal shapes are no initialisation
        raise TrainError(f"train.init_from = {path}: no tensor of that checkpoint fits this model beyond "
                         f"{100 * got / max(total, 1):.1f}% of its parameters (different interface/latent sizes?); "
                         "use a checkpoint of a related model")
    net.load_state_dict(loaded, strict=False)
    full = sorted(k for k in loaded if k not in partial and k not in widened)
    unused = sorted(set(weights) - set(loaded))
    return InitReport(loaded=full, partial=sorted(partial), new=sorted(set(own) - set(full)),
                      unused=unused, grown=grown_levels(base, net, unused),
                      base_levels=base.pyramid.num_levels, widened=widened)
