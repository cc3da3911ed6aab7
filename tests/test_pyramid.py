"""Patch pyramid invariants: nesting, coordinates, the exact integer last level (docs/method.md, the first three)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hpdm_cli.config import PyramidConfig
from hpdm_cli.pyramid import (downsample_to_level, extract_patches, level_scales, patch_points, relative_coords,
                              sample_nested_offsets, to_grid_sample)
from hpdm_cli.pyramid.tiles import build_tiles, chain_offsets, shift_phases

PYRAMIDS = {
    "ucf-like (3 levels)": PyramidConfig(resolution=(16, 64, 64), patch=(4, 16, 16)),
    "t2v-like (4 levels)": PyramidConfig(resolution=(16, 72, 128), patch=(2, 9, 16)),
    "time fixed (3 levels)": PyramidConfig(resolution=(4, 32, 32), patch=(4, 8, 8)),
    "images (1 frame)": PyramidConfig(resolution=(1, 32, 32), patch=(1, 8, 8)),
    "2 levels": PyramidConfig(resolution=(8, 16, 16), patch=(4, 8, 8)),
    "tiny recipe (time ratio 2, space 4)": PyramidConfig(resolution=(8, 32, 32), patch=(4, 8, 8)),
    "time ratio 2, space 8 (4 levels)": PyramidConfig(resolution=(4, 64, 64), patch=(2, 8, 8)),
}


def ramp_video(pyr: PyramidConfig, batch: int = 1) -> torch.Tensor:
    """A linear ramp in (t, y, x) sampled at pixel centres, different per channel: [B, 3, F, H, W]."""
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in pyr.resolution]
    t, y, x = torch.meshgrid(*axes, indexing="ij")
    chans = [0.3 * t + 0.5 * y - 0.7 * x, -t + 0.2 * y + 0.1 * x, 0.9 * t - 0.4 * y + 0.6 * x]
    return torch.stack(chans)[None].expand(batch, -1, -1, -1, -1).float().contiguous()


def ramp_at(points: torch.Tensor) -> torch.Tensor:
    """The ramp's three channels at [..., 3] (t, y, x) points -> [..., 3]."""
    t, y, x = points.unbind(-1)
    return torch.stack([0.3 * t + 0.5 * y - 0.7 * x, -t + 0.2 * y + 0.1 * x, 0.9 * t - 0.4 * y + 0.6 * x], -1)


def snapped_axes(pyr: PyramidConfig, level: int) -> list[bool]:
    """Which axes `sample_nested_offsets` puts level `level` on the full-resolution pixel grid along."""
    return [n == R for n, R in zip(pyr.level_resolution(level), pyr.resolution)]


@pytest.mark.parametrize("offsets", ["continuous", "grid"])
@pytest.mark.parametrize("name", list(PYRAMIDS))
def test_patches_are_nested(name, offsets):
    """Each patch lies inside every lower one; a level snapped to whole pixels inside a continuous one may stick
    out of it by at most half a pixel (the nearest whole pixel, so that it can reach the frame's edges)."""
    pyr = dataclasses.replace(PYRAMIDS[name], offsets=offsets)
    g = torch.Generator().manual_seed(1)
    off = sample_nested_offsets(pyr, 2000, generator=g).double()
    s = level_scales(pyr).double()
    full = torch.tensor(pyr.resolution, dtype=torch.float64)
    eps = 1e-6
    assert torch.all(off[:, 0] == 0)
    for l in range(1, pyr.num_levels):
        snapped = snapped_axes(pyr, l)
        for k in range(l):
            # Half a pixel of slack where level l is snapped and level k may not be; none anywhere else.
            on_same_grid = [offsets == "grid" or sk for sk in snapped_axes(pyr, k)]
            slack = torch.tensor([0.5 / R if sl and not sk else 0.0
                                  for sl, sk, R in zip(snapped, on_same_grid, pyr.resolution)], dtype=torch.float64)
            assert torch.all(off[:, l] >= off[:, k] - slack - eps), (l, k)
            assert torch.all(off[:, l] + s[l] <= off[:, k] + s[k] + slack + eps), (l, k)
        # Every patch stays inside the video.
        assert torch.all(off[:, l] >= -eps) and torch.all(off[:, l] + s[l] <= 1 + eps), l
        room = s[l - 1] - s[l]
        # The offsets spread over the whole admissible range (not a degenerate sampler).
        rel = (off[:, l] - off[:, l - 1])
        for a in range(3):
            if room[a] > 0:
                tol = 0.5 / full[a] + eps
                assert rel[:, a].min() <= 0.1 * room[a] + tol and rel[:, a].max() >= 0.9 * room[a] - tol


