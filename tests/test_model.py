"""The HPDM network: causality, adaptive computation, fusion alignment, shapes.

docs/method.md, invariants "causality" and "adaptive computation".
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe

from hpdm_cli.model import HPDMNet, LevelContext, cond_token_count, reading_blocks, token_grid
from hpdm_cli.model.fusion import gather_context, pair_weights
from hpdm_cli.pyramid import level_scales, patch_points, relative_coords, sample_nested_offsets, to_grid_sample
from hpdm_cli.pyramid.geometry import global_token_coords

pytestmark = pytest.mark.usefixtures("one_thread")              # tiny forwards: thread hand-offs cost more


def make_inputs(recipe, B=2, cond=True):
    pyr, m = recipe.pyramid, recipe.model
    L = pyr.num_levels
    off = sample_nested_offsets(pyr, B, generator=torch.Generator().manual_seed(7))
    x = torch.randn(B, L, m.channels, *pyr.patch)
    c_noise = torch.randn(B, L) * 0.5
    if m.cond == "class":
        c = torch.randint(0, m.num_classes, (B,))
    elif m.cond == "text":
        c = torch.randn(B, m.text_tokens, m.text_dim)
    else:
        c = None
    return x, c_noise, off, (c if cond else None)


def randomize(net):
    """Give zero-initialised tensors (detokenizer, ...) random values so every path carries signal."""
    with torch.no_grad():
        for p in net.parameters():
            if torch.all(p == 0):
                p.normal_(0, 0.05)
    return net


CONFIGS = {
    "deep, no adaptive": dict(load="none"),
    "deep, linear load": dict(load="linear"),
    "deep, custom load": dict(load=[1, 3, 2, 3]),
    "deep, no coords, detached": dict(fusion_coords=False, context_detach=True),
    "shallow fusion": dict(fusion="shallow"),
    "no fusion": dict(fusion="none"),
    "text cond, self-cond": dict(cond="text", text_dim=12, text_tokens=3, self_condition=True),
    "no condition": dict(cond="none", adaptive_norm=True),
    "adaptive norm, linear load": dict(load="linear", adaptive_norm=True),
    "adaptive norm, text": dict(cond="text", text_dim=12, text_tokens=3, adaptive_norm=True),
    "sin-cos positions": dict(pos_embed="sincos", adaptive_norm=True),
    "fourier positions, linear load": dict(pos_embed="fourier", load="linear"),
    "fourier positions at the base level": dict(pos_embed="fourier", pos_fixed_levels="base", load="linear"),
    "fourier positions faded in with the noise": dict(pos_embed="fourier", pos_fixed_sigma=[0.5, 2.0], load="linear"),
    "fourier positions in attention, base level": dict(pos_embed="fourier", pos_fixed_into="attention",
                                                       pos_fixed_levels="base", load="linear"),
    "fourier positions faded, subtracted before the readout": dict(pos_embed="fourier", pos_fixed_sigma=[0.5, 2.0],
                                                                   pos_fixed_subtract=True, load="linear"),
    "fourier positions in the read, faded": dict(pos_embed="fourier", pos_fixed_into="read",
                                                 pos_fixed_sigma=[0.5, 2.0], load=[1, 3, 2, 3]),
    "interface conv, linear load": dict(interface_conv=True, load="linear"),
    "adaptive interface norm": dict(load="linear", adaptive_norm=True, adaptive_norm_interface=True),
    "qk norm, custom load": dict(load=[1, 3, 2, 3], qk_norm=True),
    "edge features, linear load": dict(load="linear", fusion_edges=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causality_coarse_to_fine_only(name):
    """Level l's output has exactly zero gradient w.r.t. every input of levels > l.

    docs/method.md, invariant "causality, coarse to fine only".
    """
    recipe = tiny_recipe(**CONFIGS[name])
    net = randomize(HPDMNet(recipe.pyramid, recipe.model))
    x, c_noise, off, c = make_inputs(recipe)
    L = x.shape[1]
    for l in range(L):
        xi = x.clone().requires_grad_(True)
        ni = c_noise.clone().requires_grad_(True)
        kwargs = {}
        if recipe.model.self_condition:
            kwargs["self_cond"] = torch.randn(2, L, recipe.model.num_latents, recipe.model.latent_dim,
                                              requires_grad=True)
        out = net(xi, ni, off, c, **kwargs).out
        out[:, l].square().sum().backward()
        assert torch.all(xi.grad[:, l + 1:] == 0), f"level {l} sees a finer level's pixels"
        assert torch.all(ni.grad[:, l + 1:] == 0), f"level {l} sees a finer level's noise level"
        if kwargs:
            assert torch.all(kwargs["self_cond"].grad[:, l + 1:] == 0)
        assert xi.grad[:, l].abs().sum() > 0
        if l > 0 and recipe.model.fusion != "none":
            flows = xi.grad[:, :l].abs().sum() > 0
            assert flows == (not recipe.model.context_detach or recipe.model.fusion == "shallow"), \
                "lower levels must receive gradients through fusion (unless detached)"


def fixed_table_by_hand(net, level, c_noise=None):
    """Level `level`'s fixed table at each sample's weight [B, N, d] (weight 1 [1, N, d] without a fade or a
    c_noise), None where the level has none: linear in log sigma = 4 c_noise between model.pos_fixed_sigma."""
    if net.pos_fixed is None or (level > 0 and net.cfg.pos_fixed_levels != "all"):
        return None
    if not net.cfg.pos_fixed_sigma or c_noise is None:
        return net.pos_fixed[None]
    lo, hi = (math.log(v) for v in net.cfg.pos_fixed_sigma)
    return ((4 * c_noise - lo) / (hi - lo)).clamp(0, 1)[:, None, None] * net.pos_fixed


def reference_tokens(net, x, level, c_noise=None):
    """Level `level`'s interface tokens by hand: (f, h, w)-major tokens of (c, pf, ph, pw)-major pixels, then the
    tokenizer, the position embedding and the level's own embedding (docs/method.md, section 4)."""
    B, C, F_, H, W = x.shape
    tf, th, tw = net.tok
    t = x.reshape(B, C, F_ // tf, tf, H // th, th, W // tw, tw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    fixed = fixed_table_by_hand(net, level, c_noise)
    if net.cfg.pos_fixed_into != "tokens":                              # the table is the attention's alone
        fixed = None
    pos = net.pos_embed if fixed is None else net.pos_embed + fixed
    return net.tokenizer(t.reshape(B, -1, C * tf * th * tw)) + pos + net.level_embed[level]


def reference_block(blk, x, z, c, pos=None, into="tokens"):
    """A RIN block by hand (read, compute layers, write), each adaptive norm with its own (scale, shift) pair:
    pair j is rows 2j, 2j+1 of the modulation's output, read first, then the compute layers in order. A fixed
    table `pos` not in the tokens goes into the read's keys ("attention") or keys and values ("read"), and the
    write's queries."""
    def pairs(linear, n):
        if linear is None:
            return [(0.0, 0.0)] * n
        m = linear(F.silu(c)).reshape(c.shape[0], 2 * n, 1, -1)
        return [(m[:, 2 * j], m[:, 2 * j + 1]) for j in range(n)]

    def mod(h, p):
        return h * (1 + p[0]) + p[1]
    mz = pairs(blk.modulation, 2 + 2 * len(blk.compute))
    mx = pairs(blk.interface_modulation, 2)
    if pos is not None and into == "read":
        z = z + blk.read(mod(blk.read_norm_z(z), mz[0]), blk.read_norm_x(x) + pos)
    else:
        z = z + blk.read(mod(blk.read_norm_z(z), mz[0]), blk.read_norm_x(x), key_pos=pos)
    z = z + blk.read_mlp(mod(blk.read_mlp_norm(z), mz[1]))
    for i, layer in enumerate(blk.compute):
        z = z + layer.attn(mod(layer.norm1(z), mz[2 + 2 * i]))
        z = z + layer.mlp(mod(layer.norm2(z), mz[3 + 2 * i]))
    x = x + blk.write(mod(blk.write_norm_x(x), mx[0]), blk.write_norm_z(z), query_pos=pos)
    if blk.conv_grid is not None:
        x = x + blk.conv(x)
    return x + blk.write_mlp(mod(blk.write_mlp_norm(x), mx[1])), z


def reference_forward(net, x, c_noise, off, c, latents: bool = False):
    """A plain per-level re-implementation of eq. 7-9 and the adaptive loop of the paper, for comparison
    (with `latents`: also each level's learned latents [B, L, M, d_z] after the last block that processed it)."""
    L = x.shape[1]
    scales = level_scales(net.pyramid)
    grid = net.grid
    coords = global_token_coords(scales, off, grid)
    a = [reference_tokens(net, x[:, l], l, c_noise[:, l]) for l in range(L)]
    into = net.cfg.pos_fixed_into
    pos = [fixed_table_by_hand(net, l, c_noise[:, l]) if into != "tokens" else None for l in range(L)]
    cond = [net.cond_tokens(c_noise[:, l], l, c, None) for l in range(L)]
    z = [torch.cat([net.latents.expand(x.shape[0], -1, -1), cond[l][0]], 1) for l in range(L)]
    for b, block in enumerate(net.blocks):
        n = net.load[b]
        prev = [t.clone() for t in a]                                   # a^{b-1}
        for l in range(1, n):
            ctx = 0
            for k in range(l):
                rs, ro = relative_coords(scales, off, l, k)
                g = to_grid_sample(patch_points(rs, ro, grid), grid)
                src = prev[k].transpose(1, 2).reshape(x.shape[0], -1, *grid)
                ctx = ctx + F.grid_sample(src, g, align_corners=False, padding_mode="border").flatten(2).transpose(1, 2)
            ctx = ctx / l
            cat = torch.cat([prev[l], ctx, coords[:, l]], -1)
            a[l] = prev[l] + net.fusions[str(b)].proj(cat)                 # eq. 9, W = [I, 0, 0] + W', explicit concat
        for l in range(n):                                              # x[:, :n] = block(x[:, :n])
            a[l], z[l] = reference_block(block, a[l], z[l], cond[l][1], pos[l], into)
    if net.cfg.pos_fixed_subtract:                                      # the readout sees the stream less the table
        tables = [fixed_table_by_hand(net, l, c_noise[:, l]) for l in range(L)]
        a = [t if f is None else t - f for t, f in zip(a, tables)]
    out = torch.stack([net.detokenize(t) for t in a], 1)
    if latents:                                                         # the learned latents, not the condition
        return out, torch.stack([t[:, :net.latents.shape[0]] for t in z], 1)   # tokens after them
    return out


@pytest.mark.parametrize("load,adaptive_norm", [("none", False), ("linear", False), ([1, 3, 2, 3], False),
                                                ([3, 1, 1, 3], False), ("linear", True), ([1, 3, 2, 3], True),
                                                ([1, 3, 2, 3], "interface")])
def test_batched_network_equals_per_level_reference(load, adaptive_norm):
    recipe = tiny_recipe(load=load, adaptive_norm=bool(adaptive_norm),
                         adaptive_norm_interface=adaptive_norm == "interface")
    check_against_reference(recipe)


@pytest.mark.parametrize("into,levels,faded,subtract", [
    ("attention", "all", False, False), ("attention", "base", True, False), ("read", "all", True, False),
    ("read", "base", False, False), ("tokens", "base", False, False), ("tokens", "all", True, False),
    ("tokens", "base", True, True), ("tokens", "all", False, True)])
def test_fixed_table_reaches_each_level_as_the_reference_places_it(into, levels, faded, subtract):
    """model.pos_fixed_into / pos_fixed_sigma / pos_fixed_subtract: the batched network gives each level's rows
    its own (faded) table in the tokens, or in the read and write, and takes it out before the readout, as the
    per-level reference does (docs/method.md, section 4)."""
    recipe = tiny_recipe(load=[1, 3, 2, 3], pos_embed="fourier", pos_fixed_into=into, pos_fixed_levels=levels,
                         pos_fixed_sigma=[0.5, 2.0] if faded else [], pos_fixed_subtract=subtract)
    check_against_reference(recipe, sharp=True)


def check_against_reference(recipe, sharp: bool = False):
    """The batched network's output and latents equal `reference_forward`'s for random weights and inputs (`sharp`:
    attention logits of order one, so that what enters them shows)."""
    net = randomize(HPDMNet(recipe.pyramid, recipe.model))
    if sharp:
        with torch.no_grad():
            for name, w in net.named_parameters():
                if name.endswith((".q.weight", ".kv.weight")):
                    w.mul_(25)
    x, c_noise, off, c = make_inputs(recipe)
    with torch.no_grad():
        got = net(x, c_noise, off, c, return_latents=True)
        out, latents = reference_forward(net, x, c_noise, off, c, latents=True)
    assert torch.allclose(got.out, out, atol=1e-5)
    assert torch.allclose(got.latents, latents, atol=1e-5)                # what self-conditioning feeds back
    assert not torch.equal(net.level_embed[1], net.level_embed[0])       # each level its own embedding


def test_skipped_blocks_leave_levels_untouched():
    """A block that skips level l sees only levels < n_b; level l's activations pass it unchanged."""
    load = [1, 2, 1, 3]
    recipe = tiny_recipe(load=load)
    net = randomize(HPDMNet(recipe.pyramid, recipe.model))
    x, c_noise, off, c = make_inputs(recipe, B=3)
    seen = []
    hooks = [blk.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0])) for blk in net.blocks]
    with torch.no_grad():
        acts = net(x, c_noise, off, c, collect=True).collected
    for h in hooks:
        h.remove()
    assert seen == [n * 3 for n in load]
    # Level 1 is read as context by block 3 only (the only later block processing level 2): the
    # state it enters block 3 with is its state after block 1, unchanged by block 2 which skips it.
    with torch.no_grad():
        ref_a = reference_forward_states(net, x, c_noise, off, c)
    assert 2 not in ref_a[1]                                              # block 2 never produced level 1
    assert torch.allclose(acts[1][3], ref_a[1][1], atol=1e-6)            # after block 1 == before block 3


