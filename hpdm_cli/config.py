"""The typed configuration of hpdm: one object flows from a TOML recipe to every component.

Every dimension, count and switch of the method lives here, grouped by the recipe's
sections (`[data]`, `[pyramid]`, `[model]`, `[diffusion]`, `[train]`, `[sample]`, `[eval]`).
Defaults give the HPDM-S sizes that the paper's Table 7 lists (the ones it does not list, compute layers and
head size, are hpdm's choices: README, "Model size"); the training schedule and sampling
of a run come from its recipe (recipes/ucf.toml: the paper's UCF-101 settings), which overrides them.
`Recipe.validate()` checks cross-field consistency and raises `ConfigError` with a
one-line message naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import HPDMError


class ConfigError(HPDMError, ValueError):
    """A recipe value is missing, of the wrong type or inconsistent (message names the key)."""


# Classifier-free guidance scales in use are about 1-20; far larger ones only amplify the difference of the
# conditional and unconditional predictions until float32 overflows (1e300 gives a black video).
# `hpdm sample --guidance` is held to the same range.
MAX_GUIDANCE = 100.0
# Frame rates a video may be written at (a container stores 1/fps as a fraction of denominator <= 1001).
MIN_FPS, MAX_FPS = 0.01, 1000.0
# Sampling seeds are 64-bit: the sampler's generators take a seed modulo 2**64, so larger ones would repeat smaller ones.
MAX_SEED = 2 ** 64 - 1
# Sampling steps per level: the recipes use 8-128; far more only costs time (and overflows the schedule).
MAX_STEPS = 100_000
# Videos one command generates: seeds of a `--seeds` range, clips per side of `hpdm eval` (a million clips of the
# smallest model take days on one GPU).
MAX_VIDEOS = 1_000_000
# Training steps and the global batch: far above any run (the recipes train 10^4-10^6 steps of batch 16-1024);
# larger values overflow index arithmetic or exhaust the host's memory before the first step.
MAX_TRAIN_STEPS, MAX_BATCH = 10 ** 10, 2 ** 20
TILE_BATCH = 64   # tiles per network forward when sampling, unless --tile-batch says otherwise
# `hpdm bench`'s defaults: timed and warm-up training steps; videos per sampler call and precision with --sampling.
BENCH_STEPS, BENCH_WARMUP, BENCH_SAMPLING_BATCH, BENCH_SAMPLING_PRECISION = 10, 3, 16, "bf16"
# torch.compile's modes that `train.compile` may name ("reduce-overhead" replays CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# What `train.compile_scope` may name: the whole network as one graph, or each RIN block and fusion on its own.
COMPILE_SCOPES = ("model", "blocks")


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


OVERLAP_AXES = "fhw"


def split_overlap(overlap: str, key: str = "overlap") -> tuple[str, str]:
    """Parse an inference tiling -> (overlapped axes, shifted axes), each a subset of "fhw" in f, h, w order.

    The one rule for `pyramid.overlap` and every overlap option. "fhw", "hw", ... (any order or
    case): 50% overlapping tiles along those axes, averaged on every denoiser call (MultiDiffusion).
    "shift-hw": tiles that do not overlap within a call but move by half a tile along those axes
    from one call to the next (docs/method.md, "Shifted tiles"); "f+shift-hw" combines both on
    disjoint axes. "", "none": neither. ConfigError (a ValueError) names `key` and what is wrong.
    """
    text = (overlap or "none").strip().lower()
    if text == "none":
        return "", ""
    over, shift = text, ""
    if "shift-" in text:
        over, shift = text.split("shift-", 1)
        if not shift or (over and (over == "+" or not over.endswith("+"))):
            raise ConfigError(f"{key} = {overlap!r}: write the shifted axes as 'shift-hw', after any overlapped "
                              f"ones as 'f+shift-hw'")
        over = over[:-1]
    for part in (over, shift):
        if set(part) - set(OVERLAP_AXES) or len(set(part)) != len(part):
            raise ConfigError(f"{key} = {overlap!r}: expected overlapped axes (a subset of 'fhw', e.g. 'hw'), "
                              f"shifted ones ('shift-hw'), both ('f+shift-hw'), or 'none'")
    if set(over) & set(shift):
        raise ConfigError(f"{key} = {overlap!r}: an axis cannot both overlap and shift")
    order = lambda part: "".join(a for a in OVERLAP_AXES if a in part)    # noqa: E731
    return order(over), order(shift)


def grid_axes(overlap: str, key: str = "overlap") -> str:
    """Axes on which a tiling's tiles start every half tile: the overlapped and the shifted ones."""
    over, shift = split_overlap(overlap, key)
    return "".join(a for a in OVERLAP_AXES if a in over + shift)