@pytest.mark.parametrize("name", ["ucf-like (3 levels)", "t2v-like (4 levels)"])
def test_continuous_offsets_are_uniform_inside_the_parent(name):
    """delta_l ~ U[delta_{l-1}, delta_{l-1} + s_{l-1} - s_l] (docs/method.md, section 3): along an axis that is
    not snapped, the offset's place in its admissible range has the uniform law's quartiles and mean."""
    pyr = PYRAMIDS[name]
    off = sample_nested_offsets(pyr, 20000, generator=torch.Generator().manual_seed(5)).double()
    s = level_scales(pyr).double()
    checked = 0
    for l in range(1, pyr.num_levels):
        room = s[l - 1] - s[l]
        for a, snapped in enumerate(snapped_axes(pyr, l)):
            if snapped or room[a] <= 0:
                continue
            q = (off[:, l, a] - off[:, l - 1, a]) / room[a]
            # 20000 draws: each quartile share's standard error is 0.003, the mean's 0.002.
            shares = torch.histc(q, bins=4, min=0, max=1) / len(q)
            assert torch.allclose(shares, torch.full_like(shares, 0.25), atol=0.015), (l, a, shares)
            assert abs(q.mean().item() - 0.5) < 0.01, (l, a)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("offsets", ["continuous", "grid"])
def test_the_last_level_reaches_every_edge_of_the_frame(offsets):
    """The last level, snapped to whole pixels, trains on the frame's first and last pixel along every axis that it
    does not hold whole, with continuous parents too (whose starts almost never sit exactly on a pixel)."""
    pyr = dataclasses.replace(PYRAMIDS["ucf-like (3 levels)"], offsets=offsets)
    off = sample_nested_offsets(pyr, 100000, generator=torch.Generator().manual_seed(3)).double()
    full = torch.tensor(pyr.resolution, dtype=torch.float64)
    start = (off[:, -1] * full).round()
    end = start + torch.tensor(pyr.patch, dtype=torch.float64)
    for a in range(3):
        at_first = (start[:, a] == 0).double().mean().item()
        at_last = (end[:, a] == full[a]).double().mean().item()
        # A 3-level 16x64^2 pyramid: ~1 in 10^3 patches (continuous) and ~3.5 in 10^3 (grid) touch a spatial edge.
        assert at_first > 2e-4 and at_last > 2e-4, (a, at_first, at_last)


@pytest.mark.parametrize("name", list(PYRAMIDS))
def test_full_resolution_axes_sit_on_integer_pixels(name):
    """Along an axis a level already holds at full resolution, its offset is a whole pixel (no blur)."""
    pyr = PYRAMIDS[name]
    off = sample_nested_offsets(pyr, 500, generator=torch.Generator().manual_seed(9))
    for l in range(pyr.num_levels):
        for a, (n, R) in enumerate(zip(pyr.level_resolution(l), pyr.resolution)):
            if n == R:
                px = off[:, l, a].double() * R
                assert torch.allclose(px, px.round(), atol=1e-4), (l, a)


