"""Hierarchical overlapped sampling: generate a video level by level, each level tile by tile.

Level l is the whole video at `pyramid.level_resolution(l)`, a canvas in the level's scaled space
y_l = b_l * pixels (b_l = `diffusion.level_input_scale(l)`). It starts as sigma_max * noise and is
driven to sigma 0 by the EDM sampler (`edm_sampler`), with churn on the first
`sample.stochastic_levels` levels. At every denoiser evaluation every tile (`tiles`) is cropped
from the canvas, denoised by the network (tiles batched, `tile_batch` per forward) and the tiles'
outputs D are averaged on the canvas (MultiDiffusion) before the sampler step. With shifted tiles
(overlap "shift-hw", docs/method.md) an evaluation uses one subset of them, the next subset on
the next evaluation (`tiles.shift_phases`), and every subset covers the canvas. Stochastic noise
(initial and churn) is drawn for the whole canvas, never per tile. Finished pixels are
clamp(x / b_l, -1, 1).

Context. A level-l tile reads, through context fusion, its ancestor tiles on the finished levels
k < l (one chain of containing tiles, `tiles.LevelTiles.ancestors`), shown at
sigma = `diffusion.context_sigma`: input b_k * pixels_k + context_sigma * eps_k, with eps_k drawn
once per level and sample on the whole level-k canvas, then cropped per tile. With `cache=True`
the network runs once over all tiles of a finished level (`collect=True`) and keeps, per tile,
the activations of the blocks that finer levels read (`model.network.reading_blocks`, the one
statement of that rule; on the device, or in pinned CPU memory
with `offload=True`); every later denoiser call then runs only level l (`lo=l`) on a
`LevelContext` gathered from these caches. The context those activations give a level-l tile
(eq. 7: the lower levels sampled at its tokens, then projected by each fusion as eq. 9 takes it)
does not change while level l is denoised, so it is computed once per tile at the start of the
level and held for all its evaluations when it fits in `sample.context_cache_gib` (otherwise
recomputed per call; the same video). Shallow fusion needs no activations: its context is
the parent tile's network input c_in(context_sigma; b_k) * (b_k pixels_k + context_sigma eps_k),
recomputed per call (a crop). With `cache=False` every call runs levels 0..l jointly on the tile
chains (lower levels at the context sigma, their outputs discarded). Both give the same video.

Classifier-free guidance doubles the rows: rows [0, B) carry the condition, rows [B, 2B) drop it
(keep=False); D = D_u + w_l (D_c - D_u) on the merged canvas. The scale may differ per level
(`level_guidance`), e.g. guidance at the base level, which lays out the clip, and none on the
finer levels that add detail to it. Lower-level activations depend on the condition, so a
level's caches and latents hold both halves while any later level is guided; a level with w = 1
whose successors are all unguided runs on the conditional rows only (`_rows`), at half the cost.
With `sample.guidance_interval = [lo, hi]` the guided combination is used only at lo < sigma <= hi
and D = D_c elsewhere (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval").

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"). Given a
`guide` network, a smaller or shorter-trained model of the base level alone (one pyramid level at
level 0's resolution, tiled alike, the same condition), level 0 is guided by it instead of by the
unconditional rows: D = D_g + w_0 (D_c - D_g), with D_g the guide's *conditional* denoiser on the
same canvas (its own self-conditioning latents; evaluated only where guidance applies). The
errors the two models share cancel in the difference, which points from the weaker model's
vaguer sample towards the stronger one's: it sharpens what the model draws without the
condition's pull that makes classifier-free guidance exaggerate (docs/method.md, "Autoguidance").

Self-conditioning (`model.self_condition`, RIN's latent self-conditioning). Every evaluation of a
tile also returns its latents, and the next evaluation of that tile is given them (the first one
of a level gets none, as in training's plain passes; with shifted tiles, so does any evaluation
some of whose tiles have not been evaluated yet); finished lower levels keep each tile's latest
latents, which their cache (or, with `cache=False`, their recomputation) is given.

Randomness. A sample depends only on its seed: each seed gets its own CPU generators, one stream
per (seed, level, purpose) derived with NumPy's SeedSequence: purpose 0 draws the level's sampler
noise, purpose 1 its context noise eps_l. So level l's noise does not depend on how earlier levels
were made (their step counts, or whether they were generated or given as `fixed`): upscaling a
run's own level 0 reproduces that run. On a CPU the canvases are drawn from these generators; on
a GPU each canvas comes from a GPU generator seeded by the next number of the seed's CPU stream
(no host draw and copy of whole canvases: the same video on every GPU run, other noise than a
CPU run).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..config import DiffusionConfig, ModelConfig, PyramidConfig, SampleConfig, TILE_BATCH
from ..device import randn_on
from ..diffusion.edm import c_in, denoise, input_scales
from ..model.network import LevelContext, reading_blocks, token_grid
from .edm_sampler import edm_sample, edm_sigmas, network_evaluations
from ..pyramid.tiles import LevelTiles, build_tiles, chain_offsets, parse_overlap, shift_phases, tile_counts

Progress = Callable[[int, int, int], None]

_SAMPLER_STREAM, _CONTEXT_STREAM = 0, 1


def seed_generator(seed: int, level: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, level, stream): independent streams derived with SeedSequence."""
    state = np.random.SeedSequence([int(seed) % 2 ** 64, level, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[1]) << 31) ^ int(state[0]))