def reference_forward_states(net, x, c_noise, off, c):
    """Per-level activations after each block of the reference model: states[l][b]."""
    states = {}

    def hook(b):
        def f(mod, inp, out):
            n = net.load[b]
            for l, t in enumerate(out[0].chunk(n)):
                states.setdefault(l, {})[b] = t
        return f
    hs = [blk.register_forward_hook(hook(b)) for b, blk in enumerate(net.blocks)]
    net(x, c_noise, off, c)
    for h in hs:
        h.remove()
    return states


def test_context_fusion_samples_an_analytic_field_at_the_patch_positions():
    """Eq. 7-8: fusing lower levels holding f(global position) gives f at level l's token positions."""
    recipe = tiny_recipe(resolution=(16, 64, 64), patch=(4, 16, 16), tokenizer=(1, 2, 2))
    pyr = recipe.pyramid
    grid = tuple(p // t for p, t in zip(pyr.patch, recipe.model.tokenizer))
    B, d = 4, 6
    off = sample_nested_offsets(pyr, B, generator=torch.Generator().manual_seed(11))
    scales = level_scales(pyr)
    pos = global_token_coords(scales, off, grid)                          # [B, L, N, 3]
    W = torch.randn(3, d)

    def field(p):
        return p @ W + 0.25

    acts = [field(pos[:, k]) for k in range(pyr.num_levels)]
    weights = pair_weights(scales, off, grid, pyr.num_levels)
    for l in range(1, pyr.num_levels):
        ctx = gather_context(acts, l, l + 1, weights, grid)[0]
        want = field(pos[:, l])
        inside = torch.ones(B, ctx.shape[1], dtype=torch.bool)
        for k in range(l):                                                # inside every lower hull of centres
            rs, ro = relative_coords(scales, off, l, k)
            rel = patch_points(rs, ro, grid)
            lo = 0.5 / torch.tensor(grid)
            inside &= ((rel >= lo - 1e-6) & (rel <= 1 - lo + 1e-6)).all(-1)
        assert inside.float().mean() > 0.3
        assert (ctx - want).abs().amax(-1)[inside].max() < 1e-5


def test_context_sampling_under_autocast_runs_in_bf16_and_matches_float32():
    """Under bf16 autocast the fusion's interpolation is a bf16 pass; values and gradients as in float32 within bf16."""
    recipe = tiny_recipe(resolution=(16, 64, 64), patch=(4, 16, 16), tokenizer=(1, 2, 2))
    pyr = recipe.pyramid
    grid = tuple(p // t for p, t in zip(pyr.patch, recipe.model.tokenizer))
    g = torch.Generator().manual_seed(3)
    off = sample_nested_offsets(pyr, 3, generator=g)
    weights = pair_weights(level_scales(pyr), off, grid, pyr.num_levels)
    acts = torch.randn(pyr.num_levels, 3, math.prod(grid), 16, generator=g, requires_grad=True)
    L = pyr.num_levels
    ref = gather_context(list(acts), 1, L, weights, grid)
    (gref,) = torch.autograd.grad((ref * ref.detach()).sum(), acts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gather_context(list(acts), 1, L, weights, grid)
    assert low.dtype == torch.bfloat16 and ref.dtype == torch.float32
    (glow,) = torch.autograd.grad((low.float() * ref.detach()).sum(), acts)
    scale = ref.abs().max()
    assert (low.float() - ref).abs().max() < 2e-2 * scale                 # three bf16 roundings of O(1) values
    assert (glow - gref).abs().max() < 2e-2 * gref.abs().max()


@pytest.mark.parametrize("resolution,patch,levels", [
    ((8, 16, 16), (4, 8, 8), 2),
    ((8, 32, 32), (4, 8, 8), 3),
    ((16, 64, 64), (2, 8, 8), 4),
    ((1, 32, 32), (1, 8, 8), 3),                                           # images: one frame
    ((1, 64, 64), (1, 8, 8), 4),
])
@pytest.mark.parametrize("cond", ["class", "text", "none"])
def test_shapes_and_dtypes(resolution, patch, levels, cond):
    recipe = tiny_recipe(resolution=resolution, patch=patch, cond=cond, text_dim=10, text_tokens=2, num_blocks=levels)
    assert recipe.pyramid.num_levels == levels
    net = HPDMNet(recipe.pyramid, recipe.model)
    x, c_noise, off, c = make_inputs(recipe, B=2)
    res = net(x, c_noise, off, c)
    assert res.out.shape == x.shape and res.out.dtype == torch.float32
    assert res.latents is None and res.collected is None                   # only what was asked for
    res = net(x, c_noise, off, c, return_latents=True, collect=True)
    assert res.latents.shape == (2, levels, recipe.model.num_latents, recipe.model.latent_dim)
    assert sorted(res.collected) == list(range(levels))
    # The counts the FLOP model and the cache sizes use are those of the tokens the network builds.
    toks, _ = net.cond_tokens(c_noise[:, 0], 0, c, None)
    assert toks.shape[1] == cond_token_count(recipe.model) and net.tokenize(x[:, 0], 0).shape[1] == \
        math.prod(token_grid(recipe.pyramid, recipe.model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c_noise, off, c).out
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("fusion,load,edges", [("deep", [1, 2, 2, 3], False), ("deep", "linear", False),
                                               ("deep", [3, 1, 2, 3], False), ("shallow", [1, 2, 2, 3], False),
                                               ("deep", "linear", True)])
def test_cached_context_equals_joint_forward(fusion, load, edges):
    """Running level lo alone on the collected lower-level activations equals the joint forward (activation
    caching); what is collected is `reading_blocks`, and running without any one of those blocks fails (it is read)."""
    recipe = tiny_recipe(fusion=fusion, load=load, fusion_edges=edges)
    L = recipe.pyramid.num_levels
    net = randomize(HPDMNet(recipe.pyramid, recipe.model))
    x, c_noise, off, c = make_inputs(recipe)
    with torch.no_grad():
        full, _, acts = net(x, c_noise, off, c, collect=True)
        assert [sorted(acts[k]) for k in range(L)] == [reading_blocks(recipe.model, L, k) for k in range(L)]
        for lo in range(1, L):
            blocks = reading_blocks(recipe.model, L, lo - 1)
            kept = {b: [acts[k][b] for k in range(lo)] for b in blocks}
            part = net(x[:, lo:], c_noise[:, lo:], off, c, lo=lo, context=LevelContext(kept, x[:, lo - 1])).out
            assert torch.allclose(part, full[:, lo:], atol=1e-5), (fusion, lo)
            for b in blocks:
                with pytest.raises(KeyError):
                    net(x[:, lo:], c_noise[:, lo:], off, c, lo=lo,
                        context=LevelContext({o: v for o, v in kept.items() if o != b}, x[:, lo - 1]))
    if fusion == "shallow":
        assert all(reading_blocks(recipe.model, L, k) == [] for k in range(L))


def test_condition_dropout_uses_null_condition():
    recipe = tiny_recipe()
    net = randomize(HPDMNet(recipe.pyramid, recipe.model))
    x, c_noise, off, c = make_inputs(recipe)
    with torch.no_grad():
        dropped = net(x, c_noise, off, c, torch.tensor([False, False])).out
        null = net(x, c_noise, off, torch.full_like(c, recipe.model.num_classes)).out
        kept = net(x, c_noise, off, c, torch.tensor([True, True])).out
        mixed = net(x, c_noise, off, c, torch.tensor([True, False])).out
    assert torch.equal(dropped, null)
    assert not torch.allclose(dropped, kept)
    assert torch.equal(mixed[0], kept[0]) and torch.equal(mixed[1], null[1])     # per sample, as training drops


@pytest.mark.parametrize("adaptive", [False, True])
def test_each_level_reads_its_own_level_token(adaptive):
    """Level l's condition tokens carry level_token[l]: changing it changes level l's output and, by causality,
    no lower level's."""
    recipe = tiny_recipe(adaptive_norm=adaptive)
    net = randomize(HPDMNet(recipe.pyramid, recipe.model))
    x, c_noise, off, c = make_inputs(recipe)
    L = recipe.pyramid.num_levels
    with torch.no_grad():
        base = net(x, c_noise, off, c).out
        for level in range(L):
            saved = net.level_token[level].clone()
            net.level_token[level].add_(torch.randn_like(saved))
            out = net(x, c_noise, off, c).out
            net.level_token[level].copy_(saved)
            for k in range(L):
                changed = not torch.allclose(out[:, k], base[:, k], atol=1e-6)
                assert changed == (k >= level), (level, k)


@pytest.mark.parametrize("adaptive", [False, True])
def test_dropped_text_is_the_learned_null_sequence(adaptive):
    """A text model's dropped caption is its learned null sequence, per sample, through every condition path."""
    recipe = tiny_recipe(cond="text", text_dim=12, text_tokens=3, adaptive_norm=adaptive,
                         adaptive_norm_interface=adaptive)
    net = randomize(HPDMNet(recipe.pyramid, recipe.model))
    x, c_noise, off, c = make_inputs(recipe)
    with torch.no_grad():
        mixed = net(x, c_noise, off, c, torch.tensor([True, False])).out
        null = net(x, c_noise, off, None).out                             # no caption: the null sequence
        kept = net(x, c_noise, off, c).out
    assert torch.equal(mixed[1], null[1]) and torch.equal(mixed[0], kept[0])
    assert not torch.allclose(null[0], kept[0])


# ---------------------------------------------------------------------------------------------
# Fusion weights exist only for blocks that fuse (a block on level 0 alone has no coarser context)

def _step(net, recipe, opt, ema, seed):
    """One training step on a fixed synthetic batch (the loop's forward_backward, LAMB, EMA)."""
    from hpdm_cli.diffusion.edm import draw_noise
    from hpdm_cli.train.step import forward_backward
    g = torch.Generator().manual_seed(seed)
    p, m = recipe.pyramid, recipe.model
    videos = torch.rand(2, m.channels, *p.resolution, generator=g) * 2 - 1
    cond = torch.randint(0, m.num_classes, (2,), generator=g)
    offsets = sample_nested_offsets(p, 2, generator=g)
    draw = draw_noise(recipe.diffusion, (2, p.num_levels, m.channels, *p.patch), conditional=True, generator=g)
    forward_backward(net, videos, cond, recipe, offsets, draw, 1.0, "fp32")
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update(net)


@pytest.mark.parametrize("load", ["linear", [3, 1, 1, 3]])
def test_every_parameter_gets_a_gradient(load):
    """DDP then needs no find_unused_parameters for fusions that nothing reads (the loop's probe finds none)."""
    from hpdm_cli.train.loop import unused_parameters
    recipe = tiny_recipe(load=load)
    net = HPDMNet(recipe.pyramid, recipe.model)
    assert unused_parameters(net, recipe, torch.device("cpu")) == []
    assert sorted(net.fusions) == [str(b) for b, n in enumerate(net.load) if n > 1]


def test_checkpoint_with_fusions_of_level0_blocks_still_loads_and_resumes():
    """Earlier versions built a fusion for every block: their checkpoints sample and resume unchanged."""
    import copy

    from hpdm_cli.model.fusion import ContextFusion
    from hpdm_cli.train.loop import without_unbuilt_fusions
    from hpdm_cli.train.optim import EMA, Lamb, param_groups
    recipe = tiny_recipe(load="linear")                                 # load [1, 1, 2, 3]
    old = HPDMNet(recipe.pyramid, recipe.model)
    old.fusions = torch.nn.ModuleDict({str(b): old.fusions[str(b)] if str(b) in old.fusions
                                       else ContextFusion(recipe.model.interface_dim, recipe.model.fusion_coords)
                                       for b in range(len(old.load))})   # the earlier layout: fusions.0 ... .3
    opt, ema = Lamb(param_groups(old, 0.01), lr=1e-3), EMA(old, 2.0)
    _step(old, recipe, opt, ema, seed=1)
    ck = copy.deepcopy({"model": old.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict()})
    assert "fusions.0.proj.weight" in ck["model"] and "fusions.1.proj.bias" in ck["ema"]

    sampler = HPDMNet(recipe.pyramid, recipe.model)
    sampler.load_state_dict(ck["model"])                                # strict, as `hpdm sample` loads weights
    new = HPDMNet(recipe.pyramid, recipe.model)
    opt2, ema2 = Lamb(param_groups(new, 0.01), lr=1e-3), EMA(new, 2.0)   # groups of a fresh model, as the loop
    ck = without_unbuilt_fusions(ck, new)                              # as the training loop resumes
    new.load_state_dict(ck["model"])
    ema2.load_state_dict(ck["ema"])
    opt2.load_state_dict(ck["optimizer"])
    _step(old, recipe, opt, ema, seed=2)
    _step(new, recipe, opt2, ema2, seed=2)
    want, got = old.state_dict(), new.state_dict()
    assert set(want) - set(got) == {f"fusions.{b}.proj.{k}" for b in (0, 1) for k in ("weight", "bias")}
    for k in got:
        assert torch.equal(got[k], want[k]), k
    for k, v in ema2.state_dict().items():
        assert torch.equal(v, ema.state_dict()[k]), k


def test_sincos_positions_tell_every_token_apart_at_unit_scale():
    """model.pos_embed = "sincos": distinct, bounded features; neighbours closer than far tokens on every axis."""
    from hpdm_cli.model.network import sincos_positions
    grid = (4, 8, 8)
    t = sincos_positions(grid, 128).view(*grid, 128)
    assert t.abs().max() <= 1 and 0.3 < t.pow(2).mean() < 0.7        # unit scale, not a 0.02 table
    flat = t.reshape(-1, 128)
    d = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert d.min() > 0.5                                               # no two tokens alike
    for axis, n in enumerate(grid):
        idx = [0, 0, 0]
        far = list(idx)
        far[axis] = n - 1
        near = list(idx)
        near[axis] = 1
        assert (t[tuple(idx)] - t[tuple(near)]).norm() < (t[tuple(idx)] - t[tuple(far)]).norm()
    odd = sincos_positions((3, 5, 7), 100)                               # widths that do not split evenly
    assert odd.shape == (105, 100) and torch.isfinite(odd).all()


def _moving_lines(grid):
    """Every token line of a patch that moves one token a frame (right, left, down, up, diagonally): 0/1 targets."""
    f, h, w = grid
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1)):
        for y0 in range(h):
            for x0 in range(w):
                ys, xs = [y0 + dy * t for t in range(f)], [x0 + dx * t for t in range(f)]
                if min(ys + xs) >= 0 and max(ys) < h and max(xs) < w:
                    target = torch.zeros(grid, dtype=torch.float64)
                    target[torch.arange(f), ys, xs] = 1
                    yield target.reshape(-1)


def _line_margin(table, target):
    """Least-squares linear key (with a bias) for `target` over the table: lowest score on the line - highest off it."""
    a = torch.cat([table.double(), torch.ones(len(table), 1, dtype=torch.float64)], dim=1)
    score = a @ torch.linalg.lstsq(a, target[:, None]).solution[:, 0]
    return (score[target > 0].min() - score[target == 0].max()).item()


def test_fourier_positions_let_one_key_pick_out_a_moving_object_s_tokens():
    """model.pos_embed = "fourier": a linear key separates the tokens of a line through space and time from all
    others, which no key over sincos_positions' sum of per-axis features can (docs/method.md, section 4)."""
    from hpdm_cli.model.network import fourier_positions, sincos_positions
    grid = (4, 8, 8)
    fourier, sincos = fourier_positions(grid, 128), sincos_positions(grid, 128)
    assert torch.equal(fourier, fourier_positions(grid, 128))             # the same table in every process
    assert fourier.abs().max() <= 1 and 0.3 < fourier.pow(2).mean() < 0.7
    lines = list(_moving_lines(grid))
    assert len(lines) == 185
    separated = [_line_margin(fourier, t) > 0 for t in lines]
    assert sum(separated) >= 0.95 * len(lines)
    assert all(_line_margin(sincos, t) <= 1e-9 for t in lines)
    odd = fourier_positions((3, 5, 7), 101)
    assert odd.shape == (105, 101) and torch.isfinite(odd).all() and not odd[:, -1].any()


@pytest.mark.parametrize("fixed_table", ["sincos", "fourier"])
def test_fixed_positions_change_the_output_but_not_the_weights(fixed_table):
    """The fixed table is a buffer outside the state dict: same weights, other positions -> other output."""
    learned, fixed = tiny_recipe(), tiny_recipe(pos_embed=fixed_table)
    a, b = HPDMNet(learned.pyramid, learned.model), HPDMNet(fixed.pyramid, fixed.model)
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(randomize(a).state_dict())
    x, c_noise, off, c = make_inputs(learned)
    assert not torch.allclose(a(x, c_noise, off, c).out, b(x, c_noise, off, c).out)


def test_fixed_positions_at_the_base_level_only_leave_the_upper_levels_tokens_as_learned():
    """model.pos_fixed_levels = "base": level 0's tokens carry the Fourier table, levels above only the learned one
    (docs/method.md, section 4)."""
    every, base = tiny_recipe(pos_embed="fourier"), tiny_recipe(pos_embed="fourier", pos_fixed_levels="base")
    learned = tiny_recipe()
    nets = [HPDMNet(r.pyramid, r.model) for r in (every, base, learned)]
    weights = randomize(nets[2]).state_dict()
    for n in nets:
        n.load_state_dict(weights)
    x, *_ = make_inputs(learned)
    with torch.no_grad():
        for level in range(x.shape[1]):
            t_every, t_base, t_learned = (n.tokenize(x[:, level], level) for n in nets)
            assert torch.equal(t_base, t_every if level == 0 else t_learned)
            assert not torch.allclose(t_every, t_learned)


def test_the_fixed_position_table_is_scaled_by_pos_fixed_scale():
    """model.pos_fixed_scale multiplies the fixed table only: tokens = content + learned + scale * table
    (docs/method.md, section 4)."""
    unit, small = tiny_recipe(pos_embed="fourier"), tiny_recipe(pos_embed="fourier", pos_fixed_scale=0.25)
    nets = [HPDMNet(r.pyramid, r.model) for r in (unit, small)]
    weights = randomize(nets[0]).state_dict()
    nets[1].load_state_dict(weights)
    assert torch.allclose(nets[1].pos_fixed, 0.25 * nets[0].pos_fixed)
    x, *_ = make_inputs(unit)
    with torch.no_grad():
        t_unit, t_small = (n.tokenize(x[:, 0], 0) for n in nets)
    assert torch.allclose(t_unit - t_small, 0.75 * nets[0].pos_fixed, atol=1e-6)
    assert torch.allclose(t_small, reference_tokens(nets[1], x[:, 0], 0), atol=1e-6)


def test_the_fixed_position_table_fades_in_with_the_noise_level():
    """model.pos_fixed_sigma = [lo, hi]: no fixed table at sigma <= lo, all of it at sigma >= hi, half of it
    half-way in log(sigma); the learned table and the content at every sigma (docs/method.md, section 4)."""
    from hpdm_cli.diffusion.edm import c_noise
    gated, plain = tiny_recipe(pos_embed="fourier", pos_fixed_sigma=[0.5, 2.0]), tiny_recipe(pos_embed="fourier")
    nets = [HPDMNet(r.pyramid, r.model) for r in (gated, plain)]
    nets[1].load_state_dict(randomize(nets[0]).state_dict())
    x, *_ = make_inputs(gated, B=4)
    sigma = torch.tensor([0.1, 0.5, 1.0, 5.0])                          # 1.0 = half-way between 0.5 and 2 in log
    with torch.no_grad():
        t_gated = nets[0].tokenize(x[:, 0], 0, c_noise(sigma))
        full = nets[1].tokenize(x[:, 0], 0)
    bare = full - nets[1].pos_fixed
    assert torch.allclose(t_gated[:2], bare[:2], atol=1e-6)
    assert torch.allclose(t_gated[2], bare[2] + 0.5 * nets[1].pos_fixed, atol=1e-5)
    assert torch.allclose(t_gated[3], full[3], atol=1e-6)
    assert nets[0].fixed_weight(None) is None and nets[1].fixed_weight(c_noise(sigma)) is None


def test_a_trainable_fixed_table_starts_as_the_features_and_learns_with_plain_adam():
    """model.pos_fixed_trainable: the table is a parameter equal at init to the fixed features, saved with the
    weights, given a gradient and no trust ratio or weight decay; the constant table is a buffer outside the
    saved weights (docs/method.md, section 4)."""
    from hpdm_cli.train.optim import param_groups
    fixed, trained = tiny_recipe(pos_embed="fourier"), tiny_recipe(pos_embed="fourier", pos_fixed_trainable=True)
    nets = [HPDMNet(r.pyramid, r.model) for r in (fixed, trained)]
    assert torch.equal(nets[0].pos_fixed, nets[1].pos_fixed.detach())
    assert "pos_fixed" not in nets[0].state_dict() and "pos_fixed" in nets[1].state_dict()
    assert "pos_fixed" not in dict(nets[0].named_parameters())
    groups = param_groups(nets[1], 0.1)
    assert "pos_fixed" in groups[1]["names"] and "pos_fixed" not in groups[0]["names"]
    x, c_noise, off, c = make_inputs(trained)
    randomize(nets[1])                                      # zero-initialised outputs pass no gradient back
    nets[1](x, c_noise, off, c).out.square().mean().backward()
    assert nets[1].pos_fixed.grad is not None and nets[1].pos_fixed.grad.abs().sum() > 0
    copy = HPDMNet(trained.pyramid, trained.model)
    with torch.no_grad():
        nets[1].pos_fixed.add_(1.0)
    copy.load_state_dict(nets[1].state_dict())
    assert torch.equal(copy.pos_fixed, nets[1].pos_fixed)


@pytest.mark.parametrize("levels,fade", [("base", []), ("all", [0.5, 2.0])])
def test_pos_fixed_subtract_takes_the_fixed_table_out_of_what_the_readout_sees(levels, fade):
    """model.pos_fixed_subtract: the blocks see the same stream, the output norm and detokenizer read it less the
    fixed table at its weight, at the levels that have one (docs/method.md, section 4)."""
    from hpdm_cli.diffusion.edm import c_noise as to_c_noise
    kw = dict(pos_embed="fourier", pos_fixed_levels=levels, pos_fixed_sigma=fade)
    plain, sub = tiny_recipe(**kw), tiny_recipe(pos_fixed_subtract=True, **kw)
    nets = [HPDMNet(r.pyramid, r.model) for r in (plain, sub)]
    nets[1].load_state_dict(randomize(nets[0]).state_dict())
    x, _, off, c = make_inputs(plain, B=3)
    c_noise = to_c_noise(torch.tensor([0.1, 1.0, 5.0]))[:, None].expand(-1, x.shape[1])
    seen = [[], []]
    for n, rec in zip(nets, seen):
        n.out_norm.register_forward_hook(lambda mod, args, out, rec=rec: rec.append(args[0]))
    with torch.no_grad():
        outs = [n(x, c_noise, off, c).out for n in nets]
        for l, (a_plain, a_sub) in enumerate(zip(*seen)):
            fixed = nets[0].fixed_positions(l, c_noise[:, l])
            expect = a_plain if fixed is None else a_plain - fixed.expand_as(a_plain)
            assert torch.allclose(a_sub, expect, atol=1e-5), l
    changed = [not torch.allclose(outs[0][:, l], outs[1][:, l], atol=1e-6) for l in range(x.shape[1])]
    assert changed == [levels == "all" or l == 0 for l in range(x.shape[1])]
    if fade:                                    # weight 0 at sigma 0.1: that sample's readout is unchanged
        assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)


def test_positions_in_attention_enter_the_queries_and_keys_not_the_values():
    """Attention with query_pos / key_pos: q = W_q (x + query_pos), k = W_k (context + key_pos), v = W_v context
    (docs/method.md, section 4); over a single key the output is the same whatever its position."""
    from hpdm_cli.model.layers import Attention
    torch.manual_seed(0)
    att = Attention(8, 6, 4)
    with torch.no_grad():                                   # logits of order one (init std 0.02: near-uniform)
        for lin in (att.q, att.kv, att.out):
            lin.weight.normal_(0, 0.5)
    x, ctx, qp, kp = torch.randn(2, 5, 8), torch.randn(2, 7, 6), torch.randn(1, 5, 8), torch.randn(2, 7, 6)

    def by_hand(q_in, k_in, v_in):
        wk, wv = att.kv.weight.split(8)
        heads = lambda t: t.unflatten(-1, (2, 4)).transpose(1, 2)               # noqa: E731
        q, k, v = heads(q_in @ att.q.weight.T), heads(k_in @ wk.T), heads(v_in @ wv.T)
        w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)                 # sqrt(head_dim) = 2
        return att.out((w @ v).transpose(1, 2).flatten(2))
    with torch.no_grad():
        got = att(x, ctx, query_pos=qp, key_pos=kp)
        assert torch.allclose(got, by_hand(x + qp, ctx + kp, ctx), atol=1e-5)
        assert not torch.allclose(got, att(x, ctx), atol=1e-3)
        one = ctx[:, :1]
        assert torch.allclose(att(x, one, key_pos=kp[:, :1]), att(x, one), atol=1e-6)