@pytest.mark.parametrize("name", list(PYRAMIDS))
def test_last_level_is_exact_integer_crop(name):
    pyr = PYRAMIDS[name]
    B = 6
    off = sample_nested_offsets(pyr, B, generator=torch.Generator().manual_seed(2))
    video = torch.randn(B, 3, *pyr.resolution)
    patches = extract_patches(video, pyr, off)
    full = torch.tensor(pyr.resolution, dtype=torch.float64)
    starts = off[:, -1].double() * full
    assert torch.allclose(starts, starts.round(), atol=1e-4)
    for b in range(B):
        f0, h0, w0 = starts[b].round().long().tolist()
        rf, rh, rw = pyr.patch
        crop = video[b, :, f0:f0 + rf, h0:h0 + rh, w0:w0 + rw]
        assert torch.equal(patches[b, -1], crop)                          # bit-exact, no interpolation


@pytest.mark.parametrize("name", list(PYRAMIDS))
def test_grid_offsets_make_every_level_an_exact_crop_of_its_level(name):
    """pyramid.offsets = "grid": each level's patch is a whole-pixel crop of the box-filtered level video."""
    pyr = dataclasses.replace(PYRAMIDS[name], offsets="grid")
    B = 400
    off = sample_nested_offsets(pyr, B, generator=torch.Generator().manual_seed(4))
    s = level_scales(pyr)
    for l in range(1, pyr.num_levels):                                    # still nested
        assert torch.all(off[:, l] >= off[:, l - 1] - 1e-6)
        assert torch.all(off[:, l] + s[l] <= off[:, l - 1] + s[l - 1] + 1e-6)
    video = torch.randn(6, 3, *pyr.resolution)
    patches = extract_patches(video, pyr, off[:6])
    for l in range(pyr.num_levels):
        n = torch.tensor(pyr.level_resolution(l), dtype=torch.float64)
        starts = off[:, l].double() * n
        assert torch.allclose(starts, starts.round(), atol=1e-4), l
        # Every whole-pixel position inside the parent is drawn (here: the first and last ones).
        room = ((s[l - 1] - s[l]).double() * n).round() if l else torch.zeros(3)
        rel = (starts - off[:, max(l - 1, 0)].double() * n).round()
        assert torch.equal(rel.min(0).values, torch.zeros(3, dtype=rel.dtype))
        assert torch.equal(rel.max(0).values, room.to(rel.dtype))
        level = downsample_to_level(video, pyr, l)
        for b in range(6):
            f0, h0, w0 = starts[b].round().long().tolist()
            rf, rh, rw = pyr.patch
            assert torch.equal(patches[b, l], level[b, :, f0:f0 + rf, h0:h0 + rh, w0:w0 + rw]), (l, b)


# Even patches, each with the tiling its sampler uses: the pyramids of pyramid.offsets = "tiles".
TILED = {
    "3 levels, shift-fhw": PyramidConfig(resolution=(16, 64, 64), patch=(4, 16, 16), overlap="shift-fhw"),
    "4 levels, hw": PyramidConfig(resolution=(32, 128, 128), patch=(4, 16, 16), overlap="hw"),
    "tiny, no overlap": PyramidConfig(resolution=(8, 32, 32), patch=(4, 8, 8), overlap="none"),
    "time fixed, fhw": PyramidConfig(resolution=(4, 32, 32), patch=(4, 8, 8), overlap="fhw"),
}


def tile_index(pyr: PyramidConfig, top: torch.Tensor) -> torch.Tensor:
    """The last-level tile of `build_tiles(pyr, pyr.overlap)` whose offset is each row of top [B, 3]."""
    tiles = build_tiles(pyr, pyr.overlap)[-1]
    res = torch.tensor(tiles.resolution)
    key = lambda starts: (starts[:, 0] * res[1] + starts[:, 1]) * res[2] + starts[:, 2]     # noqa: E731
    lookup = torch.full((int(res.prod()),), -1, dtype=torch.long)
    lookup[key(tiles.starts)] = torch.arange(tiles.num_tiles)
    starts = (top.double() * res).round().long()
    assert torch.allclose(top.double() * res, starts.double(), atol=1e-4)      # on the level's pixel grid
    return lookup[key(starts)]


