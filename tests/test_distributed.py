"""N gloo processes at global batch B give the same gradients as one process at B (eager and compiled); DDP train().

docs/method.md, invariant "N ranks equal one process".

Each test spawns two CPU processes joined by a gloo process group on 127.0.0.1.
"""

import json
import os
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from hpdm_cli.diffusion.edm import NoiseDraw, draw_noise
from hpdm_cli.pyramid import sample_nested_offsets
from hpdm_cli.recipe import default_recipe_path, load_recipe
from hpdm_cli.train.loop import unused_parameters
from hpdm_cli.train.step import build_model, forward_backward

WORLD = 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rendezvous_file() -> str:
    """A rendezvous for the ranks: a fresh file store (no TCP port that another process could take meanwhile)."""
    import tempfile
    fd, path = tempfile.mkstemp(prefix="hpdm-gloo-")
    os.close(fd)
    os.unlink(path)
    return path


def _join(rank: int, store: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def tiny(*extra):
    return load_recipe(default_recipe_path("tiny"), ['train.device="cpu"', 'train.precision="fp32"', *extra])


def global_batch(recipe, B: int):
    """A fixed global batch: videos, nested offsets, class labels and one global noise draw."""
    g = torch.Generator().manual_seed(1234)
    L = recipe.pyramid.num_levels
    videos = torch.rand(B, 3, *recipe.pyramid.resolution, generator=g) * 2 - 1
    offsets = sample_nested_offsets(recipe.pyramid, B, generator=g)
    cond = torch.randint(0, recipe.model.num_classes, (B,), generator=g)
    draw = draw_noise(recipe.diffusion, (B, L, 3, *recipe.pyramid.patch), conditional=True, generator=g)
    return videos, offsets, cond, draw


def share_of(draw: NoiseDraw, parts: int, index: int) -> NoiseDraw:
    """The contiguous share `index` of `parts` of one global draw along the batch (a rank's numbers)."""
    def cut(t):
        return None if t is None else t.chunk(parts)[index]
    return NoiseDraw(cut(draw.sigma), cut(draw.weight), cut(draw.noise), cut(draw.keep), draw.self_cond)


def _grads(net) -> dict:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


# ------------------------------------------------- docs/method.md, invariant "N ranks equal one process"

def _grad_job(rank: int, recipe, batch, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP
    videos, offsets, cond, draw = batch
    net = build_model(recipe)
    model = DDP(net, find_unused_parameters=bool(unused_parameters(net, recipe, torch.device("cpu"))))
    share = slice(rank * videos.shape[0] // WORLD, (rank + 1) * videos.shape[0] // WORLD)
    res = forward_backward(model, videos[share], cond[share], recipe, offsets[share], share_of(draw, WORLD, rank),
                           1.0, "fp32")
    save_file(_grads(net), os.path.join(out, f"grads-{rank}.safetensors"))
    # The loop's gradient accumulation: two micro-batches per rank, no all-reduce after the first.
    net.zero_grad(set_to_none=True)
    v, c, o = videos[share], cond[share], offsets[share]
    for a, part in enumerate(torch.arange(v.shape[0]).chunk(2)):
        with model.no_sync() if a == 0 else nullcontext():
            forward_backward(model, v[part], c[part], recipe, o[part], share_of(draw, 2 * WORLD, 2 * rank + a),
                             0.5, "fp32")
    save_file(_grads(net), os.path.join(out, f"grads-accum-{rank}.safetensors"))
    with open(os.path.join(out, f"loss-{rank}.json"), "w") as f:
        json.dump(float(res.loss.detach()), f)
    # `train.compile` under DDP: torch.compile of the DDP module (as the loop builds it), whose graph
    # dynamo splits at DDP's bucket boundaries; "aot_eager" traces forward and backward as inductor
    # would see them without needing a C++ compiler.
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager")
    forward_backward(compiled, videos[share], cond[share], recipe, offsets[share], share_of(draw, WORLD, rank),
                     1.0, "fp32")
    save_file(_grads(net), os.path.join(out, f"grads-compiled-{rank}.safetensors"))
    from torch._dynamo.utils import counters
    with open(os.path.join(out, f"graphs-compiled-{rank}.json"), "w") as f:
        json.dump(int(counters["stats"]["unique_graphs"]), f)


# Training under DDP is self-conditioned, the gradient-free first pass on about half of the steps, drawn by each
# rank on its own (`test_the_ranks_draw_the_first_pass_differently` shows that these 4 steps draw it both ways).
SELF_COND = ["model.self_condition=true", "diffusion.self_cond_prob=0.5"]


def _worker(rank: int, store: str, recipe, batch, overrides: list, out: str) -> None:
    """Both jobs in one pair of processes (process start-up dominates their cost)."""
    _join(rank, store)                         # the process group is ours: train() joins it and leaves it open
    try:
        _grad_job(rank, recipe, batch, os.path.join(out, "grads"))
        _train_job(rank, overrides, os.path.join(out, "train"))
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: with torch 2.13 on the CPU, a rank that ran train() aborts
    # in about one exit of three ("terminate called without an active exception", no Python frame on
    # the stack) after all its work is done and written; the results are in files the test reads.
    os._exit(0)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Run the two-rank jobs once: returns (recipe, global batch, output directory)."""
    from hpdm_cli.data.shapes import write_shapes_dataset
    data = tmp_path_factory.getbasetemp() / "datasets" / "shapes-8x32x32"
    if not (data / "dataset.json").exists():
        write_shapes_dataset(data, num_videos=16, frames=8, height=32, width=32, overwrite=True)
    out = tmp_path_factory.mktemp("ddp")
    (out / "grads").mkdir()
    (out / "train").mkdir()
    recipe = tiny()
    batch = global_batch(recipe, 8)
    overrides = [f"data.path={json.dumps(str(data))}", "train.steps=4", "train.batch_size=4", "train.log_every=1",
                 "train.ckpt_every=2", "train.warmup_steps=1", "train.ema_halflife_steps=2.0", *SELF_COND]
    mp.spawn(_worker, args=(rendezvous_file(), recipe, batch, overrides, str(out)), nprocs=WORLD, join=True)
    return recipe, batch, out


def test_two_gloo_ranks_give_the_gradients_of_one_process(ddp):
    recipe, batch, out = ddp
    tmp_path = out / "grads"

    videos, offsets, cond, draw = batch
    net = build_model(recipe)
    whole = forward_backward(net, videos, cond, recipe, offsets, draw, 1.0, "fp32")
    ref = _grads(net)
    # Under adaptive computation (load [1, 1, 2, 3]) blocks 0 and 1 see level 0 only and have no fusion:
    # every parameter gets a gradient, so DDP has nothing to be told (the loop's probe finds nothing).
    assert unused_parameters(build_model(recipe), recipe, torch.device("cpu")) == []
    assert set(ref) == {n for n, _ in net.named_parameters()}
    ranks = [load_file(str(tmp_path / f"grads-{r}.safetensors")) for r in range(WORLD)]
    accum = [load_file(str(tmp_path / f"grads-accum-{r}.safetensors")) for r in range(WORLD)]
    compiled = [load_file(str(tmp_path / f"grads-compiled-{r}.safetensors")) for r in range(WORLD)]
    assert all(json.loads((tmp_path / f"graphs-compiled-{r}.json").read_text()) >= 1 for r in range(WORLD))
    for got in ranks + accum + compiled:
        assert got.keys() == ref.keys()
        for k in ref:
            assert torch.allclose(got[k], ref[k], rtol=1e-5, atol=1e-6), \
                f"{k}: max diff {(got[k] - ref[k]).abs().max():.3g}"
    for k in ref:                                                      # all-reduced: the ranks agree exactly
        assert torch.equal(ranks[0][k], ranks[1][k]) and torch.equal(accum[0][k], accum[1][k])
        assert torch.equal(compiled[0][k], compiled[1][k])
    # The global loss is the mean of the ranks' losses.
    losses = [json.loads((tmp_path / f"loss-{r}.json").read_text()) for r in range(WORLD)]
    assert sum(losses) / WORLD == pytest.approx(float(whole.loss.detach()), rel=1e-5)


# ------------------------------------------------------------------------------------------ train() under DDP

def _train_job(rank: int, overrides: list, out: str) -> None:
    from hpdm_cli.train.loop import TrainError, train
    recipe = tiny(*overrides)
    report = {"messages": []}
    s = train(recipe, os.path.join(out, "full"), log=report["messages"].append)
    report["full"] = [s.start_step, s.step, s.last_loss]
    s = train(recipe, os.path.join(out, "resumed"), log=lambda m: None, stop_after=2)
    report["stopped"] = [s.start_step, s.step]
    s = train(recipe, os.path.join(out, "resumed"), log=lambda m: None)
    report["resumed"] = [s.start_step, s.step, s.last_loss]
    try:                                  # refused on every rank, not only where the check runs
        train(tiny(*overrides, "model.latent_dim=32"), os.path.join(out, "full"), log=lambda m: None)
    except TrainError as e:
        report["refused"] = str(e)
    with open(os.path.join(out, f"report-{rank}.json"), "w") as f:
        json.dump(report, f)


def test_train_under_two_gloo_ranks_resumes_exactly(ddp):
    from hpdm_cli.train.checkpoint import list_checkpoints, load_checkpoint
    from hpdm_cli.train.stats import read_stats
    tmp_path = ddp[2] / "train"

    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in range(WORLD)]
    for rep in reports:
        assert rep["full"][:2] == [0, 4] and rep["stopped"] == [0, 2] and rep["resumed"][:2] == [2, 4]
        assert rep["resumed"][2] == rep["full"][2] == reports[0]["full"][2]   # every rank logs the global loss
        assert "architecture" in rep["refused"] or "rank 0 refused" in rep["refused"]
    assert "architecture" in reports[0]["refused"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # Blocks that see level 0 only build no fusion, and the self-conditioning weights get a (zero) gradient on
    # steps without the pass: no parameter lacks a gradient, so no DDP warning at all.
    assert not any("DDP:" in m for m in reports[0]["messages"]), reports[0]["messages"]
    assert "DDP:" not in (full / "train.log").read_text()
    rows = read_stats(full)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]                  # one stats.jsonl, written by rank 0 only
    assert [r["loss"] for r in read_stats(resumed)] == [r["loss"] for r in rows]
    assert json.loads((full / "env.json").read_text())["world_size"] == WORLD
    a, b = load_checkpoint(list_checkpoints(full)[-1]), load_checkpoint(list_checkpoints(resumed)[-1])
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert all(torch.equal(a["optimizer"]["state"][i][k], b["optimizer"]["state"][i][k])
               for i in a["optimizer"]["state"] for k in a["optimizer"]["state"][i])
    assert a["state"]["samples_per_rank"] == 4 * 4 // WORLD


def test_the_ranks_draw_the_first_pass_differently():
    """The DDP training above sees a step where one rank runs the self-conditioning pass and the other does not.

    The loop's own draws (`hpdm_cli.train.loop.step_draws`, one micro-batch of 4 // 2 samples per rank): a rank
    that runs the extra, gradient-free forward while the other does not is what DDP must survive.
    """
    from hpdm_cli.train.loop import step_draws
    rec = tiny(*SELF_COND, "train.batch_size=4")
    drawn = [[step_draws(rec, rank, step, 4 // WORLD, True, torch.device("cpu"))[0][1].self_cond
              for rank in range(WORLD)] for step in range(4)]
    assert any(a != b for a, b in drawn), drawn


def _whiten_job(rank: int, store: str, out: str) -> None:
    from hpdm_cli.train.captions import whiten_text_states
    from hpdm_cli.train.optim import make_ema
    _join(rank, store)
    recipe = tiny('model.cond="text"', "model.text_dim=8", "model.text_tokens=2", "model.text_whitening=true")
    net = build_model(recipe)
    ema = make_ema(net, recipe.train)
    own = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(rank)) * (rank + 1)   # each rank's captions
    whiten_text_states(net, ema, own, distributed=True)
    save_file({"mean": net.text_mean, "matrix": net.text_whiten, "ema_mean": ema.shadow["text_mean"],
               "ema_matrix": ema.shadow["text_whiten"], "own": own}, os.path.join(out, f"whiten-{rank}.safetensors"))
    dist.destroy_process_group()


def test_text_whitening_is_rank_zeros_on_every_rank(tmp_path):
    """Ranks that see different captions (synthetic data is split by rank) all take rank 0's statistics."""
    from hpdm_cli.text.whitening import whitening_stats
    mp.spawn(_whiten_job, args=(rendezvous_file(), str(tmp_path)), nprocs=WORLD, join=True)
    got = [load_file(str(tmp_path / f"whiten-{r}.safetensors")) for r in range(WORLD)]
    mean, matrix = whitening_stats(got[0]["own"])
    assert not torch.allclose(whitening_stats(got[1]["own"])[0], mean)         # rank 1's own would differ
    for g in got:
        assert torch.equal(g["mean"], mean) and torch.equal(g["matrix"], matrix)
        assert torch.equal(g["ema_mean"], mean) and torch.equal(g["ema_matrix"], matrix)
