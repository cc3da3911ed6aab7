"""The packaged default model: a small `shapes` text-to-video generator.

`hpdm sample --prompt "a red circle moving right on a gray background"` without `--ckpt` samples from it, on the CPU
in under a minute on two cores (MODEL_CARD.md says what it was trained on and how well it does). It reads
the prompt's MiniLM word-piece states, computed by the text encoder (a dependency of hpdm).
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "shapes-t2v.safetensors"
MAX_MODEL_BYTES = 16 * 2 ** 20   # the packaged model's size budget: it ships inside the package
CPU_OVERLAP = "none"             # its tiling on a CPU unless --overlap is given: the fastest there, FVD 65.0
                                 # against 62.8 with the "shift-fhw" stored with the weights (recipes/shapes.toml's
                                 # tiling, used on any other device), which removes the faint tile seams at ~1.5x
                                 # the time (docs/results.md, sections 39-40); not for a prompt that names no
                                 # background, whose independent tiles may pick different ones (section 60)


GUIDE_MODEL = Path(__file__).resolve().parent / "shapes-t2v-guide.safetensors"   # its autoguidance model
PACKAGED = "packaged"            # the word that names the packaged model (or its guide) wherever a model is asked for


def names_packaged(value) -> bool:
    """Whether a model argument names the packaged one: the word "packaged", unless a path of that name exists."""
    return str(value) == PACKAGED and not Path(value).exists()


def resolve_guide(value: str) -> Path:
    """The file a `sample.guide_model` names: "packaged" is the packaged model's guide, anything else a path.

    Always, even where a path of that name exists: the packaged model's own recipe stores "packaged" (a folder
    called packaged is named as ./packaged).
    """
    return GUIDE_MODEL if value == PACKAGED else Path(value)


def default_overlap(device_type: str, prompt=None):
    """The packaged model's tiling on a device type ("cpu", "cuda", ...) for `prompt` when --overlap is not given.

    None (the stored recipe's) except on a CPU for a prompt that names its background (or no prompt).
    """
    from ..data.shapes import names_background
    if device_type != "cpu" or (prompt and not names_background(prompt)):
        return None
    return CPU_OVERLAP