def test_fixed_positions_in_attention_leave_the_tokens_bare():
    """model.pos_fixed_into = "attention": the tokens carry the content and the learned table alone, the fixed
    table reaches the read's keys and the write's queries, and changes the output (docs/method.md, section 4)."""
    into, added, learned = (tiny_recipe(pos_embed="fourier", pos_fixed_into="attention"),
                            tiny_recipe(pos_embed="fourier"), tiny_recipe())
    nets = [HPDMNet(r.pyramid, r.model) for r in (into, added, learned)]
    weights = randomize(nets[2]).state_dict()
    for k, w in weights.items():                    # logits of order one, so that what enters them shows
        if k.endswith((".q.weight", ".kv.weight")):
            w.mul_(25)
    for n in nets:
        n.load_state_dict(weights)
    x, c_noise, off, c = make_inputs(learned)
    with torch.no_grad():
        assert torch.equal(nets[0].tokenize(x[:, 1], 1), nets[2].tokenize(x[:, 1], 1))
        assert torch.equal(nets[0].attention_positions(1), nets[1].pos_fixed[None])
        assert nets[1].attention_positions(1) is None and nets[2].attention_positions(0) is None
        outs = [n(x, c_noise, off, c).out for n in nets]
    assert not torch.allclose(outs[0], outs[1], atol=1e-4) and not torch.allclose(outs[0], outs[2], atol=1e-4)