def parse_overlap(overlap: str, key: str = "overlap") -> str:
    """Normalise an inference tiling (see `split_overlap`): "wf" -> "fw", "none" -> "", "shift-wh" -> "shift-hw"."""
    over, shift = split_overlap(overlap, key)
    if not shift:
        return over
    return f"{over}+shift-{shift}" if over else f"shift-{shift}"


def check_range(key: str, value, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
                integer: bool = False, note: str = "") -> None:
    """Raise ConfigError unless `value` is a finite number (an integer if `integer`) within the given bounds.

    The message names `key`, the value and the allowed range in one line, e.g.
    `train.lr = nan: expected a finite number > 0`.
    """
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = is_int or (not integer and isinstance(value, float) and math.isfinite(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if ok:
        return
    kind = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        want = f"{kind} in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        want = f"{kind} {'>' if lo_open else '>='} {_fmt(lo)}"
    elif hi is not None:
        want = f"{kind} {'<' if hi_open else '<='} {_fmt(hi)}"
    else:
        want = kind
    shown = repr(value) if isinstance(value, (int, float, str)) else str(value)
    raise ConfigError(f"{key} = {shown}: expected {want}{note}")


@dataclass
class DataConfig:
    """The recipe's [data]: where the videos come from and how they are loaded."""

    path: str = "data/ucf101"            # Prepared dataset directory (see `hpdm prepare`).
    fps: float = 25.0                    # Frames per second of the prepared clips.
    image_fraction: float = 0.0          # Share of batch items that are still images (joint training).
    image_path: str = ""                 # Prepared image dataset for joint training ("" = none).
    num_workers: int = 2                 # Data-loader worker processes per rank.
    horizontal_flip: bool = False        # Random left-right flips (refused when labels/captions name directions).
    synthetic_videos: int = 4096         # path = "synthetic:shapes": videos rendered into memory at start-up.
    synthetic_split: str = "train"       # ... and their held-out split ("all", "train" or "heldout").
    short_caption_prob: float = 0.0      # ... and the share of samples captioned without their background phrase.
    prompt_table: str = ""               # Prompt-embedding table (file or folder) read before any text encoder.


@dataclass
class PyramidConfig:
    """The recipe's [pyramid]: the video size, the patch every level sees, and tile overlap at sampling."""

    resolution: tuple[int, int, int] = (64, 256, 256)   # Full video size (frames, height, width).
    patch: tuple[int, int, int] = (16, 64, 64)          # Patch size of every level (frames, height, width).
    overlap: str = "fhw"                                 # Tiles at inference: axes with 50% overlap, or shifted
    #                                                      ones ("shift-hw"; `split_overlap` gives the grammar).
    offsets: str = "continuous"                          # Training patch offsets: "continuous", "grid" or
    #                                                      "tiles" (docs/method.md, section 3).

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels L: 1 + log2 of the largest full/patch ratio."""
        return 1 + max(int(math.log2(R // r)) for R, r in zip(self.resolution, self.patch))

    @property
    def pixel_grid_offsets(self) -> bool:
        """Whether every level's training patch is a whole-pixel crop of its level ("grid" and "tiles" offsets)."""
        return self.offsets in ("grid", "tiles")

    def level_resolution(self, level: int) -> tuple[int, int, int]:
        """Size of the whole video at `level` (patch size at level 0, full size at the last)."""
        return tuple(min(r << level, R) for R, r in zip(self.resolution, self.patch))

    def level_scale(self, level: int) -> tuple[float, float, float]:
        """Per-axis patch scale s_l = patch / level resolution (1 at level 0)."""
        return tuple(r / n for r, n in zip(self.patch, self.level_resolution(level)))

    def odd_half_tile_axis(self, overlap: str | None = None) -> str:
        """The first axis that `overlap` (default pyramid.overlap) tiles every half tile where the patch is odd
        (so that no tiling exists), or ""."""
        halved = grid_axes(self.overlap if overlap is None else overlap, "pyramid.overlap")
        return next((a for a, r, R in zip(OVERLAP_AXES, self.patch, self.resolution) if a in halved and r % 2 and R > r),
                    "")


@dataclass
class ModelConfig:
    """The recipe's [model]: the RIN backbone, fusion, adaptive computation and conditioning (docs/method.md)."""

    channels: int = 3                                   # Colour channels of the video.
    tokenizer: tuple[int, int, int] = (1, 4, 4)         # Pixels per interface token (frames, height, width).
    interface_dim: int = 1024                           # Width d of the interface tokens.
    latent_dim: int = 256                               # Width of the latents (256/512/1024 = HPDM-S/M/L).
    num_latents: int = 768                              # Learned latent tokens per level.
    num_blocks: int = 6                                 # RIN blocks.
    compute_layers: int = 4                             # Latent self-attention layers per block.
    head_dim: int = 64                                  # Channels per attention head.
    mlp_ratio: float = 4.0                              # MLP hidden width / model width.
    load: object = "linear"                             # Levels per block: a list, "linear" or "none".
    fusion: str = "deep"                                # "deep" (DCF), "shallow" (RGB of lower level) or "none".
    fusion_coords: bool = True                          # Concatenate global token coordinates in DCF.
    fusion_edges: bool = False                          # ... and each token's nearness to the frame's faces.
    context_detach: bool = False                        # Cut gradients from level l into lower levels' context.
    cond: str = "class"                                 # "class", "text" or "none".
    num_classes: int = 101                              # Classes of a class-conditional model.
    text_encoder: str = "minilm"                        # "minilm" (offline default), "minilm-tokens", "t5:/dir".
    text_dim: int = 384                                 # Width of text-encoder embeddings.
    text_tokens: int = 1                                # Text embedding tokens per prompt (1 = pooled).
    text_whitening: bool = False                        # Whiten the text states with the training captions' statistics.
    self_condition: bool = False                        # RIN latent self-conditioning.
    adaptive_norm: bool = False                         # Condition every latent LayerNorm (scale, shift) too.
    adaptive_norm_interface: bool = False               # ... and the two interface LayerNorms of every write.
    pos_embed: str = "learned"                          # Token positions: "learned" table; "sincos" / "fourier" + it.
    pos_fixed_levels: str = "all"                       # Levels given the fixed table: "all" or "base" (level 0 only).
    pos_fixed_scale: float = 1.0                        # Multiplier of the fixed table (1: unit scale, values in [-1, 1]).
    # [lo, hi]: the fixed table's weight rises with log(sigma) from 0 at sigma <= lo to 1 at sigma >= hi (the
    # motion is decided at high noise, the texture at low); [] = weight 1 at every sigma.
    pos_fixed_sigma: list[float] = field(default_factory=list)
    # Where the fixed table goes: "tokens" (added to each token); "attention" (the read's keys and the write's
    # queries only, as DETR's encodings); "read" (the read's keys and values and the write's queries). With
    # either of the last two the tokens carry content and the learned table alone.
    pos_fixed_into: str = "tokens"
    # Train the "fixed" table: a parameter initialised to the sincos / Fourier features (plain Adam steps, as the
    # learned table) instead of a constant buffer, so training can reshape it where it costs accuracy.
    pos_fixed_trainable: bool = False
    # Subtract the fixed table (at its weight) from the tokens before the output norm and detokenizer read them:
    # the blocks see the table in the stream, the linear readout does not have to cancel a full-rank table.
    pos_fixed_subtract: bool = False
    interface_conv: bool = False                        # Depthwise 3x3x3 conv over the token grid in every write.
    qk_norm: bool = False                               # RMS-normalise queries and keys per head (bounded logits).
    bf16_streams: bool = False                          # Under bf16 autocast, carry tokens and latents in bf16.

    def resolved_load(self, num_levels: int) -> list[int]:
        """Per-block number of processed levels n_b (adaptive computation)."""
        if isinstance(self.load, str):
            if self.load == "none":
                return [num_levels] * self.num_blocks
            if self.load == "linear":
                # n_b grows linearly with b (one more level every ceil(B/L) blocks) and the
                # last block sees every level: 6 blocks, 4 levels -> [1,1,2,2,3,4] (the
                # paper's load); 3 levels -> [1,1,2,2,3,3] (docs/method.md, section 7).
                nb = self.num_blocks
                step = -(-nb // num_levels)
                out = [min(num_levels, 1 + b // step) for b in range(nb)]
                out[-1] = num_levels
                return out
            raise ConfigError(f"model.load = {self.load!r}: expected a list of ints, \"linear\" or \"none\"")
        return [int(n) for n in self.load]


def _unset(value) -> bool:
    """Whether an optional recipe value is left out: TOML has no null, so `[]` stands for "not given"."""
    return isinstance(value, (list, tuple)) and len(value) == 0


@dataclass
class DiffusionConfig:
    """The recipe's [diffusion]: EDM noise scaling and schedule per level, and the context trick."""

    sigma_data: float = 0.5              # Standard deviation of the (scaled) data, EDM's sigma_d.
    p_mean: float | list[float] = -1.2   # Mean of log(sigma) in training (log-normal): one value, or one per level.
    p_std: float | list[float] = 1.2     # Std of log(sigma) in training: one value, or one per level.
    # Mean of log(sigma) at the first training step, moved linearly to p_mean by the last (train.steps): one
    # value, or one per level; [] = p_mean throughout. A base level can learn its layout first and texture last.
    p_mean_start: float | list[float] = field(default_factory=list)
    input_scale: float = 1.0             # b_0: input scaling of level 0.
    input_scale_decay: float = 0.75      # gamma: level l's clean signal is scaled by b_0 * gamma**l.
    context_sigma: float = 0.002         # Sigma at which finished lower levels are presented at inference.
    context_prob: float = 0.25           # Training share of samples whose lower levels sit at context_sigma.
    # That share at the first training step, moved linearly to context_prob by the last (train.steps); [] =
    # context_prob throughout. A short run can give level 0 most samples first, the upper levels clean context last.
    context_prob_start: float | list[float] = field(default_factory=list)
    cond_dropout: float = 0.1            # Probability of dropping the condition (classifier-free guidance).
    self_cond_prob: float = 0.9          # Probability of a self-conditioning pass (if model.self_condition).

    @property
    def ramped(self) -> bool:
        """Whether training's log-sigma mean moves over the run (`p_mean_start` given, not `[]`)."""
        return not _unset(self.p_mean_start)

    @property
    def context_ramped(self) -> bool:
        """Whether training's share of samples with clean context moves over the run (`context_prob_start` given)."""
        return not _unset(self.context_prob_start)

    def level_input_scale(self, level: int) -> float:
        """b_l = b_0 * gamma**l: exponentially smaller input scaling for finer levels."""
        return self.input_scale * self.input_scale_decay ** level


@dataclass
class TrainConfig:
    """The recipe's [train]: optimiser, batch, schedule, precision, compilation and checkpoints."""

    steps: int = 100_000                 # Total optimisation steps (0 with init_from: save the starting weights).
    batch_size: int = 768                # Global batch (all ranks, all accumulation rounds).
    grad_accum: int = 1                  # Micro-batches per optimisation step on each rank.
    optimizer: str = "lamb"              # "lamb" (the paper's) or "adamw".
    lr: float = 0.005                    # Peak learning rate.
    weight_decay: float = 0.01           # Decoupled weight decay (LAMB or AdamW).
    betas: tuple[float, float] = (0.9, 0.999)  # The optimiser's moment decay rates (beta1, beta2).
    eps: float = 1e-6                    # The optimiser's denominator epsilon.
    warmup_steps: int = 10_000           # Linear warm-up, then cosine decay to lr * min_lr_ratio.
    min_lr_ratio: float = 0.0            # Where the cosine decay ends, as a fraction of lr.
    grad_clip: float = 0.0               # Global-norm clipping (0 = off).
    ema_halflife_steps: float = 1000.0   # EMA half-life in steps (0 = the EMA is the weights; < 0 = no EMA).
    precision: str = "tf32"              # "fp32", "tf32" or "bf16" (autocast).
    compile: bool | str = False          # torch.compile the model and LAMB's step: true, or a mode ("reduce-overhead").
    compile_cache: str = ""              # File of torch.compile's caches: loaded before the first step, written after it.
    compile_scope: str = "model"         # What train.compile compiles: "model" (one graph) or "blocks" (each RIN block
                                         # and fusion once per shape: a shorter compile, slower GPU steps).
    noise_on: str = "device"             # Training noise drawn on the "device" (fast) or the "host" (same on CPU/GPU).
    seed: int = 0                        # Seed of the weights' initialisation, data order and training noise.
    device: str = "auto"                 # "auto", "cpu", "cuda".
    log_every: int = 10                  # Steps between stats lines.
    ckpt_every: int = 1000               # Steps between checkpoints.
    keep_last: int = 3                   # Checkpoints kept (0 = all).
    init_from: str = ""                  # Checkpoint to initialise matching weights from ("packaged": the packaged model).
    max_nonfinite_steps: int = 100       # Stop once this many of the last 2x as many steps were skipped (0 = never).


@dataclass
class SampleConfig:
    """The recipe's [sample]: sampler steps and schedule per level, guidance, batch and memory."""

    steps: int = 128                     # Sampler steps at level 0, halved per level.
    level_steps: list[int] = field(default_factory=list)  # Explicit per-level steps (overrides `steps`).
    sigma_min: float = 0.002             # Where every level's sampling schedule ends (EDM).
    sigma_max: float | list[float] = 80.0  # Where each level's sampling starts: one value, or one per level (coarse
    #                                      to fine): levels that add detail to a finished context are trained at
    #                                      lower noise and need not start as high (docs/method.md, section 9).
    rho: float = 7.0                     # Karras et al.'s schedule exponent: how densely steps crowd at low sigma.
    churn: float = 40.0                  # S_churn at stochastic levels.
    stochastic_levels: int = 1           # Levels (from 0) sampled with churn; the rest deterministic.
    heun_max_drop: float = 5.0           # No Heun correction on a step that lowers sigma more than this many times
    #                                      (only schedules of < ~16 steps have one; 0 = none skipped, Algorithm 2
    #                                      as published: docs/method.md, section 9).
    guidance: float | list[float] = 1.0  # Classifier-free guidance scale (1 = off): one value, or one per level
    #                                      (coarse to fine; as with level_steps, extra entries are unused).
    guidance_interval: list[float] = field(default_factory=list)  # [lo, hi]: guide only at lo < sigma <= hi
    #                                      (Kynkäänniemi et al. 2024); [] = at every sigma.
    guide_model: str = ""                # A model of level 0 alone that guides level 0 instead of the unconditional
    #                                      denoiser (autoguidance, Karras et al. 2024; scale: guidance[0]);
    #                                      "" = classifier-free guidance.
    batch_size: int = 16                 # Videos per sampler call.
    fps: float = 0.0                     # Output fps (0 = data.fps).
    context_cache_gib: float = 4.0       # Memory for a level's context computed once for all its steps (0 = off).


EVAL_CPU_BATCH = 8   # clips per I3D batch on a CPU (on a GPU: eval.batch_size)


@dataclass
class EvalConfig:
    """The recipe's [eval]: defaults of `hpdm eval` and of `hpdm eval-fvd` when --fake is a checkpoint."""

    num_clips: int = 2048                # Clips per side (`hpdm eval --num-clips`, `hpdm eval-fvd --num`).
    frames: int = 16                     # Frames per FVD clip (`hpdm eval-fvd --frames`; I3D needs >= 9).
    batch_size: int = 32                 # Clips per I3D batch on a GPU (`hpdm eval-fvd --batch`; the CPU uses 8).


@dataclass
class Recipe:
    """A whole TOML recipe: one section each, validated as a unit (`load_recipe`)."""

    data: DataConfig = field(default_factory=DataConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Recipe":
        """Check every value's range and the cross-field consistency; raise ConfigError naming the offending key."""
        self._check_ranges()
        p, m = self.pyramid, self.model
        for name, vec in (("pyramid.resolution", p.resolution), ("pyramid.patch", p.patch),
                          ("model.tokenizer", m.tokenizer)):
            if len(vec) != 3 or any(int(v) != v or v < 1 for v in vec):
                raise ConfigError(f"{name} = {list(vec)}: expected three positive integers [frames, height, width]")
        for axis, R, r in zip("fhw", p.resolution, p.patch):
            if R % r or not _is_pow2(R // r):
                raise ConfigError(
                    f"pyramid.patch = {list(p.patch)} does not divide pyramid.resolution = {list(p.resolution)} "
                    f"by a power of two along axis {axis}")
        for axis, r, t in zip("fhw", p.patch, m.tokenizer):
            if r % t:
                raise ConfigError(f"model.tokenizer = {list(m.tokenizer)} does not divide pyramid.patch = "
                                  f"{list(p.patch)} along axis {axis}")
        parse_overlap(p.overlap, "pyramid.overlap")
        L = p.num_levels
        load = m.resolved_load(L)
        if len(load) != m.num_blocks:
            raise ConfigError(f"model.load has {len(load)} entries but model.num_blocks = {m.num_blocks}")
        if any(n < 1 or n > L for n in load):
            raise ConfigError(f"model.load = {load}: every entry must lie in 1..{L} (the pyramid has {L} levels)")
        if max(load) != L:
            raise ConfigError(f"model.load = {load}: no block processes the last level; some entry must be {L}")
        for name, dim in (("model.interface_dim", m.interface_dim), ("model.latent_dim", m.latent_dim)):
            if dim % m.head_dim:
                raise ConfigError(f"{name} = {dim} is not a multiple of model.head_dim = {m.head_dim}")
        if p.offsets not in ("continuous", "grid", "tiles"):
            raise ConfigError(f"pyramid.offsets = {p.offsets!r}: expected \"continuous\", \"grid\" or \"tiles\"")
        odd = p.odd_half_tile_axis()
        if odd and p.offsets == "tiles":           # (any other recipe may still be sampled with another --overlap)
            raise ConfigError(f"pyramid.offsets = \"tiles\" trains on the tiles of pyramid.overlap = {p.overlap!r}, "
                              f"which start every half tile along {odd}, but pyramid.patch is odd there: drop "
                              f"{odd!r} from pyramid.overlap or use pyramid.offsets = \"grid\"")
        if self.data.image_fraction > 0 and not self.data.image_path:
            raise ConfigError(f"data.image_fraction = {self.data.image_fraction} asks for still images in every batch, "
                              f"but data.image_path is empty: give a prepared image dataset (hpdm prepare --images "
                              f"DIR OUT) or set data.image_fraction = 0")
        if m.fusion not in ("deep", "shallow", "none"):
            raise ConfigError(f"model.fusion = {m.fusion!r}: expected \"deep\", \"shallow\" or \"none\"")
        if m.fusion_edges and m.fusion != "deep":
            raise ConfigError(f"model.fusion_edges = true adds a term to deep context fusion, but model.fusion = "
                              f"{m.fusion!r}: set model.fusion = \"deep\" or model.fusion_edges = false")
        if m.pos_embed not in ("learned", "sincos", "fourier"):
            raise ConfigError(f"model.pos_embed = {m.pos_embed!r}: expected \"learned\", \"sincos\" or \"fourier\"")
        if m.pos_fixed_levels not in ("all", "base"):
            raise ConfigError(f"model.pos_fixed_levels = {m.pos_fixed_levels!r}: expected \"all\" or \"base\"")
        if m.pos_fixed_into not in ("tokens", "attention", "read"):
            raise ConfigError(f"model.pos_fixed_into = {m.pos_fixed_into!r}: expected \"tokens\", \"attention\" "
                              "or \"read\"")
        if m.pos_fixed_subtract is True and m.pos_fixed_into != "tokens":
            raise ConfigError(f"model.pos_fixed_subtract = true removes the fixed table from the tokens, but "
                              f"model.pos_fixed_into = {m.pos_fixed_into!r} keeps it out of them: set "
                              "model.pos_fixed_into = \"tokens\" or model.pos_fixed_subtract = false")
        fs = list(m.pos_fixed_sigma)
        if fs and (len(fs) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in fs)
                   or not 0 < fs[0] < fs[1]):
            raise ConfigError(f"model.pos_fixed_sigma = {fs}: expected [lo, hi] with 0 < lo < hi (the sigmas between "
                              "which the fixed position table fades in), or [] for the table at every sigma")
        if m.pos_embed == "learned":        # options of a fixed table that this model does not have
            scale = m.pos_fixed_scale
            for key, set_, default in (("pos_fixed_levels", m.pos_fixed_levels != "all", '"all"'),
                                       ("pos_fixed_scale", math.isfinite(scale) and scale != 1.0, "1"),
                                       ("pos_fixed_sigma", bool(fs), "[]"),
                                       ("pos_fixed_into", m.pos_fixed_into != "tokens", '"tokens"'),
                                       ("pos_fixed_trainable", m.pos_fixed_trainable is True, "false"),
                                       ("pos_fixed_subtract", m.pos_fixed_subtract is True, "false")):
                if set_:
                    value = getattr(m, key)
                    shown = str(value).lower() if isinstance(value, bool) else repr(value)
                    raise ConfigError(f"model.{key} = {shown} applies to a fixed position table, but "
                                      f"model.pos_embed = \"learned\" has none: set model.pos_embed = \"fourier\" "
                                      f"or model.{key} = {default}")
        if m.cond not in ("class", "text", "none"):
            raise ConfigError(f"model.cond = {m.cond!r}: expected \"class\", \"text\" or \"none\"")
        if m.text_whitening and m.cond != "text":
            raise ConfigError(f"model.text_whitening = true whitens text states, but model.cond = {m.cond!r}: set "
                              "model.cond = \"text\" or model.text_whitening = false")
        if m.adaptive_norm_interface and not m.adaptive_norm:
            raise ConfigError("model.adaptive_norm_interface = true needs model.adaptive_norm = true (both read the "
                              "same condition vector): set model.adaptive_norm = true")
        hidden = int(min(m.interface_dim, m.latent_dim) * m.mlp_ratio)
        if hidden < 1:
            raise ConfigError(f"model.mlp_ratio = {m.mlp_ratio}: gives an MLP of width {hidden}; "
                              "expected a ratio that gives at least 1 hidden unit")
        t = self.train
        if t.noise_on not in ("device", "host"):
            raise ConfigError(f"train.noise_on = {t.noise_on!r}: expected \"device\" or \"host\"")
        if t.precision not in ("fp32", "tf32", "bf16"):
            raise ConfigError(f"train.precision = {t.precision!r}: expected \"fp32\", \"tf32\" or \"bf16\"")
        if t.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device = {t.device!r}: expected \"auto\", \"cpu\" or \"cuda\" "
                              "(under torchrun each process takes the GPU of its local rank)")
        for key in ("p_mean", "p_std", "p_mean_start"):
            v = getattr(self.diffusion, key)
            if isinstance(v, (list, tuple)) and len(v) != L and (key != "p_mean_start" or self.diffusion.ramped):
                raise ConfigError(f"diffusion.{key} = {list(v)}: {len(v)} entries for {L} pyramid levels; give one "
                                  "number, or one per level (coarse to fine)")
        sm = self.sample
        if isinstance(sm.guidance, (list, tuple)) and len(sm.guidance) < L:
            raise ConfigError(f"sample.guidance = {list(sm.guidance)}: {len(sm.guidance)} entries for {L} pyramid "
                              "levels; give one number, or one per level (coarse to fine; as with "
                              "sample.level_steps, entries past the last level are unused)")
        gi = list(sm.guidance_interval)
        if gi and (len(gi) != 2 or not 0 <= gi[0] < gi[1]):
            raise ConfigError(f"sample.guidance_interval = {gi}: expected [lo, hi] with 0 <= lo < hi (the sigmas "
                              "between which guidance is applied), or [] to guide at every sigma")
        if sm.level_steps and len(sm.level_steps) < L:
            raise ConfigError(f"sample.level_steps = {list(sm.level_steps)}: {len(sm.level_steps)} entries for "
                              f"{L} pyramid levels; give one per level (or an empty list to use sample.steps)")
        if isinstance(t.compile, str) and t.compile not in COMPILE_MODES:
            raise ConfigError(f"train.compile = {t.compile!r}: expected true, false or a torch.compile mode: "
                              + ", ".join(f'"{m}"' for m in COMPILE_MODES))
        if t.compile_scope not in COMPILE_SCOPES:
            raise ConfigError(f"train.compile_scope = {t.compile_scope!r}: expected "
                              + " or ".join(f'"{m}"' for m in COMPILE_SCOPES))
        if self.train.optimizer not in ("lamb", "adamw"):
            raise ConfigError(f"train.optimizer = {self.train.optimizer!r}: expected \"lamb\" or \"adamw\"")
        if self.data.short_caption_prob > 0 and not str(self.data.path).startswith("synthetic:"):
            raise ConfigError(f"data.short_caption_prob = {self.data.short_caption_prob} needs data.path = "
                              "\"synthetic:shapes\" (it drops the shapes captions' background phrase): set it to 0")
        if self.data.synthetic_split not in ("all", "train", "heldout"):
            raise ConfigError(f"data.synthetic_split = {self.data.synthetic_split!r}: expected \"all\", \"train\" "
                              "or \"heldout\"")
        if isinstance(sm.sigma_max, (list, tuple)) and len(sm.sigma_max) < L:
            raise ConfigError(f"sample.sigma_max = {list(sm.sigma_max)}: {len(sm.sigma_max)} entries for {L} pyramid "
                              "levels; give one number, or one per level (coarse to fine)")
        for v in (sm.sigma_max if isinstance(sm.sigma_max, (list, tuple)) else [sm.sigma_max]):
            if sm.sigma_min > v:
                raise ConfigError(f"sample.sigma_min = {sm.sigma_min} is above sample.sigma_max = {sm.sigma_max}")
        return self

    def _check_ranges(self) -> None:
        """Every number of the recipe finite and within its range (counts >= their minimum, probabilities in [0, 1])."""
        D, m, d, t, s, e = self.data, self.model, self.diffusion, self.train, self.sample, self.eval
        pos, nonneg, prob = dict(lo=0, lo_open=True), dict(lo=0), dict(lo=0, hi=1)

        def ints(lo: int) -> dict:
            return dict(lo=lo, integer=True)
        for key, value, rule in (
            ("data.fps", D.fps, dict(lo=MIN_FPS, hi=MAX_FPS)),
            ("data.image_fraction", D.image_fraction, prob),
            ("data.num_workers", D.num_workers, ints(0)),
            ("data.synthetic_videos", D.synthetic_videos, ints(1)),
            ("data.short_caption_prob", D.short_caption_prob, prob),
            ("model.channels", m.channels, ints(1)),
            ("model.interface_dim", m.interface_dim, ints(1)),
            ("model.latent_dim", m.latent_dim, ints(1)),
            ("model.num_latents", m.num_latents, ints(1)),
            ("model.num_blocks", m.num_blocks, ints(1)),
            ("model.compute_layers", m.compute_layers, ints(1)),
            ("model.head_dim", m.head_dim, ints(1)),
            ("model.mlp_ratio", m.mlp_ratio, pos),
            ("model.pos_fixed_scale", m.pos_fixed_scale, pos),
            ("model.num_classes", m.num_classes, ints(1)),
            ("model.text_dim", m.text_dim, ints(1)),
            ("model.text_tokens", m.text_tokens, ints(1)),
            ("diffusion.sigma_data", d.sigma_data, pos),
            *(((f"diffusion.p_mean[{i}]", v, {}) for i, v in enumerate(d.p_mean)) if isinstance(d.p_mean, (list, tuple))
              else [("diffusion.p_mean", d.p_mean, {})]),
            *(((f"diffusion.p_mean_start[{i}]", v, {}) for i, v in enumerate(d.p_mean_start))
              if isinstance(d.p_mean_start, (list, tuple)) else [("diffusion.p_mean_start", d.p_mean_start, {})]),
            *(((f"diffusion.p_std[{i}]", v, nonneg) for i, v in enumerate(d.p_std)) if isinstance(d.p_std, (list, tuple))
              else [("diffusion.p_std", d.p_std, nonneg)]),
            ("diffusion.input_scale", d.input_scale, pos),
            ("diffusion.input_scale_decay", d.input_scale_decay, pos),
            ("diffusion.context_sigma", d.context_sigma, pos),
            ("diffusion.context_prob", d.context_prob, prob),
            *([("diffusion.context_prob_start", d.context_prob_start, prob)] if d.context_ramped else []),
            ("diffusion.cond_dropout", d.cond_dropout, prob),
            ("diffusion.self_cond_prob", d.self_cond_prob, prob),
            ("train.steps", t.steps, dict(ints(0), hi=MAX_TRAIN_STEPS)),
            ("train.batch_size", t.batch_size, dict(ints(1), hi=MAX_BATCH)),
            ("train.grad_accum", t.grad_accum, ints(1)),
            ("train.lr", t.lr, pos),
            ("train.weight_decay", t.weight_decay, nonneg),
            ("train.betas[0]", t.betas[0], dict(lo=0, hi=1, hi_open=True)),
            ("train.betas[1]", t.betas[1], dict(lo=0, hi=1, hi_open=True)),
            ("train.eps", t.eps, nonneg),
            ("train.warmup_steps", t.warmup_steps, ints(0)),
            ("train.min_lr_ratio", t.min_lr_ratio, prob),
            ("train.grad_clip", t.grad_clip, dict(nonneg, note=" (0 = no clipping)")),
            ("train.ema_halflife_steps", t.ema_halflife_steps, {}),
            ("train.seed", t.seed, dict(lo=0, hi=2 ** 32 - 1, integer=True)),
            ("train.log_every", t.log_every, ints(1)),
            ("train.ckpt_every", t.ckpt_every, ints(1)),
            ("train.keep_last", t.keep_last, dict(ints(0), note=" (0 = keep every checkpoint)")),
            ("train.max_nonfinite_steps", t.max_nonfinite_steps, dict(ints(0), note=" (0 = never stop)")),
            ("sample.steps", s.steps, dict(ints(1), hi=MAX_STEPS)),
            *((f"sample.level_steps[{i}]", v, dict(ints(1), hi=MAX_STEPS)) for i, v in enumerate(s.level_steps)),
            ("sample.sigma_min", s.sigma_min, pos),
            *(((f"sample.sigma_max[{i}]", v, pos) for i, v in enumerate(s.sigma_max))
              if isinstance(s.sigma_max, (list, tuple)) else [("sample.sigma_max", s.sigma_max, pos)]),
            ("sample.rho", s.rho, pos),
            ("sample.churn", s.churn, nonneg),
            ("sample.heun_max_drop", s.heun_max_drop, dict(nonneg, note=" (0 = Heun's correction on every step)")),
            ("sample.context_cache_gib", s.context_cache_gib, nonneg),
            ("sample.stochastic_levels", s.stochastic_levels, ints(0)),
            *((f"sample.guidance[{i}]" if isinstance(s.guidance, (list, tuple)) else "sample.guidance", v,
               dict(lo=0, hi=MAX_GUIDANCE, note=" (1 = no guidance)"))
              for i, v in enumerate(s.guidance if isinstance(s.guidance, (list, tuple)) else [s.guidance])),
            ("sample.batch_size", s.batch_size, ints(1)),
            ("sample.fps", s.fps, dict(nonneg, hi=MAX_FPS, note=" (0 = data.fps)")),
            ("eval.num_clips", e.num_clips, dict(ints(1), hi=MAX_VIDEOS)),
            ("eval.frames", e.frames, ints(1)),
            ("eval.batch_size", e.batch_size, ints(1)),
        ):
            check_range(key, value, **rule)