def halved_steps(steps: int, levels: int) -> list[int]:
    """Per-level steps from one count: `steps` at level 0, halved at each level above (at least 1).

    The default of `sample.steps` and of a single `--steps` value (docs/method.md, section 9).
    """
    return [max(1, steps >> l) for l in range(levels)]


def level_steps(sample: SampleConfig, levels: int, steps: Optional[Sequence[int]] = None) -> list[int]:
    """Sampler steps per level: `steps`, else `sample.level_steps`, else `sample.steps` halved per level (>= 1)."""
    given = list(steps) if steps is not None else list(sample.level_steps)
    if given:
        if len(given) < levels:
            raise ValueError(f"{len(given)} per-level step counts given for {levels} levels")
        out = [int(s) for s in given[:levels]]
    else:
        out = halved_steps(int(sample.steps), levels)
    if any(s < 1 for s in out):
        raise ValueError(f"per-level steps = {out}: every level needs at least one step")
    return out


def per_level(value, levels: int, what: str) -> list[float]:
    """One number for every level, or a list of at least one per level -> a list of `levels` floats."""
    if isinstance(value, (list, tuple)):
        if len(value) < levels:
            raise ValueError(f"{len(value)} per-level {what} given for {levels} levels")
        return [float(w) for w in value[:levels]]
    return [float(value)] * levels


def level_guidance(guidance, levels: int) -> list[float]:
    """Classifier-free guidance scale per level: one number for every level, or a list of one per level."""
    return per_level(guidance, levels, "guidance scales")


def check_guide(net, guide) -> None:
    """Refuse (ValueError) a guide network that cannot guide `net`'s level 0: it must be that level alone.

    One pyramid level at level 0's resolution, the same patch (so the same tiles), channels and
    condition (type, and the text encoder's width and tokens or the number of classes).
    """
    p, g = net.pyramid, guide.pyramid
    if g.num_levels != 1:
        raise ValueError(f"the guide model has {g.num_levels} pyramid levels; it must be a base level alone "
                         f"(one level at {list(p.level_resolution(0))})")
    if tuple(g.resolution) != tuple(p.level_resolution(0)) or tuple(g.patch) != tuple(p.patch):
        raise ValueError(f"the guide model's level is {list(g.resolution)} in patches of {list(g.patch)}; "
                         f"level 0 here is {list(p.level_resolution(0))} in patches of {list(p.patch)}")
    m, h = net.cfg, guide.cfg
    per_cond = {"text": ["text_encoder", "text_dim", "text_tokens"], "class": ["num_classes"]}
    keys = ["channels", "cond"] + per_cond.get(m.cond, [])
    for k in keys:
        if getattr(m, k) != getattr(h, k):
            raise ValueError(f"the guide model's model.{k} = {getattr(h, k)!r}, the model's {getattr(m, k)!r}: "
                             "the guide must take the same condition")