def test_stacked_attention_positions_follow_the_levels_on_the_batch_axis():
    """A block over levels [0, 1, 2] with a table at level 0 only: rows of level 0 get it, the others zeros."""
    from hpdm_cli.model.network import stacked_positions
    table = torch.randn(1, 4, 3)
    pos = {0: table, 1: None, 2: None}
    got = stacked_positions(pos, [0, 1, 2], batch=2)
    assert got.shape == (6, 4, 3)
    assert torch.equal(got[:2], table.expand(2, 4, 3)) and torch.all(got[2:] == 0)
    assert stacked_positions(pos, [0], batch=2) is table and stacked_positions(pos, [1, 2], batch=2) is None


def test_adaptive_interface_norm_starts_as_the_plain_model():
    """Zero-initialised, the interface modulation leaves a new network's output exactly as without it."""
    base = tiny_recipe(adaptive_norm=True)
    plain = randomize(HPDMNet(base.pyramid, base.model))
    rec = tiny_recipe(adaptive_norm=True, adaptive_norm_interface=True)
    net = HPDMNet(rec.pyramid, rec.model)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".interface_modulation." in k for k in missing)
    x, c_noise, off, c = make_inputs(rec)
    with torch.no_grad():
        assert torch.equal(net(x, c_noise, off, c).out, plain(x, c_noise, off, c).out)