@pytest.mark.parametrize("name", list(TILED))
def test_tile_offsets_are_the_samplers_tile_chains(name):
    """pyramid.offsets = "tiles": each drawn chain is a sampling tile with its ancestors, each tile as often as
    sampling's calls evaluate it (equally often without shifts; a shifted axis's end tiles in both phases)."""
    pyr = dataclasses.replace(TILED[name], offsets="tiles")
    chains = chain_offsets(build_tiles(pyr, pyr.overlap), pyr.num_levels - 1)     # [T, L, 3]
    T = chains.shape[0]
    off = sample_nested_offsets(pyr, 200 * T, generator=torch.Generator().manual_seed(6))
    idx = tile_index(pyr, off[:, -1])
    assert torch.all(idx >= 0)                                  # the last level sits on a sampling tile
    assert torch.equal(off, chains[idx])                        # with the ancestors sampling gives that tile
    counts = torch.bincount(idx, minlength=T).double()
    last = build_tiles(pyr, pyr.overlap)[-1]
    calls = torch.zeros(T, dtype=torch.float64)
    for index, _ in shift_phases(last, pyr.overlap):
        calls[index] += 1
    expected = 200 * T * calls / calls.sum()
    assert torch.all((counts / expected - 1).abs() < 0.4), (counts / expected).aminmax()
    s = level_scales(pyr)
    for l in range(1, pyr.num_levels):                          # nested, as every training chain must be
        assert torch.all(off[:, l] >= off[:, l - 1] - 1e-6)
        assert torch.all(off[:, l] + s[l] <= off[:, l - 1] + s[l - 1] + 1e-6)
    # every level a whole-pixel crop of its level video, as with "grid"
    video = torch.randn(4, 3, *pyr.resolution)
    patches = extract_patches(video, pyr, off[:4])
    for l in range(pyr.num_levels):
        starts = (off[:4, l].double() * torch.tensor(pyr.level_resolution(l))).round().long()
        level = downsample_to_level(video, pyr, l)
        for b in range(4):
            f0, h0, w0 = starts[b].tolist()
            rf, rh, rw = pyr.patch
            assert torch.equal(patches[b, l], level[b, :, f0:f0 + rf, h0:h0 + rh, w0:w0 + rw]), (l, b)


@pytest.mark.parametrize("overlap", ["shift-fhw", "fhw", "none"])
def test_tile_offsets_train_the_frame_edges_as_often_as_sampling_tiles_them(overlap):
    """Nested uniform offsets put a 4-level pyramid's last level at the bottom edge ~2 in 10^4 times; tiles as often
    as sampling's calls evaluate a tile there, counted over a cycle of its shift phases."""
    pyr = PyramidConfig(resolution=(32, 128, 128), patch=(4, 16, 16), overlap=overlap, offsets="grid")
    s = level_scales(pyr)[-1]
    at_edge = lambda off: ((off[:, -1] + s) > 1 - 1e-6).double().mean(0)      # noqa: E731  per axis (t, y, x)
    g = torch.Generator().manual_seed(7)
    nested = at_edge(sample_nested_offsets(pyr, 100_000, generator=g))
    tiled = at_edge(sample_nested_offsets(dataclasses.replace(pyr, offsets="tiles"), 100_000, generator=g))
    last = build_tiles(pyr, pyr.overlap)[-1]
    calls = [last.offsets[index] for index, _ in shift_phases(last, overlap)]    # the tiles each call evaluates
    evaluated = torch.cat(calls)
    sampling = ((evaluated + s.double()) > 1 - 1e-6).double().mean(0)
    expected = {"shift-fhw": 2 / 17, "fhw": 1 / 15, "none": 1 / 8}[overlap]    # end tiles in both phases: 2 of 17
    assert torch.allclose(sampling[1:], torch.full((2,), expected, dtype=torch.float64)), sampling
    assert torch.all(nested[1:] < 2e-3) and nested[0] < 0.01, nested     # (time: 5 positions a level, not 17)
    assert torch.allclose(tiled, sampling, atol=0.005), (tiled, sampling)


