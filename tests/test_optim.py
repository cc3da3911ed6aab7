"""Tests for hpdm_cli.train.optim: LAMB, param_groups, lr_at and EMA."""

from __future__ import annotations

import contextlib
import copy
import math
import pickle

import pytest
import torch
from torch import nn

from hpdm_cli.train.optim import EMA, Lamb, lr_at, param_groups, unwrap_model


# ----------------------------------------------------------------------------------------------
# Naive reference LAMB: pure python floats, per element, straight from the published equations.
# ----------------------------------------------------------------------------------------------


class NaiveLamb:
    """Reference LAMB over flat python float lists (float64), one tensor at a time."""

    def __init__(self, groups, lr, betas, eps):
        # groups: list of dicts {"params": [list[float], ...], "weight_decay": float, "trust": bool}
        self.groups = groups
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.state = {}

    def step(self, grads):
        """grads: same nesting as groups' params, entries are list[float] or None (skipped)."""
        for gi, group in enumerate(self.groups):
            for pi, w in enumerate(group["params"]):
                g = grads[gi][pi]
                if g is None:
                    continue
                st = self.state.setdefault((gi, pi), {"t": 0, "m": [0.0] * len(w), "v": [0.0] * len(w)})
                st["t"] += 1
                t = st["t"]
                upd = []
                for k in range(len(w)):
                    st["m"][k] = self.b1 * st["m"][k] + (1 - self.b1) * g[k]
                    st["v"][k] = self.b2 * st["v"][k] + (1 - self.b2) * g[k] * g[k]
                    m_hat = st["m"][k] / (1 - self.b1**t)
                    v_hat = st["v"][k] / (1 - self.b2**t)
                    upd.append(m_hat / (math.sqrt(v_hat) + self.eps) + group["weight_decay"] * w[k])
                ratio = 1.0
                if group["trust"]:
                    w_norm = math.sqrt(sum(x * x for x in w))
                    u_norm = math.sqrt(sum(x * x for x in upd))
                    if w_norm > 0 and u_norm > 0:
                        ratio = w_norm / u_norm
                for k in range(len(w)):
                    w[k] -= self.lr * ratio * upd[k]


SHAPES = {
    # group 0: trust ratio, weight decay 0.1
    "g0": [("matrix", (4, 3)), ("zero", (3, 3)), ("conv", (2, 2, 3)), ("bias", (3,)), ("nograd", (2, 2))],
    # group 1: trust ratio, no weight decay (contains a param whose update is exactly zero)
    "g1": [("frozen_grad", (5,)), ("scalar", ()), ("intermittent", (3, 2))],
    # group 2: AdamW-style (no trust ratio), weight decay 0.05
    "g2": [("adamw_matrix", (3, 4)), ("adamw_zero", (2, 3)), ("adamw_bias", (4,))],
}
GROUP_OPTS = {"g0": (0.1, True), "g1": (0.0, True), "g2": (0.05, False)}


def _init_tensor(name, shape, gen):
    if "zero" in name:
        return torch.zeros(shape, dtype=torch.float64)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _grad_for(name, shape, step, gen):
    """Deterministic gradient (None = param has no grad this step)."""
    g = torch.randn(shape, generator=gen, dtype=torch.float64) * (0.5 + step)
    if name == "nograd":
        return None
    if name == "frozen_grad":
        return torch.zeros(shape, dtype=torch.float64)
    if name == "intermittent" and step % 2 == 1:
        return None
    return g


def _groups(gen):
    """The SHAPES parameters as Lamb param groups and as NaiveLamb's float lists (same values)."""
    torch_groups, naive_groups = [], []
    for key, entries in SHAPES.items():
        wd, trust = GROUP_OPTS[key]
        tensors = [nn.Parameter(_init_tensor(n, s, gen)) for n, s in entries]
        torch_groups.append({"params": tensors, "weight_decay": wd, "use_trust_ratio": trust})
        naive_groups.append({"params": [t.detach().flatten().tolist() for t in tensors],
                             "weight_decay": wd, "trust": trust})
    return torch_groups, naive_groups


