"""One training step's parts, shared by the loop and `hpdm bench`: the network of a recipe, its arithmetic
(TF32, bf16 autocast, torch.compile and the file that carries its caches), the step's random generator, and the
forward and backward pass.

`hpdm_cli.train.loop` runs them as a training run; `hpdm_cli.drivers.bench` times them (with the
recipe's optimiser, clipping and EMA of `hpdm_cli.train.optim`) as the same step.
"""

from __future__ import annotations

import json
import os
import zlib
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import CUDA_GRAPH_MODES, ConfigError, Recipe
from ..device import use_tf32
from ..diffusion.edm import NoiseDraw, edm_loss
from ..io import atomic_write_bytes
from ..model.network import HPDMNet
from ..pyramid import extract_patches

__all__ = ["step_generator", "set_precision", "autocast_for", "build_model", "forward_backward", "compile_model",
           "compiled_regions", "compile_cache_dir", "compile_note", "pack_compile_caches", "unpack_compile_caches",
           "load_compile_cache", "save_compile_cache"]


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of all random choices of (seed, rank, step): reproducible across resumes.

    Always a CPU generator: the offsets, sigmas and dropout it draws are moved to the device, so
    they are the same on any device; the noise follows train.noise_on (`draw_noise`).
    """
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2 ** 63 - 1))
    return g


def set_precision(precision: str) -> None:
    """fp32: exact float32 matmuls; tf32 and bf16: TF32 tensor cores for float32 matmuls."""
    use_tf32(precision in ("tf32", "bf16"))


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a training forward pass."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def build_model(recipe: Recipe) -> HPDMNet:
    """The network of a recipe (random initialisation seeded by train.seed); ConfigError if it does not fit in memory."""
    torch.manual_seed(recipe.train.seed)
    try:
        return HPDMNet(recipe.pyramid, recipe.model)
    except (RuntimeError, MemoryError) as e:                   # torch.OutOfMemoryError is a RuntimeError
        text = str(e)
        if not isinstance(e, MemoryError) and "alloc" not in text.lower() and "out of memory" not in text.lower():
            raise
        last = text.strip().splitlines()[-1] if text.strip() else type(e).__name__   # torch's says the size last
        raise ConfigError(f"the recipe's model does not fit in memory ({last}): make it smaller (model.num_latents, "
                          "model.latent_dim, model.interface_dim, model.num_blocks)") from None


def forward_backward(model, videos: torch.Tensor, cond, recipe: Recipe, offsets: torch.Tensor,
                     draw: NoiseDraw, loss_scale: float, precision: str):
    """Extract the patch hierarchy, compute the EDM loss and backpropagate `loss * loss_scale`."""
    if videos.is_cuda and recipe.train.compile in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()          # a new step: earlier graph outputs may be overwritten
    patches = extract_patches(videos, recipe.pyramid, offsets)
    with autocast_for(precision, videos.device):
        m = recipe.model
        out = edm_loss(model, patches, offsets, recipe.diffusion, cond, draw=draw,
                       latent_shape=(m.num_latents, m.latent_dim) if m.self_condition else None,
                       record_first_pass=not isinstance(getattr(model, "_orig_mod", model), DistributedDataParallel))
    (out.loss * loss_scale).backward()
    return out


def apply_update(opt, ema, net, bad: torch.Tensor) -> None:
    """The optimiser step, then the EMA update, both skipped on the device where `bad` (0-dim float) is 1; grads cleared."""
    opt.found_inf = bad                         # Lamb and fused AdamW skip on the device, bit for bit
    opt.step()
    if ema is not None:
        ema.update(net, keep=1.0 - bad)
    opt.zero_grad(set_to_none=True)


def compile_cache_dir() -> str:
    """The folder where torch keeps what torch.compile builds (TORCHINDUCTOR_CACHE_DIR, else its default under /tmp)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    return cache_dir()


def compile_note(setting) -> str | None:
    """The line that says what `train.compile` costs at the start of a run (None when it is off)."""
    if setting is False:
        return None
    return (f"train.compile = {json.dumps(setting)}: the first steps compile the network, minutes on a machine "
            f"that has not compiled this recipe (about half a minute after that: torch keeps what it builds in "
            f"{compile_cache_dir()}, TORCHINDUCTOR_CACHE_DIR; train.compile_cache carries it to another machine)")


def pack_compile_caches() -> bytes | None:
    """What torch.compile built or loaded in this process (torch.compiler.save_cache_artifacts), zlib-compressed;
    None when nothing was compiled."""
    packed = torch.compiler.save_cache_artifacts()
    return None if packed is None else zlib.compress(packed[0], 6)


def unpack_compile_caches(blob: bytes) -> None:
    """Hand `pack_compile_caches`' bytes to torch.compile's caches; raises on bytes torch cannot read."""
    torch.compiler.load_cache_artifacts(zlib.decompress(blob))


def load_compile_cache(path: str, say) -> None:
    """Fill torch.compile's caches from `path` (`train.compile_cache`) before anything compiles; `say` what came of it.

    A missing file is a first run's; an unreadable one (another torch, damaged) costs only the compilation it would
    have saved. Made by another torch version or GPU architecture, its entries miss and compilation runs as without.
    """
    if not os.path.exists(path):
        say(f"compile cache: none at {path} yet; it is written after the first step")
        return
    try:
        with open(path, "rb") as f:
            blob = f.read()
        unpack_compile_caches(blob)
    except Exception as e:                 # noqa: BLE001 - any failure only means compiling without the cache
        say(f"compile cache: {path} is unusable ({type(e).__name__}: {str(e)[:120]}); compiling without it")
        return
    say(f"compile cache: loaded {len(blob) / 2 ** 20:.1f} MiB from {path}")


def save_compile_cache(path: str, say) -> None:
    """Write what torch.compile holds to `path` (`train.compile_cache`), atomically; a failed write is said only."""
    blob = pack_compile_caches()
    if blob is None:
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_bytes(path, blob)
    except OSError as e:
        say(f"compile cache: could not write {path} ({e.strerror or e}); the run goes on without it")
        return
    say(f"compile cache: wrote {len(blob) / 2 ** 20:.1f} MiB to {path} (train.compile_cache: a run on another machine "
        "with the same torch and GPU loads it before compiling)")


def compile_model(model, setting, scope: str = "model"):
    """The model as `train.compile` asks: as it is (false), through torch.compile (true), or in a named mode.

    With `scope` "blocks" the network itself is returned, each RIN block and context fusion compiled in place
    (regional compilation): the blocks share one graph per number of levels they process, so the compile
    is shorter than the whole network's one graph, which inlines every block; the glue between blocks (the
    levels' concatenation, the tokenizer, the loss) stays eager, so on a GPU the steps are slower
    (docs/benchmarks.md, fortieth visit). Shapes are compiled statically (`dynamic=False`), as the whole
    network's are.
    """
    if setting is False:
        return model
    mode = {} if setting is True else {"mode": setting}
    if scope == "blocks":
        net = getattr(model, "module", model)                     # inside DDP
        for region in compiled_regions(net):
            region.compile(dynamic=False, **mode)
        return model
    return torch.compile(model, **mode)


def compiled_regions(net) -> list:
    """The modules that `train.compile_scope = "blocks"` compiles: the network's RIN blocks and context fusions."""
    fusions = getattr(net, "fusions", None)
    return [*net.blocks, *(fusions.values() if fusions is not None else ())]