def test_edge_features_start_as_the_plain_model_and_then_reach_the_output():
    """model.fusion_edges adds zero-initialised weights only: a plain model's weights give its outputs exactly;
    once those weights are non-zero the output of the fused levels changes and level 0's does not."""
    base = tiny_recipe(load="linear")
    plain = randomize(HPDMNet(base.pyramid, base.model))
    rec = tiny_recipe(load="linear", fusion_edges=True)
    net = HPDMNet(rec.pyramid, rec.model)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith(".edge.weight") for k in missing)
    x, c_noise, off, c = make_inputs(rec)
    with torch.no_grad():
        before = plain(x, c_noise, off, c).out
        assert torch.equal(net(x, c_noise, off, c).out, before)
        for k in missing:
            net.get_parameter(k).normal_(0, 0.05)
        after = net(x, c_noise, off, c).out
    assert torch.equal(after[:, 0], before[:, 0])
    assert all((after[:, l] - before[:, l]).abs().max() > 1e-4 for l in range(1, x.shape[1]))


def test_adaptive_interface_norm_carries_the_condition_to_every_token():
    """With the write attention cut, only the interface modulation can carry the class into the tokens."""
    outs = {}
    for interface in (False, True):
        rec = tiny_recipe(adaptive_norm=True, adaptive_norm_interface=interface, load="none")
        net = randomize(HPDMNet(rec.pyramid, rec.model))
        with torch.no_grad():
            for blk in net.blocks:
                blk.write.out.weight.zero_()
                blk.write.out.bias.zero_()
        x, c_noise, off, _ = make_inputs(rec, B=1)
        with torch.no_grad():
            outs[interface] = [net(x, c_noise, off, torch.tensor([k])).out for k in range(3)]
    assert all(torch.equal(outs[False][0], o) for o in outs[False][1:])     # the class never reaches the tokens
    for o in outs[True][1:]:
        changed = (o - outs[True][0]).abs().flatten(3).amax(-1)              # [B, L, C]: every level and channel
        assert (changed > 1e-4).all()


