"""How far apart does a text model hold two prompts that differ in one word? The encoder's and the network's view.

For a base caption ("a red circle moving left on a black background" by default) and the captions
with its colour, shape, direction or background word swapped, this prints the relative distance
|x(swapped) - x(base)| / |x(base)| of: the text encoder's token states (frozen: what the model is
given), the network's condition tokens of level 0 after its text projection (what its latents
attend to), and the summed condition vector that scales and shifts its norms (model.adaptive_norm).
A word the projection has not learnt to tell apart keeps a small distance there; the MiniLM states of
"left" and "right" prompts differ about half as much as colour or shape swaps do, and a short run
learns the motion last (docs/results.md, section 63). A few seconds per checkpoint on a CPU:
    python benchmarks/cond_token_probe.py hpdm_cli/assets/shapes-t2v.safetensors [more checkpoints]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

WORDS = ("colour", "shape", "direction", "background")


def swap_word(caption: str, word: str) -> str:
    """The shapes caption with its `word` (one of WORDS) replaced by the next option of its list."""
    from hpdm_cli.data.shapes import BACKGROUNDS
    from hpdm_cli.eval.faithfulness import parse_shapes_caption
    from prompt_word_swap import swapped                    # the object's words, as that script swaps them
    if word != "background":
        return swapped(caption, word)
    options = list(BACKGROUNDS)
    old = parse_shapes_caption(caption)["background"]
    head, sep, tail = caption.partition(" on ")
    return head + sep + tail.replace(old, options[(options.index(old) + 1) % len(options)], 1)


def distances(net, rec, caption: str, tables: list) -> dict:
    """Per swapped word: relative distance of the encoder states, the level-0 condition tokens and the norm vector."""
    import torch
    from hpdm_cli.eval.faithfulness import parse_shapes_caption
    from hpdm_cli.text.tables import embed_prompts
    level0 = torch.zeros(1)                                   # the noise level does not depend on the prompt

    def views(text: str):
        states = embed_prompts(rec, [text], tables)
        with torch.no_grad():
            toks, vec = net.cond_tokens(level0, 0, states, None)
        return states, toks[:, 2:], vec                        # drop the noise-level and pyramid-level tokens

    base = views(caption)
    out = {}
    named = parse_shapes_caption(caption)
    for word in (w for w in WORDS if named[w] is not None):   # a caption without a background skips that swap
        other = views(swap_word(caption, word))
        out[word] = {name: round(float((b - a).norm() / a.norm()), 3)
                     for name, a, b in zip(("encoder", "tokens", "norm_vector"), base, other) if a is not None}
    return out


def main(argv=None) -> int:
    """Print one JSON line per checkpoint: the relative distances per swapped word."""
    from hpdm_cli.checkpoint import load_generator
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="+", help="run directories, checkpoints or .safetensors of shapes text models")
    ap.add_argument("--caption", default="a red circle moving left on a black background")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts_tokens.safetensors",
                    help="prompt tables or folders holding them (else the text encoder embeds the prompts)")
    a = ap.parse_args(argv)
    tables = [p for p in a.tables.split(",") if p and Path(p).exists()]
    for path in a.ckpt:
        net, rec, info = load_generator(path, "cpu")
        if rec.model.cond != "text":
            raise SystemExit(f"cond_token_probe.py: {path} is not a text model (model.cond = \"{rec.model.cond}\")")
        print(json.dumps({"ckpt": str(path), "step": info.step, "caption": a.caption,
                          **distances(net, rec, a.caption, tables)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
