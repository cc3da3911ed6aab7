"""The packaged default model: a small `shapes` text-to-video generator and its prompt table.

`hpdm sample --prompt "a red circle moving right"` without `--ckpt` samples from it, on the CPU
in well under a minute (MODEL_CARD.md says what it was trained on and how well it does). The
prompt table next to it holds the MiniLM embeddings of every prompt of the shapes vocabulary,
so those prompts need no text encoder; other prompts load the encoder.
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "shapes-t2v.safetensors"
DEFAULT_STEPS = "32,16,8"        # per level: fewer steps at level 2 leave visible noise (docs/results.md)
DEFAULT_OVERLAP = "none"         # on a CPU: half the time of "hw" for a near-identical clip
