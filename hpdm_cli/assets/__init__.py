"""The packaged default model: a small `shapes` text-to-video generator.

`hpdm sample --prompt "a red circle moving right"` without `--ckpt` samples from it, on the CPU
in about half a minute (MODEL_CARD.md says what it was trained on and how well it does). It reads
the prompt's MiniLM word-piece states, computed by the text encoder (a dependency of hpdm).
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "shapes-t2v.safetensors"
MAX_MODEL_BYTES = 16 * 2 ** 20   # the packaged model's size budget: it ships inside the package
DEFAULT_OVERLAP = "none"         # unless --overlap is given: the fastest on a CPU, FVD 65.0 against 62.8 with the
                                 # recipe's "shift-fhw", which removes the faint tile seams at ~1.6x its time
                                 # (docs/results.md, sections 39-40)