def test_qk_norm_makes_attention_blind_to_query_and_key_scale():
    """With model.qk_norm the logits cannot grow with the projection weights: scaling every query
    and key projection by 50 leaves the network's output as it was; without it the output moves."""
    outs = {}
    for qk in (False, True):
        rec = tiny_recipe(load="linear", qk_norm=qk)
        net = randomize(HPDMNet(rec.pyramid, rec.model))
        x, c_noise, off, c = make_inputs(rec)
        with torch.no_grad():
            before = net(x, c_noise, off, c).out
            for blk in net.blocks:
                for attn in (blk.read, blk.write):
                    attn.q.weight.mul_(50)
                    attn.kv.weight[: attn.kv.weight.shape[0] // 2].mul_(50)         # keys, not values
                for layer in blk.compute:
                    w = layer.attn.qkv.weight
                    w[: 2 * w.shape[0] // 3].mul_(50)                               # queries and keys
            outs[qk] = (before, net(x, c_noise, off, c).out)
    assert torch.allclose(*outs[True], atol=1e-4)
    assert not torch.allclose(*outs[False], atol=1e-2)
    rec = tiny_recipe(qk_norm=True)
    net = HPDMNet(rec.pyramid, rec.model)
    names = [n for n, _ in net.named_parameters() if ".qk_norm." in n]
    assert names and all(n.endswith(("qk_norm.q_gain", "qk_norm.k_gain")) for n in names)


def test_qk_norm_under_bf16_autocast_keeps_the_attention_in_bf16():
    """The normalised queries and keys keep the dtype of the values they meet in attention."""
    from hpdm_cli.model.layers import Attention, QKNorm
    attn = Attention(64, 32, 16, qk_norm=True)
    x, ctx = torch.randn(2, 5, 64), torch.randn(2, 7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, ctx)
    assert y.dtype == torch.bfloat16
    ref = attn(x, ctx)
    assert torch.allclose(y.float(), ref, atol=0.05, rtol=0.05)
    q = torch.randn(3, 4, 16, dtype=torch.bfloat16) * 100
    nq, _ = QKNorm(16)(q, q)
    assert nq.dtype == torch.bfloat16 and torch.allclose(nq.float().square().mean(-1), torch.ones(3, 4), atol=0.02)


@pytest.mark.parametrize("config", ["adaptive interface norm", "text cond, self-cond", "deep, custom load"])
def test_bf16_streams_carry_tokens_and_latents_in_bf16_with_the_float32_streams_values(config):
    """model.bf16_streams under bf16 autocast: the collected activations and latents are bf16 (they were float32),
    the output and the gradients are the float32-stream model's within bf16 rounding; without autocast nothing changes."""
    outs = {}
    for streams in (False, True):
        recipe = tiny_recipe(**CONFIGS[config], bf16_streams=streams)
        torch.manual_seed(0)
        net = randomize(HPDMNet(recipe.pyramid, recipe.model))
        x, c_noise, off, c = make_inputs(recipe)
        with torch.no_grad():
            plain = net(x, c_noise, off, c).out                                 # no autocast: float32 throughout
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res = net(x, c_noise, off, c, collect=True, return_latents=True)
        acts = [t for level in res.collected.values() for t in level.values()]
        want = torch.bfloat16 if streams else torch.float32
        assert acts and all(t.dtype == want for t in acts) and res.latents.dtype == want, streams
        net.zero_grad()
        (res.out.float() * torch.linspace(-1, 1, res.out.numel()).view_as(res.out)).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
        outs[streams] = plain, res.out.float(), grads
    assert torch.equal(outs[False][0], outs[True][0])                           # the option needs autocast
    ref, got = outs[False][1], outs[True][1]
    assert 0 < (got - ref).abs().max() < 0.05 * ref.abs().max()
    gref, ggot = outs[False][2], outs[True][2]
    assert (ggot - gref).norm() < 0.05 * gref.norm()


@pytest.mark.parametrize("autocast", [False, True])
def test_interface_convolution_by_shifts_equals_torch_conv3d(autocast, monkeypatch):
    """The two computations of the token-grid convolution agree in outputs and in all three gradients."""
    from hpdm_cli.model.layers import GridConv
    torch.manual_seed(0)
    conv = GridConv(16, (2, 3, 4))
    with torch.no_grad():
        conv.weight.normal_(std=0.3)
        conv.bias.normal_()
    x0 = torch.randn(5, 24, 16)
    # A bump at one token reaches exactly its 3x3x3 neighbourhood (zero padding at the borders).
    reach = GridConv(1, (2, 3, 4))
    with torch.no_grad():
        reach.weight.fill_(1.0)
    bump = torch.zeros(1, 24, 1)
    bump[0, 0, 0] = 1.0                                             # token (0, 0, 0): a corner
    for method in ("conv3d", "shifts"):
        monkeypatch.setattr(GridConv, "method", method)
        assert reach(bump).reshape(2, 3, 4).ne(0).sum().item() == 2 * 2 * 2
    got = {}
    for method in ("conv3d", "shifts"):
        monkeypatch.setattr(GridConv, "method", method)
        conv.zero_grad()
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = conv(x)
        assert y.dtype == (torch.bfloat16 if autocast else torch.float32)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        got[method] = (y.float(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone())
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(got["conv3d"], got["shifts"]):
        torch.testing.assert_close(a, b, **tol)
    # ... and the float32 computation's weight gradient: on CPUs with native bf16, torch's own Conv3d
    # weight gradient under bf16 autocast is wrong, which GridConv avoids by running it in float32 there.
    monkeypatch.setattr(GridConv, "method", "conv3d")
    conv.zero_grad()
    y = conv(x0)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    torch.testing.assert_close(got["conv3d"][2], conv.weight.grad, **tol)
    monkeypatch.setattr(GridConv, "method", "nope")
    with pytest.raises(ValueError, match="GridConv.method 'nope'"):
        conv(x0)


def test_interface_convolution_auto_follows_the_table_per_device_and_compilation(monkeypatch):
    """"auto" looks up (device type, compiling) in GridConv.FASTEST; a missing entry means Conv3d."""
    from hpdm_cli.model import layers
    from hpdm_cli.model.layers import GridConv
    used = []
    real = layers.F.conv3d
    monkeypatch.setattr(layers.F, "conv3d", lambda *a, **k: used.append("conv3d") or real(*a, **k))
    monkeypatch.setattr(GridConv, "FASTEST", {("cpu", True): "shifts"})
    conv = GridConv(2, (1, 1, 2))
    x = torch.randn(1, 2, 2)
    eager = conv(x)
    monkeypatch.setattr(layers.torch.compiler, "is_compiling", lambda: True)
    shifted = conv(x)
    assert used == ["conv3d"]                                      # eager: Conv3d; "compiling": the shifts
    torch.testing.assert_close(eager, shifted)


def test_interface_convolution_of_any_odd_kernel_equals_torch_conv3d(monkeypatch):
    """A wider, flat kernel (1, 5, 5), as the stripe toy uses, gives the same result both ways; an even size is refused."""
    from hpdm_cli.model.layers import GridConv
    torch.manual_seed(1)
    conv = GridConv(8, (2, 6, 6), (1, 5, 5))
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(3, 72, 8)
    outs = []
    for method in ("conv3d", "shifts"):
        monkeypatch.setattr(GridConv, "method", method)
        outs.append(conv(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must be odd"):
        GridConv(8, (2, 6, 6), (1, 4, 4))