@pytest.mark.parametrize("foreach", [True, False])
def test_lamb_matches_naive_reference(foreach):
    gen = torch.Generator().manual_seed(0)
    lr, betas, eps = 0.05, (0.9, 0.99), 1e-6
    torch_groups, naive_groups = _groups(gen)
    opt = Lamb(torch_groups, lr=lr, betas=betas, eps=eps, foreach=foreach)
    ref = NaiveLamb(naive_groups, lr=lr, betas=betas, eps=eps)
    nograd_before = torch_groups[0]["params"][4].detach().clone()

    for step in range(6):
        grads_naive = []
        for gi, (key, entries) in enumerate(SHAPES.items()):
            row = []
            for pi, (n, s) in enumerate(entries):
                g = _grad_for(n, s, step, gen)
                torch_groups[gi]["params"][pi].grad = g
                row.append(None if g is None else g.flatten().tolist())
            grads_naive.append(row)
        opt.step()
        ref.step(grads_naive)
        for gi in range(len(torch_groups)):
            for pi, p in enumerate(torch_groups[gi]["params"]):
                expected = torch.tensor(ref.groups[gi]["params"][pi], dtype=torch.float64).reshape(p.shape)
                torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-12)

    # Param without grad: untouched, no state.
    nograd = torch_groups[0]["params"][4]
    assert torch.equal(nograd.detach(), nograd_before)
    assert nograd not in opt.state
    # Zero-initialised tensors moved away from zero.
    assert torch_groups[0]["params"][1].detach().abs().sum() > 0
    # Zero gradient, no weight decay, trust ratio: update is exactly zero -> unchanged param.
    assert torch.equal(torch_groups[1]["params"][0].detach(),
                       torch.tensor(ref.groups[1]["params"][0], dtype=torch.float64))
    # Intermittent grad: step count only advances when a grad is present.
    assert opt.state[torch_groups[1]["params"][2]]["step"].item() == 3


def test_lamb_found_inf_skips_on_the_device_bit_for_bit_and_otherwise_matches_the_reference():
    """found_inf = 0 is the published update; found_inf = 1 (here with NaN and inf gradients) changes nothing.

    Step 0 is skipped too: a skipped first step must not break the later bias corrections.
    """
    gen = torch.Generator().manual_seed(1)
    lr, betas, eps = 0.05, (0.9, 0.99), 1e-6
    torch_groups, naive_groups = _groups(gen)
    opt = Lamb(torch_groups, lr=lr, betas=betas, eps=eps)
    ref = NaiveLamb(naive_groups, lr=lr, betas=betas, eps=eps)
    skipped = {0, 3}
    for step in range(7):
        grads_naive = []
        for gi, (key, entries) in enumerate(SHAPES.items()):
            row = []
            for pi, (n, s) in enumerate(entries):
                g = _grad_for(n, s, step, gen)
                if g is not None and step in skipped and pi == 0:
                    g = g.clone()
                    g.view(-1)[0] = float("nan") if gi == 0 else float("inf")
                torch_groups[gi]["params"][pi].grad = g
                row.append(None if g is None else g.flatten().tolist())
            grads_naive.append(row)
        before = {id(p): (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
                  for g in torch_groups for p in g["params"] if p in opt.state}
        opt.found_inf = torch.tensor(float(step in skipped))
        opt.step()
        if step in skipped:
            for g in torch_groups:
                for p in g["params"]:
                    if id(p) in before:
                        assert torch.equal(p.detach(), before[id(p)][0])
                        assert all(torch.equal(opt.state[p][k], v) for k, v in before[id(p)][1].items())
            assert all(torch.isfinite(p).all() for g in torch_groups for p in g["params"])
            continue
        ref.step(grads_naive)
        for gi in range(len(torch_groups)):
            for pi, p in enumerate(torch_groups[gi]["params"]):
                expected = torch.tensor(ref.groups[gi]["params"][pi], dtype=torch.float64).reshape(p.shape)
                torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-12)
    assert opt.state[torch_groups[0]["params"][0]]["step"].item() == 5        # 7 steps, 2 skipped