def cache_bytes(pyr: PyramidConfig, m: ModelConfig, overlap: Optional[str] = None, batch: int = 1, *,
                bytes_per_value: int = 4) -> list[int]:
    """Activation-cache size per level: tiles x tokens x interface dim x cached blocks x bytes x batch.

    `batch` counts rows: samples, times 2 with classifier-free guidance. The last level is never
    cached (nothing reads it); shallow and no fusion cache nothing.
    """
    ov = pyr.overlap if overlap is None else overlap
    tokens = math.prod(token_grid(pyr, m))
    return [math.prod(tile_counts(pyr, k, ov)) * tokens * m.interface_dim
            * len(reading_blocks(m, pyr.num_levels, k)) * bytes_per_value * batch for k in range(pyr.num_levels)]


@dataclass
class SampleResult:
    """Finished levels and where the time went."""

    videos: list[torch.Tensor]                         # per level: [B, C, F_l, H_l, W_l] in [-1, 1]
    seconds: list[float]                               # per level: wall time (generation + its context/cache)
    cache_seconds: list[float]                         # per level: share of `seconds` spent on what does not
    #                                                    scale with steps (its cache, its context terms)
    steps: list[int] = field(default_factory=list)     # sampler steps per level (0 for a fixed level)
    cache_bytes: list[int] = field(default_factory=list)   # per level: activation-cache bytes actually held
    context_bytes: list[int] = field(default_factory=list)  # per level: context-term bytes held while it ran


@dataclass
class _Chunk:
    """One forward's worth of (row, tile) pairs of a level, with everything indexed once."""

    rows: tuple[int, int]                  # [r0, r1) of the row-major (guided sample, tile) order
    g: torch.Tensor                        # [n] guided-sample row (cond half first)
    b: torch.Tensor                        # [n] sample (g mod B)
    t: torch.Tensor                        # [n] tile on this level
    anc: list                              # per lower level k: [n] ancestor tile
    cache_rows: list                       # per lower level k: [n] row into level k's cache (storage device)
    offsets: torch.Tensor                  # [n, l+1, 3]
    cond: Optional[torch.Tensor]
    keep: Optional[torch.Tensor]
    n: int                                 # real rows: the first n (the rest repeat the last row, `compile`)
    span: bool = False                     # every tile in order, unpadded: held context rows are rows[0]..rows[1]


@dataclass
class _Run:
    """State of one `sample` call."""

    B: int
    G: int
    guidance: list                         # per level: guidance scale
    generated: list                        # the levels this call generates (not fixed)
    cond: Optional[torch.Tensor]           # [G, ...] condition per row
    keep: Optional[torch.Tensor]           # [G] bool, None without guidance
    ctx_in: dict = field(default_factory=dict)     # level -> scaled noisy context canvas [B, C, ...]
    caches: dict = field(default_factory=dict)     # level -> {block: [G * T_k, N, d]}
    latents: dict = field(default_factory=dict)    # level -> [G * T_k, M, d_z] latest latents (self-conditioning)
    seen: dict = field(default_factory=dict)       # level -> [T_k] bool (host): the tile has latents in `latents`
    context: dict = field(default_factory=dict)    # block -> [G * T_l, N, d] the level's context terms (eq. 7, 9)
    auto: frozenset = frozenset()                  # levels guided by the guide model (autoguidance), not by CFG