def test_tile_offsets_come_from_the_generator():
    """A seeded generator draws the same tile chains again; another seed other ones."""
    pyr = dataclasses.replace(TILED["3 levels, shift-fhw"], offsets="tiles")
    draw = lambda seed: sample_nested_offsets(pyr, 64, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


@pytest.mark.parametrize("name", list(PYRAMIDS))
def test_extraction_reproduces_a_ramp_at_every_level(name):
    """Eq. 5 with the pixel-centre convention: each level's patch is the ramp at its pixels' global positions."""
    pyr = PYRAMIDS[name]
    B = 5
    off = sample_nested_offsets(pyr, B, generator=torch.Generator().manual_seed(3))
    patches = extract_patches(ramp_video(pyr, B), pyr, off)
    s = level_scales(pyr)
    for l in range(pyr.num_levels):
        pts = patch_points(s[l], off[:, l], tuple(pyr.patch))              # [B, N, 3]
        want = ramp_at(pts).transpose(1, 2).reshape(B, 3, *pyr.patch)
        assert torch.allclose(patches[:, l], want, atol=1e-5), l


@pytest.mark.parametrize("name", list(PYRAMIDS))
def test_recomputed_coordinates_eq8_reproduce_finer_patch(name):
    """Grid-sampling level k's patch at c_hat(c_l, c_k) gives level l's patch (inside patch k's sample hull)."""
    pyr = PYRAMIDS[name]
    B = 5
    off = sample_nested_offsets(pyr, B, generator=torch.Generator().manual_seed(4))
    patches = extract_patches(ramp_video(pyr, B), pyr, off)
    s = level_scales(pyr)
    r = tuple(pyr.patch)
    checked = 0
    for l in range(1, pyr.num_levels):
        for k in range(l):
            rel_s, rel_o = relative_coords(s, off, l, k)
            pts = patch_points(rel_s, rel_o, r)                           # level l's pixels in patch k's frame
            got = F.grid_sample(patches[:, k], to_grid_sample(pts, r), mode="bilinear", padding_mode="border",
                                align_corners=False).reshape(B, 3, -1)
            want = patches[:, l].reshape(B, 3, -1)
            lo = 0.5 / torch.tensor(r)
            inside = ((pts >= lo - 1e-6) & (pts <= 1 - lo + 1e-6)).all(-1)  # within the centres' hull
            assert inside.float().mean() > 0.3
            diff = (got - want).abs().amax(1)
            assert diff[inside].max() < 1e-5, (l, k)
            checked += int(inside.sum())
    assert checked > 0


def test_the_ramp_test_catches_the_other_pixel_convention(monkeypatch):
    """Extraction resampled with the other convention (`align_corners=True`) misses the ramp by far more than the
    ramp test's tolerance: that test guards the half-pixel convention (docs/method.md, section 2)."""
    import hpdm_cli.pyramid.extract as extract
    grid_sample = F.grid_sample
    monkeypatch.setattr(extract.F, "grid_sample", lambda *a, **k: grid_sample(*a, **{**k, "align_corners": True}))
    pyr = PYRAMIDS["ucf-like (3 levels)"]
    off = sample_nested_offsets(pyr, 3, generator=torch.Generator().manual_seed(5))
    patches = extract_patches(ramp_video(pyr, 3), pyr, off)
    pts = patch_points(level_scales(pyr)[1], off[:, 1], tuple(pyr.patch))
    want = ramp_at(pts).transpose(1, 2).reshape(3, 3, *pyr.patch)
    assert (patches[:, 1] - want).abs().max() > 1e-2


@pytest.mark.parametrize("name", list(PYRAMIDS))
def test_levels_are_box_filtered_area_averages(name):
    """Level l's video is the mean of the 2^k full-resolution pixels each of its pixels covers (an area average,
    alias-free for any factor: docs/method.md, section 2): a random video's blocks, and a pattern alternating
    +-1 along every resampled axis, which a box filter averages to zero and a two-tap interpolation does not."""
    pyr = PYRAMIDS[name]
    video = torch.rand(2, 3, *pyr.resolution, generator=torch.Generator().manual_seed(1))
    for level in range(pyr.num_levels - 1):
        low = pyr.level_resolution(level)
        k = [R // n for R, n in zip(pyr.resolution, low)]
        blocks = video.reshape(2, 3, low[0], k[0], low[1], k[1], low[2], k[2]).mean((3, 5, 7))
        assert torch.allclose(downsample_to_level(video, pyr, level), blocks, atol=1e-6), level
        pattern = torch.ones(pyr.resolution)
        for axis, n in enumerate(pyr.resolution):
            if k[axis] > 1:                              # +-1 along the axes this level resamples
                shape = [1, 1, 1]
                shape[axis] = n
                pattern = pattern * ((-1.0) ** torch.arange(n)).reshape(shape)
        low_pattern = downsample_to_level(pattern[None, None], pyr, level)
        assert low_pattern.abs().max() < 1e-6, level


def test_extraction_rejects_wrong_video_size():
    pyr = PYRAMIDS["2 levels"]
    off = sample_nested_offsets(pyr, 1)
    with pytest.raises(ValueError, match="pyramid.resolution"):
        extract_patches(torch.zeros(1, 3, 8, 16, 17), pyr, off)


def test_edge_proximity_reads_one_on_the_outermost_tokens_of_the_frame_only():
    """Every level's token at a face of the video reads 1 for that face, the next one in e^-1; a tile's edge
    inside the frame reads far less, though its tokens sit at the same place in their patch."""
    from hpdm_cli.pyramid.geometry import edge_proximity, global_token_coords
    pyr = PyramidConfig(resolution=(16, 64, 64), patch=(4, 16, 16), overlap="none", offsets="grid")
    grid = (4, 8, 8)                                                       # 1x2x2 pixels per token
    s = level_scales(pyr)                                                  # level 2: (1/4, 1/4, 1/4)
    off = torch.zeros(2, 3, 3)
    off[0, 1] = 1 - s[1]                                                   # sample 0: levels 1-2 at the far corner
    off[0, 2] = 1 - s[2]
    off[1, 1] = torch.tensor([0.0, 0.25, 0.25])                            # sample 1: inside the frame
    off[1, 2] = torch.tensor([0.0, 0.25, 0.25])
    e = edge_proximity(s, global_token_coords(s, off, grid), grid).reshape(2, 3, *grid, 6)
    faces = dict(t0=0, t1=1, y0=2, y1=3, x0=4, x1=5)
    torch.testing.assert_close(e[0, 0, :, :, 0, faces["x0"]], torch.ones(4, 8))        # level 0: the whole video
    torch.testing.assert_close(e[0, 0, :, :, 1, faces["x0"]], torch.full((4, 8), math.exp(-1)))
    for l in (1, 2):
        torch.testing.assert_close(e[0, l, :, -1, :, faces["y1"]], torch.ones(4, 8))           # the far corner
        torch.testing.assert_close(e[0, l, :, :, -2, faces["x1"]], torch.full((4, 8), math.exp(-1)))
        assert e[0, l, :, 0, :, faces["y0"]].max() < 1e-3                                      # far from y = 0
        assert e[1, l, ..., 2:].max() < 0.05, l                               # an inner tile's own edges: ~e^-3 or less
    assert torch.equal(e, e.clamp(0, 1))