def test_ema_keep_applies_or_skips_the_update_on_the_device():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    a, b = EMA(model, halflife_steps=3.0), EMA(model, halflife_steps=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].num_batches_tracked.fill_(5)
    a.update(model)
    b.update(model, keep=torch.tensor(1.0))
    for name in a.shadow:
        torch.testing.assert_close(b.shadow[name], a.shadow[name], rtol=1e-6, atol=1e-7)
    assert b.shadow["1.num_batches_tracked"].item() == 5
    frozen = {k: v.clone() for k, v in b.shadow.items()}
    with torch.no_grad():
        model[0].weight.fill_(5.0)
        model[1].num_batches_tracked.fill_(9)
    b.update(model, keep=torch.tensor(0.0))
    assert all(torch.equal(b.shadow[k], v) for k, v in frozen.items())


def test_the_multi_tensor_gated_lerp_is_the_lerp_and_leaves_every_tensor_when_its_weight_is_zero():
    """The EMA step off the CPU (difference, product with a 0-dim weight, sum) against torch.lerp."""
    from hpdm_cli.train.optim import _lerp_by_tensor
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (7,), (), (2, 3, 5)]
    dsts = [torch.randn(s, generator=gen) for s in shapes]
    srcs = [torch.randn(s, generator=gen) for s in shapes]
    want = [torch.lerp(d, s, 0.25) for d, s in zip(dsts, srcs)]
    moved = [d.clone() for d in dsts]
    _lerp_by_tensor(moved, srcs, torch.tensor(0.25))
    for m, w, d in zip(moved, want, dsts):
        torch.testing.assert_close(m, w, rtol=1e-6, atol=1e-7)
        assert not torch.equal(m, d)
    kept = [d.clone() for d in dsts]
    _lerp_by_tensor(kept, srcs, torch.tensor(0.0))
    assert all(torch.equal(k, d) for k, d in zip(kept, dsts))


@pytest.fixture
def aot_eager_update(monkeypatch):
    """Lamb's compiled update on the CPU through aot_eager (no C++ build), dynamo's caches fresh
    before and after."""
    import torch._dynamo as dynamo
    from hpdm_cli.train import optim
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **k: compile_(f, backend="aot_eager", **k))
    monkeypatch.setattr(optim, "COMPILED_DEVICES", ("cuda", "cpu"))
    optim._compiled.cache_clear()
    dynamo.reset()
    dynamo.utils.counters.clear()
    try:
        yield dynamo
    finally:
        optim._compiled.cache_clear()
        dynamo.reset()