class HierarchicalSampler:
    """Level-by-level, tile-by-tile sampler of an HPDMNet (MultiDiffusion, context caching, CFG)."""

    def __init__(self, net, diffusion: DiffusionConfig, sample: SampleConfig, device=None, *,
                 overlap: Optional[str] = None, tile_batch: int = TILE_BATCH, cache: bool = True, offload: bool = False,
                 autocast: Optional[torch.dtype] = None, dtype: torch.dtype = torch.float32,
                 compile: bool = False, guide=None):
        """`net` is an HPDMNet (its `pyramid` and `cfg` give the levels and the model); `diffusion` and
        `sample` are the recipe's sections the sampler reads (noise scaling, context sigma; steps, guidance).
        `guide` (an HPDMNet of level 0 alone, see `check_guide`) guides level 0 instead of its
        unconditional rows (autoguidance, above).

        `autocast` (e.g. torch.bfloat16) runs the network under autocast and holds the activation
        cache at that precision. `compile` runs the network through `torch.compile`, every forward
        padded to a power of two of rows, at most `tile_batch` (the chunk repeats its last row; the
        extra outputs are dropped), so that a level compiles once or twice (full chunks, the last
        one) for denoising and for its cache, and a level of few tiles (the base level: one per
        video) is not padded to a whole tile batch: worth it for many videos, not one.
        """
        self.net = net
        self.compiled = bool(compile)
        if self.compiled:
            import torch._dynamo as dynamo
            # One graph per (level, collect, padded row count): allow every power of two up to
            # tile_batch, and the caller's shapes, without falling back to eager.
            key = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
            buckets = max(1, int(tile_batch)).bit_length() + 1
            setattr(dynamo.config, key, max(getattr(dynamo.config, key), 2 * buckets * net.pyramid.num_levels + 8))
            self.net = torch.compile(net, dynamic=False)
        self.pyramid, self.model = net.pyramid, net.cfg
        self.diffusion, self.sample_cfg = diffusion, sample
        self.dtype = dtype                      # canvases, noise and offsets (float64 for reference runs)
        if device is None:
            p = next(iter(net.parameters()), None) if hasattr(net, "parameters") else None
            device = p.device if p is not None else "cpu"
        self.device = torch.device(device)
        self.overlap = parse_overlap(self.pyramid.overlap if overlap is None else overlap)
        if tile_batch < 1:
            raise ValueError(f"tile_batch = {tile_batch}: must be >= 1")
        self.tile_batch = int(tile_batch)
        self.cache = bool(cache)
        self.offload = bool(offload)
        self.autocast = autocast
        self.fusion = self.model.fusion
        self.num_levels = self.pyramid.num_levels
        host_tiles = build_tiles(self.pyramid, self.overlap)
        self.chain_offsets = [chain_offsets(host_tiles, l).to(self.device, dtype) for l in range(self.num_levels)]
        self.tiles: list[LevelTiles] = [t.to(self.device) for t in host_tiles]
        # Per level, the tile subsets (and their coverage) of successive denoiser calls: all tiles on every
        # call, or with shifted tiles (docs/method.md, "Shifted tiles") a cycle of half-tile shifts. The
        # host copies of the subsets keep the bookkeeping of which tiles have latents free of device syncs.
        host_phases = [shift_phases(t, self.overlap) for t in host_tiles]
        self.phases = [[(i.to(self.device), c.to(self.device)) for i, c in p] for p in host_phases]
        self._phase_tiles = [[i for i, _ in p] for p in host_phases]
        # b_0..b_l per level l, as `denoise` takes them (c_in normalises the scaled data per level).
        self._scales = [input_scales(diffusion, range(l + 1), self.device).to(dtype)
                        for l in range(self.num_levels)]
        self._storage = torch.device("cpu") if self.offload else self.device
        self._pin = self.offload and self.device.type == "cuda"
        self.self_cond = bool(self.model.self_condition)
        self.guide_sampler = None
        if guide is not None:
            check_guide(net, guide)
            plain = dataclasses.replace(sample, guidance=1.0, guidance_interval=[])
            self.guide_sampler = HierarchicalSampler(guide, diffusion, plain, self.device, overlap=overlap,
                                                     tile_batch=tile_batch, cache=cache, offload=offload,
                                                     autocast=autocast, dtype=dtype, compile=compile)

    # ----------------------------------------------------------------------------------------
    def schedule(self, level: int, steps: int) -> tuple[torch.Tensor, float]:
        """Level `level`'s EDM noise levels over `steps` steps and its churn (0 above `sample.stochastic_levels`)."""
        sc = self.sample_cfg
        sigma_max = per_level(sc.sigma_max, self.num_levels, "sigma_max values")[level]
        return edm_sigmas(steps, sc.sigma_min, sigma_max, sc.rho), (sc.churn if level < sc.stochastic_levels else 0.0)

    def evaluations(self, level: int, steps: int) -> int:
        """Denoiser calls that sampling level `level` in `steps` steps makes (`network_evaluations`)."""
        sigmas, churn = self.schedule(level, steps)
        return network_evaluations(sigmas, churn, max_drop=self.sample_cfg.heun_max_drop)

    def sample(self, seeds: Sequence[int], cond=None, *, guidance=None,
               levels: Optional[int] = None, steps: Optional[Sequence[int]] = None,
               fixed: Optional[Mapping[int, torch.Tensor]] = None,
               progress: Optional[Progress] = None) -> SampleResult:
        """Generate levels 0..levels-1 for every seed; `fixed` levels are taken as given instead of generated.

        `guidance` is one scale or one per level (default `sample.guidance`).
        """
        dev, d, sc = self.device, self.diffusion, self.sample_cfg
        seeds = [int(s) for s in seeds]
        B = len(seeds)
        if B == 0:
            raise ValueError("no seeds given")
        n_levels = self.num_levels if levels is None else int(levels)
        if not 1 <= n_levels <= self.num_levels:
            raise ValueError(f"levels = {levels}: expected 1..{self.num_levels}")
        fixed = dict(fixed or {})
        for k in fixed:
            if not 0 <= k < self.num_levels:
                raise ValueError(f"fixed level {k} outside 0..{self.num_levels - 1}")
        nsteps = level_steps(sc, n_levels, steps)
        generated = [l for l in range(n_levels) if l not in fixed]
        w = level_guidance(sc.guidance if guidance is None else guidance, self.num_levels)
        auto = frozenset({0}) if self.guide_sampler is not None and 0 in generated and w[0] != 1.0 else frozenset()
        guided = (cond is not None and self.model.cond != "none"
                  and any(w[l] != 1.0 and l not in auto for l in generated))
        run = self._start(seeds, cond, w, guided, generated)
        run.auto = auto

        videos, seconds, cache_seconds, used, held, ctx_held = [], [], [], [], [], []
        C = self.model.channels
        with torch.no_grad(), self._autocast():
            for l in range(n_levels):
                t0 = self._clock()
                shape = (C, *self.tiles[l].resolution)
                b_l = d.level_input_scale(l)
                t_ctx = 0.0
                if l in fixed:
                    pixels = fixed[l].to(dev, self.dtype)
                    if tuple(pixels.shape) != (B, *shape):
                        raise ValueError(f"fixed level {l} has shape {tuple(pixels.shape)}, expected {(B, *shape)}")
                    used.append(0)
                    ctx_held.append(0)
                else:
                    gens = [seed_generator(s, l, _SAMPLER_STREAM) for s in seeds]
                    sigmas, churn = self.schedule(l, nsteps[l])
                    cb = (lambda i, n, _l=l: progress(_l, i, n)) if progress is not None else None
                    c0 = self._clock()
                    ctx_held.append(self._hold_context(run, l))
                    t_ctx = self._clock() - c0
                    x = edm_sample(self._level_denoiser(run, l), self._noise(gens, shape), sigmas,
                                   churn=churn, max_drop=sc.heun_max_drop, callback=cb)
                    run.context = {}
                    pixels = (x / b_l).clamp(-1.0, 1.0)
                    used.append(nsteps[l])
                videos.append(pixels)
                t_cache = 0.0
                if any(k > l for k in generated):               # a later generated level reads this one
                    gens = [seed_generator(s, l, _CONTEXT_STREAM) for s in seeds]
                    eps = self._noise(gens, shape)()
                    run.ctx_in[l] = b_l * pixels + d.context_sigma * eps
                    if self.cache and self.fusion == "deep":
                        c0 = self._clock()
                        run.caches[l] = self._build_cache(run, l, [k for k in generated if k > l])
                        t_cache = self._clock() - c0
                held.append(sum(t.numel() * t.element_size() for t in run.caches.get(l, {}).values()))
                seconds.append(self._clock() - t0)
                cache_seconds.append(t_cache + t_ctx)
        return SampleResult(videos, seconds, cache_seconds, used, held, ctx_held)

    # ----------------------------------------------------------------------------------------
    def _start(self, seeds, cond, w, guided, generated) -> _Run:
        B = len(seeds)
        if cond is not None:
            cond = torch.as_tensor(cond)
            if cond.shape[0] != B:
                raise ValueError(f"condition batch {cond.shape[0]} != number of seeds {B}")
            cond = cond.to(self.device)
        keep = None
        if guided:
            cond = torch.cat([cond, cond])
            keep = torch.cat([torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)]).to(self.device)
        return _Run(B=B, G=2 * B if guided else B, guidance=w, generated=generated, cond=cond, keep=keep)

    def _autocast(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _noise(self, gens: list, shape: tuple) -> Callable[[], torch.Tensor]:
        """Standard normal canvases [B, *shape], each sample from its own generator (see Randomness above)."""
        dev = self.device
        if dev.type == "cpu":
            def draw():
                return torch.stack([torch.randn(shape, generator=g, dtype=self.dtype) for g in gens])
        else:
            def draw():
                return torch.stack([randn_on(dev, shape, g, self.dtype) for g in gens])
        return draw

    def _rows(self, run: _Run, levels: Sequence[int]) -> int:
        """Rows to evaluate for what `levels` will read: both halves (G) if any of them uses CFG, else B."""
        return run.G if any(run.guidance[k] != 1.0 and k not in run.auto for k in levels) else run.B

    def padded_rows(self, n: int) -> int:
        """Rows a compiled forward of `n` tiles runs: the next power of two, at most `tile_batch`."""
        return min(self.tile_batch, 1 << max(0, n - 1).bit_length())

    def _chunks(self, run: _Run, level: int, rows: int, tiles: Optional[torch.Tensor] = None) -> list[_Chunk]:
        """Split `rows` guided samples x the level's `tiles` (default: all) into forwards of <= `tile_batch` tiles."""
        lt = self.tiles[level]
        T = lt.num_tiles if tiles is None else tiles.numel()
        total = rows * T
        out = []
        for r0 in range(0, total, self.tile_batch):
            r1 = min(total, r0 + self.tile_batch)
            rows = torch.arange(r0, r1, device=self.device)
            pad = self.padded_rows(r1 - r0) - (r1 - r0) if self.compiled else 0   # few shapes per level
            if pad:
                rows = torch.cat([rows, rows[-1:].expand(pad)])
            g, t = rows // T, rows % T
            if tiles is not None:
                t = tiles[t]
            anc = [lt.ancestors[t, k] for k in range(level)]
            cache_rows = [(g * self.tiles[k].num_tiles + a).to(self._storage) for k, a in enumerate(anc)]
            out.append(_Chunk(
                rows=(r0, r1), g=g, b=g % run.B, t=t, anc=anc, cache_rows=cache_rows,
                offsets=self.chain_offsets[level][t],
                cond=None if run.cond is None else run.cond[g],
                keep=None if run.keep is None else run.keep[g], n=r1 - r0, span=tiles is None and not pad))
        return out

    def _context(self, run: _Run, level: int, ch: _Chunk) -> Optional[LevelContext]:
        """The LevelContext of a chunk's tiles: cached lower activations (deep) or the parent's input (shallow)."""
        if level == 0 or self.fusion == "none":
            return None
        if run.context:                                                  # computed once for the level
            if ch.span:                   # a view: no copy of ~1 GiB a chunk at 64x256² (the terms are only read)
                r0, r1 = ch.rows
                return LevelContext(terms={b: c[r0:r1].to(self.device, non_blocking=True)
                                           for b, c in run.context.items()})
            rows = (ch.g * self.tiles[level].num_tiles + ch.t).to(self._storage)
            return LevelContext(terms={b: c.index_select(0, rows).to(self.device, non_blocking=True)
                                       for b, c in run.context.items()})
        if self.fusion == "shallow":
            k = level - 1
            sig = torch.tensor(self.diffusion.context_sigma, device=self.device, dtype=self.dtype)
            crop = self.tiles[k].gather(run.ctx_in[k], ch.b, ch.anc[k])
            b_k = self._scales[level][k]
            return LevelContext(pixels=c_in(sig, self.diffusion.sigma_data, b_k) * crop)
        acts = {}
        for blk in reading_blocks(self.model, self.num_levels, level - 1):   # they fuse context into `level`
            acts[blk] = [run.caches[k][blk].index_select(0, ch.cache_rows[k]).to(self.device, non_blocking=True)
                         for k in range(level)]
        return LevelContext(acts=acts)

    def _self_cond_args(self, run: _Run, levels: Sequence[int], level: int, ch: _Chunk,
                        latents_out: Optional[torch.Tensor], own: Optional[bool] = None) -> dict:
        """The network's self-conditioning arguments for a chunk ({} for a model without self-conditioning).

        self_cond: per present level, its rows' latest latents or None. Level `level`'s are those of
        the latest evaluation of the same tile (RIN's latent self-conditioning at inference), if `own`
        (default: if every tile of the level has been evaluated); a finished lower level's are its
        last evaluation's, read at the ancestor tile, once every one of its tiles has latents; None
        overall when nothing has been evaluated yet. return_latents when the caller keeps them.
        """
        if not self.self_cond:
            return {}
        out = []
        for k in levels:
            lat = run.latents.get(k)
            seen = run.seen.get(k)
            use = own if k == level and own is not None else seen is not None and bool(seen.all())
            if lat is not None and use:
                rows = ch.g * self.tiles[k].num_tiles + (ch.t if k == level else ch.anc[k])
                out.append(lat.index_select(0, rows))
            else:
                out.append(None)
        return {"self_cond": None if all(v is None for v in out) else out, "return_latents": latents_out is not None}

    def _eval(self, run: _Run, level: int, ch: _Chunk, x: torch.Tensor, sigma: float, collect: bool = False,
              latents_out: Optional[torch.Tensor] = None, own: Optional[bool] = None):
        """Denoise one chunk's tiles of canvas x at `sigma`: D [n, C, r...] (plus collected activations).

        With `latents_out` [G * T, M, d_z], the chunk's latents of `level` are written to its rows
        (row g * T + tile); `own` as in `_self_cond_args`.
        """
        d = self.diffusion
        xt = self.tiles[level].gather(x, ch.b, ch.t)
        n = xt.shape[0]
        if self.cache or level == 0:
            sig = torch.full((n, 1), float(sigma), device=self.device, dtype=self.dtype)
            res = denoise(self.net, xt[:, None], sig, ch.offsets, ch.cond, ch.keep, sigma_data=d.sigma_data,
                          input_scale=self._scales[level][level:], lo=level, context=self._context(run, level, ch),
                          collect=collect, **self._self_cond_args(run, [level], level, ch, latents_out, own))
            index = 0
        else:
            lower = [self.tiles[k].gather(run.ctx_in[k], ch.b, ch.anc[k]) for k in range(level)]
            xs = torch.stack(lower + [xt], dim=1)
            sig = torch.full((n, level + 1), d.context_sigma, device=self.device, dtype=self.dtype)
            sig[:, level] = float(sigma)
            res = denoise(self.net, xs, sig, ch.offsets, ch.cond, ch.keep, sigma_data=d.sigma_data,
                          input_scale=self._scales[level], collect=collect,
                          **self._self_cond_args(run, range(level + 1), level, ch, latents_out, own))
            index = level
        if latents_out is not None:
            rows = ch.g[:ch.n] * self.tiles[level].num_tiles + ch.t[:ch.n]
            latents_out.index_copy_(0, rows, res.latents[:ch.n, index].to(latents_out.dtype))
        return _real_rows(res, index, level, collect, ch.n)

    def _level_denoiser(self, run: _Run, level: int) -> Callable[[torch.Tensor, float], torch.Tensor]:
        """D(x; sigma) on the whole level canvas [B, C, ...]: the call's tiles denoised, merged, guided."""
        lt = self.tiles[level]
        # This level's latents and uncond rows are read by later levels' uncond rows: keep both halves
        # while this level or a later one is guided.
        G = self._rows(run, [k for k in run.generated if k >= level])
        phases = self.phases[level]
        chunks = [self._chunks(run, level, G, None if len(phases) == 1 else tiles) for tiles, _ in phases]
        B, w = run.B, run.guidance[level]
        lo, hi = self.sample_cfg.guidance_interval or (0.0, math.inf)
        calls = [0]
        seen = run.seen[level] = torch.zeros(lt.num_tiles, dtype=torch.bool)          # on the host
        run.latents.pop(level, None)
        guide = None
        if level in run.auto:                  # the guide's conditional denoiser, its own run and latents
            g_cond = None if run.cond is None else run.cond[:B]
            g_run = self.guide_sampler._start(range(B), g_cond, [1.0], False, [0])
            guide = self.guide_sampler._level_denoiser(g_run, 0)

        def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
            k = calls[0] % len(phases)
            calls[0] += 1
            coverage = phases[k][1]
            acc = x.new_zeros(G, x.shape[1], lt.num_pixels)
            if self.self_cond and level not in run.latents:     # every tile's latest latents, kept in place
                run.latents[level] = x.new_empty(G * lt.num_tiles, self.model.num_latents, self.model.latent_dim)
            new = run.latents.get(level)
            host = self._phase_tiles[level][k]
            own = bool(seen[host].all())                       # the first call of a phase reads none
            for ch in chunks[k]:
                lt.scatter_add(acc, ch.g[:ch.n], ch.t[:ch.n],
                               self._eval(run, level, ch, x, sigma, latents_out=new, own=own))
            seen[host] = True
            out = lt.finish(acc, coverage)
            if G == B and guide is None:
                return out
            cond = out[:B]
            if w == 1.0 or not lo < sigma <= hi:
                return cond
            weak = guide(x, sigma) if guide is not None else out[B:]
            return weak + w * (cond - weak)
        return D

    def _hold_context(self, run: _Run, level: int) -> int:
        """Compute every tile's context terms of `level` once (eq. 7, 9) into run.context if they fit: bytes held.

        Only with deep fusion and the activation cache (each call then runs level `level` alone);
        the budget is `sample.context_cache_gib`, counted at the autocast (else canvas) precision.
        """
        run.context = {}
        blocks = reading_blocks(self.model, self.num_levels, level - 1) if level > 0 and self.cache else []
        if not blocks:
            return 0
        G = self._rows(run, [k for k in run.generated if k >= level])
        rows = G * self.tiles[level].num_tiles
        per_row = math.prod(token_grid(self.pyramid, self.model)) * self.model.interface_dim * len(blocks)
        if rows * per_row * (self.autocast or self.dtype).itemsize > self.sample_cfg.context_cache_gib * 2 ** 30:
            return 0
        store = {}
        for ch in self._chunks(run, level, G):
            ctx = self.net.context_terms(ch.offsets, self._context(run, level, ch), level)
            r0, r1 = ch.rows
            for b, c in ctx.items():
                if b not in store:
                    store[b] = torch.empty(rows, *c.shape[1:], dtype=c.dtype, device=self._storage,
                                           pin_memory=self._pin)
                store[b][r0:r1].copy_(c[:ch.n], non_blocking=self._pin)
        if self._pin:
            torch.cuda.synchronize(self.device)
        run.context = store
        return sum(t.numel() * t.element_size() for t in store.values())

    def _build_cache(self, run: _Run, level: int, readers: Sequence[int]) -> dict:
        """Run the net once over all tiles of finished `level` at the context sigma; keep what `readers` read."""
        store = {}
        G = self._rows(run, readers)
        for ch in self._chunks(run, level, G):
            _, coll = self._eval(run, level, ch, run.ctx_in[level], self.diffusion.context_sigma,
                                 collect=True)
            r0, r1 = ch.rows
            for blk, a in coll.items():
                if blk not in store:
                    # Under autocast, held at its precision: the fusion samples them at it (half the bytes).
                    dt = self.autocast if self.autocast is not None and a.is_floating_point() else a.dtype
                    store[blk] = torch.empty(G * self.tiles[level].num_tiles, *a.shape[1:], dtype=dt,
                                             device=self._storage, pin_memory=self._pin)
                store[blk][r0:r1].copy_(a, non_blocking=self._pin)
        if self._pin:
            torch.cuda.synchronize(self.device)
        return store


def _real_rows(res, index: int, level: int, collect: bool, n: int):
    """D of the chunk's real rows (level at `index` of the output), with their collected activations."""
    out = res.out[:n, index]
    if not collect:
        return out
    return out, {blk: a[:n] for blk, a in res.collected[level].items()}