def test_compiled_update_matches_the_eager_one_bit_for_bit_with_one_graph_per_group_whatever_the_rate(
        aot_eager_update):
    """Lamb with compiled=True: the same weights, moments and EMA average as eager over steps whose rate
    changes and one skipped with NaN gradients; one graph per parameter group, none again, none for the EMA.

    The graphs go through aot_eager (no C++ build): what is checked is the traced update and its inputs, a
    rate baked in as a constant, a recompilation per rate or a graph break included.
    """
    dynamo = aot_eager_update
    torch.manual_seed(0)
    nets = [_mlp(), None]
    nets[1] = copy.deepcopy(nets[0])
    opts = [Lamb(param_groups(n, 0.01), lr=1e-2, compiled=c) for n, c in zip(nets, (False, True))]
    emas = [EMA(n, 3.0) for n in nets]
    gen = torch.Generator().manual_seed(2)
    for step in range(5):
        x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 2, generator=gen)
        bad = torch.tensor(float(step == 2))
        for net, opt, ema in zip(nets, opts, emas):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, lr=1e-2, warmup_steps=3, total_steps=5)
            nn.functional.mse_loss(net(x), y).backward()
            if step == 2:
                next(net.parameters()).grad.view(-1)[0] = float("nan")
            opt.found_inf = bad
            opt.step()
            ema.update(net, keep=1.0 - bad)
            opt.zero_grad(set_to_none=True)
        if step == 0:
            assert dynamo.utils.counters["stats"]["unique_graphs"] == 2     # two groups; the EMA is never compiled
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 2
    for p, q in zip(*(n.parameters() for n in nets)):
        assert torch.equal(p, q)
        assert all(torch.equal(opts[0].state[p][k], opts[1].state[q][k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert all(torch.equal(emas[0].shadow[k], emas[1].shadow[k]) for k in emas[0].shadow)
    assert opts[1].state[next(nets[1].parameters())]["step"].item() == 4          # five steps, one skipped


def test_compiled_update_past_the_recompile_limit_runs_eagerly_with_a_warning(aot_eager_update):
    """A parameter layout past dynamo's recompile limit (here 1) is not a crash: the eager update, warned."""
    with aot_eager_update.config.patch(recompile_limit=1):  # (monkeypatch would delete the key on undo)
        _two_layouts_past_the_limit()


def _two_layouts_past_the_limit():
    """Two models of different widths stepped by a plain and a compiled Lamb each; the same weights."""
    for width in (3, 4):                                    # the second model: another layout
        torch.manual_seed(0)
        net = nn.Linear(width, 2, bias=False)
        ref, before = copy.deepcopy(net), net.weight.detach().clone()
        opts = [Lamb(ref.parameters(), lr=0.1), Lamb(net.parameters(), lr=0.1, compiled=True)]
        for m in (ref, net):
            m(torch.ones(1, width)).sum().backward()
        with pytest.warns(UserWarning, match="recompile limit") if width == 4 else contextlib.nullcontext():
            for o in opts:
                o.found_inf = torch.tensor(0.0)
                o.step()
        assert torch.equal(net.weight, ref.weight) and not torch.equal(net.weight, before)


def test_skippable_step_takes_the_rate_at_the_parameters_precision():
    """found_inf = 0 steps as the plain foreach path, whose rate is a Python float: in float64 to ~1e-15, which a
    rate rounded to float32 (relative error ~1e-8) would miss."""
    torch.manual_seed(0)
    nets = [_mlp().double(), None]
    nets[1] = copy.deepcopy(nets[0])
    opts = [Lamb(param_groups(n, 0.01), lr=0.0123456789) for n in nets]
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randn(16, 5, generator=gen).double(), torch.randn(16, 2, generator=gen).double()
        for net, opt, skippable in zip(nets, opts, (False, True)):
            nn.functional.mse_loss(net(x), y).backward()
            opt.found_inf = torch.tensor(0.0) if skippable else None
            opt.step()
            opt.zero_grad(set_to_none=True)
    for p, q in zip(*(n.parameters() for n in nets)):
        torch.testing.assert_close(q, p, rtol=1e-14, atol=1e-16)


def test_compiled_update_compiles_nothing_on_a_cpu(monkeypatch):
    """compiled=True on CPU parameters: the eager update (no gain there), nothing handed to torch.compile."""
    from hpdm_cli.train import optim
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled on a CPU"))
    optim._compiled.cache_clear()
    net = _mlp()
    opt, ema = Lamb(param_groups(net, 0.01), lr=0.1, compiled=True), EMA(net, 2.0)
    net(torch.ones(1, 5)).sum().backward()
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    ema.update(net, keep=torch.tensor(1.0))
    optim._compiled.cache_clear()


@pytest.mark.parametrize("compile_setting,compiled", [(False, False), (True, True), ("max-autotune", True)])
def test_recipe_update_is_compiled_with_the_model(compile_setting, compiled):
    """make_optimizer compiles LAMB's step exactly when train.compile asks."""
    from types import SimpleNamespace

    from hpdm_cli.train.optim import make_ema, make_optimizer
    t = SimpleNamespace(optimizer="lamb", lr=1e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01,
                        compile=compile_setting, ema_halflife_steps=10.0)
    net = _mlp()
    opt = make_optimizer(param_groups(net, 0.01), t)
    assert opt.compiled is compiled
    assert pickle.loads(pickle.dumps(opt)).compiled is compiled           # and a copy of it
    assert make_ema(net, t).halflife_steps == 10.0                       # the EMA: never compiled (one test up)


def test_lamb_trust_ratio_changes_the_step():
    """Sanity: the trust ratio path really differs from the AdamW path (test can fail)."""
    torch.manual_seed(0)
    w0 = torch.randn(8, 8) * 10
    g = torch.randn(8, 8)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    a.grad, b.grad = g.clone(), g.clone()
    Lamb([a], lr=0.01, use_trust_ratio=True).step()
    Lamb([b], lr=0.01, use_trust_ratio=False).step()
    assert not torch.allclose(a, b)
    # With trust ratio, ||delta|| == lr * ||w||.
    torch.testing.assert_close((a - w0).norm(), 0.01 * w0.norm(), rtol=1e-4, atol=0)


def test_lamb_step_is_no_grad_and_float32_paths_agree():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))
    m2 = copy.deepcopy(model)
    x = torch.randn(32, 6)
    opt1 = Lamb(param_groups(model, 0.01), lr=1e-2, foreach=True)
    opt2 = Lamb(param_groups(m2, 0.01), lr=1e-2, foreach=False)
    for _ in range(3):
        for m, o in ((model, opt1), (m2, opt2)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for p in model.parameters():
        assert p.is_leaf and p.grad_fn is None
    for p, q in zip(model.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_lamb_closure_returns_loss():
    p = nn.Parameter(torch.ones(3))
    opt = Lamb([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(3.0)
    assert (p.detach() < 1).all()


def _mlp():
    return nn.Sequential(nn.Linear(5, 12), nn.SiLU(), nn.LayerNorm(12), nn.Linear(12, 2))


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        y = torch.randn(16, 2, generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_lamb_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    model = _mlp()
    opt = Lamb(param_groups(model, 0.05), lr=3e-3, betas=(0.9, 0.95))
    _train(model, opt, 4, seed=1)

    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    _train(model, opt, 5, seed=2)  # uninterrupted

    resumed = _mlp()
    resumed.load_state_dict(saved_model)
    opt2 = Lamb(param_groups(resumed, 0.05), lr=3e-3, betas=(0.9, 0.95))
    opt2.load_state_dict(saved_opt)
    _train(resumed, opt2, 5, seed=2)

    for (n, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    assert opt2.param_groups[0]["names"] == opt.param_groups[0]["names"]
    # A fresh optimiser (no loaded state) would NOT reproduce the trajectory.
    fresh = _mlp()
    fresh.load_state_dict(saved_model)
    _train(fresh, Lamb(param_groups(fresh, 0.05), lr=3e-3, betas=(0.9, 0.95)), 5, seed=2)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


# ----------------------------------------------------------------------------------------------
# param_groups
# ----------------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.out = nn.Linear(8, 4)
        nn.init.zeros_(self.out.weight)
        self.scale = nn.Parameter(torch.ones(8))  # ndim 1
        self.frozen = nn.Parameter(torch.randn(3, 3), requires_grad=False)


def test_param_groups_split():
    torch.manual_seed(0)
    net = _Net()
    groups = param_groups(net, 0.02)
    assert len(groups) == 2
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.02 and decay["use_trust_ratio"] is True
    assert no_decay["weight_decay"] == 0.0 and no_decay["use_trust_ratio"] is False
    assert decay["names"] == ["proj.weight"]
    assert set(no_decay["names"]) == {
        "proj.bias", "norm.weight", "norm.bias", "gn.weight", "gn.bias", "out.weight", "out.bias", "scale",
    }
    assert "frozen" not in decay["names"] + no_decay["names"]
    assert decay["params"][0] is net.proj.weight
    assert any(p is net.out.weight for p in no_decay["params"])
    for g in groups:
        assert len(g["names"]) == len(g["params"])
    # The groups are accepted by the optimiser and extra keys survive.
    opt = Lamb(groups, lr=1e-3)
    assert opt.param_groups[0]["names"] == ["proj.weight"]


def test_param_groups_norm_weight_matrix_and_wrappers():
    class MatNorm(nn.LayerNorm):
        pass

    net = nn.Sequential(nn.Linear(3, 3), MatNorm((2, 3)))  # LayerNorm with a 2-D weight
    groups = param_groups(net, 0.1)
    assert groups[0]["names"] == ["0.weight"]
    assert "1.weight" in groups[1]["names"]

    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    assert unwrap_model(Wrapper(net)) is net
    assert param_groups(Wrapper(net), 0.1)[0]["names"] == ["0.weight"]


# ----------------------------------------------------------------------------------------------
# lr_at
# ----------------------------------------------------------------------------------------------


def test_lr_schedule_shape():
    lr, warm, total, mr = 1e-3, 10, 110, 0.1
    f = lambda s: lr_at(s, lr=lr, warmup_steps=warm, total_steps=total, min_lr_ratio=mr)  # noqa: E731
    # Linear warm-up, first step non-zero, peak at end of warm-up.
    assert f(0) == pytest.approx(lr / warm)
    for s in range(warm):
        assert f(s) == pytest.approx(lr * (s + 1) / warm)
    assert f(warm - 1) == pytest.approx(lr)
    assert f(warm) == pytest.approx(lr)
    # Cosine decay: midpoint is the mean of peak and min, monotone, ends at min.
    assert f(warm + (total - warm) // 2) == pytest.approx((lr + lr * mr) / 2)
    mid = warm + (total - warm) // 2                                     # cosine: point-symmetric about the middle
    for k in (10, 25, 50):
        assert f(mid - k) + f(mid + k) == pytest.approx(lr + lr * mr)
    assert f(mid - 25) - f(mid) > f(warm) - f(mid - 25)                  # steepest in the middle, flat at the ends
    vals = [f(s) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert f(total) == pytest.approx(lr * mr)
    assert f(total + 1000) == pytest.approx(lr * mr)


def test_lr_schedule_edge_cases():
    # No warm-up: starts at the peak.
    assert lr_at(0, lr=2.0, warmup_steps=0, total_steps=100) == pytest.approx(2.0)
    assert lr_at(50, lr=2.0, warmup_steps=0, total_steps=100) == pytest.approx(1.0)
    assert lr_at(100, lr=2.0, warmup_steps=0, total_steps=100) == 0.0
    # Warm-up longer than training: linear the whole way, finite, min after the end.
    vals = [lr_at(s, lr=1.0, warmup_steps=20, total_steps=10) for s in range(10)]
    assert vals == pytest.approx([(s + 1) / 20 for s in range(10)])
    assert lr_at(10, lr=1.0, warmup_steps=20, total_steps=10, min_lr_ratio=0.5) == 0.5
    assert lr_at(9, lr=1.0, warmup_steps=10, total_steps=10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_at(-1, lr=1.0, warmup_steps=0, total_steps=10)


# ----------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------


def test_ema_step_response_matches_halflife():
    lin = nn.Linear(3, 2)
    bn = nn.BatchNorm1d(2)  # adds float buffers and an integer buffer
    model = nn.Sequential(lin, bn)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    h = 4.0
    ema = EMA(model, halflife_steps=h)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        bn.num_batches_tracked.fill_(7)
    for k in range(1, 13):
        ema.update(model)
        expected = 1 - 0.5 ** (k / h)
        for name, p in model.named_parameters():
            torch.testing.assert_close(ema.shadow[name], torch.full_like(p, expected), rtol=1e-6, atol=1e-7)
    assert ema.shadow["1.num_batches_tracked"].item() == 7
    assert ema.shadow["0.weight"].dtype == torch.float32


def test_ema_constant_model_converges_and_halflife_zero():
    torch.manual_seed(0)
    model = _mlp()
    target = copy.deepcopy(model.state_dict())
    ema = EMA(_mlp(), halflife_steps=2.0)  # starts from different weights
    for _ in range(100):
        ema.update(model)
    for name, t in target.items():
        torch.testing.assert_close(ema.shadow[name], t.float(), rtol=0, atol=1e-6)

    ema0 = EMA(_mlp(), halflife_steps=0)
    ema0.update(model)
    for name, t in target.items():
        assert torch.equal(ema0.shadow[name], t.float())


def test_ema_state_dict_round_trip_and_copy_to():
    torch.manual_seed(0)
    model = _mlp().to(torch.bfloat16)
    ema = EMA(model, halflife_steps=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    sd = ema.state_dict()
    assert all(isinstance(v, torch.Tensor) and v.is_contiguous() for v in sd.values())
    assert set(sd) == set(dict(model.named_parameters()))

    ema2 = EMA(_mlp(), halflife_steps=3.0)
    ema2.load_state_dict(sd)
    for k in sd:
        assert torch.equal(ema2.shadow[k], sd[k])
    sd[next(iter(sd))].add_(1.0)  # state_dict is a copy, not a view
    assert not torch.equal(ema.shadow[next(iter(sd))], sd[next(iter(sd))])

    with pytest.raises(KeyError):
        ema2.load_state_dict({"nope": torch.zeros(1)})

    target = _mlp()
    ema2.copy_to(target)
    for name, p in target.named_parameters():
        torch.testing.assert_close(p.detach(), ema.shadow[name])

    # Wrapped models are unwrapped (names without prefixes).
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m
            self._orig_mod = m

    wrapped_ema = EMA(Wrapper(target), halflife_steps=1.0)
    assert set(wrapped_ema.shadow) == set(sd)
    wrapped_ema.update(Wrapper(target))
    wrapped_ema.copy_to(Wrapper(_mlp()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lamb_and_ema_cuda_match_cpu():
    torch.manual_seed(0)
    cpu = _mlp()
    gpu = copy.deepcopy(cpu).cuda()
    opt_c = Lamb(param_groups(cpu, 0.05), lr=3e-3)
    opt_g = Lamb(param_groups(gpu, 0.05), lr=3e-3)
    ema_c, ema_g = EMA(cpu, 5.0), EMA(gpu, 5.0)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 2, generator=gen)
        for m, o, e, dev in ((cpu, opt_c, ema_c, "cpu"), (gpu, opt_g, ema_g, "cuda")):
            o.zero_grad()
            nn.functional.mse_loss(m(x.to(dev)), y.to(dev)).backward()
            o.step()
            e.update(m)
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-4, atol=1e-6)
    for k in ema_c.shadow:
        torch.testing.assert_close(ema_c.shadow[k], ema_g.shadow[k].cpu(), rtol=1e-4, atol=1e-6)
    opt_g2 = Lamb(param_groups(gpu, 0.05), lr=3e-3)
    opt_g2.load_state_dict(opt_c.state_dict())  # CPU state loads onto CUDA params
    assert opt_g2.state[next(gpu.parameters())]["exp_avg"].is_cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gated_ema_on_cuda_matches_the_cpu_and_skips_bit_for_bit():
    torch.manual_seed(0)
    cpu = _mlp()
    gpu = copy.deepcopy(cpu).cuda()
    ema_c, ema_g = EMA(cpu, 5.0), EMA(gpu, 5.0)
    with torch.no_grad():
        for m in (cpu, gpu):
            for p in m.parameters():
                p.add_(1.0)
    ema_c.update(cpu, keep=torch.tensor(1.0))
    ema_g.update(gpu, keep=torch.tensor(1.0, device="cuda"))
    for k in ema_c.shadow:
        torch.testing.assert_close(ema_c.shadow[k], ema_g.shadow[k].cpu(), rtol=1e-6, atol=1e-7)
    frozen = {k: v.clone() for k, v in ema_g.shadow.items()}
    ema_g.update(gpu, keep=torch.tensor(0.0, device="cuda"))
    assert all(torch.equal(ema_g.shadow[k], v) for k, v in frozen.items())


def test_ema_state_dict_loads_strictly_into_a_model_with_non_persistent_buffers():
    """EMA keeps exactly the model's state_dict keys (non-persistent buffers are not saved)."""
    from hpdm_cli.recipe import load_recipe
    from hpdm_cli.train.step import build_model
    net = build_model(load_recipe("recipes/tiny.toml"))
    assert any(True for _ in net.buffers())
    ema = EMA(net, 10.0)
    assert set(ema.state_dict()) == set(net.state_dict())
    net.load_state_dict(ema.state_dict(), strict=True)
