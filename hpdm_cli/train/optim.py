"""Optimisation utilities for the training loop: LAMB, parameter groups, LR schedule and EMA.

* :class:`Lamb` -- LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"):
  Adam moments with bias correction, decoupled weight decay added to the Adam update and a
  layer-wise trust ratio ``||w|| / ||update||`` (1 when either norm is 0).  Param groups with
  ``use_trust_ratio=False`` take a plain AdamW-style step.
* :func:`param_groups` -- splits a model's parameters into a decay/trust group and a
  no-decay/no-trust group (biases, normalisation params, ndim <= 1 params, all-zero tensors).
* :func:`lr_at` -- linear warm-up followed by cosine decay.
* :class:`EMA` -- float32 exponential moving average of a model's parameters and buffers,
  parameterised by a half-life in optimisation steps.
* :func:`make_optimizer`, :func:`clip_gradients`, :func:`make_ema` -- the recipe's optimiser,
  gradient clipping and EMA, as training (and `hpdm bench`, which steps as training does) use them.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["Lamb", "param_groups", "lr_at", "EMA", "unwrap_model", "make_optimizer", "clip_gradients", "make_ema"]


# ----------------------------------------------------------------------------------------------
# LAMB
# ----------------------------------------------------------------------------------------------


class Lamb(torch.optim.Optimizer):
    """LAMB optimiser: Adam update + decoupled weight decay, scaled by a layer-wise trust ratio.

    For each parameter ``w`` with gradient ``g`` at (per-parameter) step ``t``::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        u = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps) + weight_decay * w
        r = ||w|| / ||u||  if use_trust_ratio and both norms > 0  else 1
        w = w - lr * r * u

    Per-group options: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``use_trust_ratio``
    (default True).  Extra keys (e.g. ``names`` from :func:`param_groups`) are kept untouched.
    Parameters whose ``grad`` is None are skipped (their step count does not advance).
    ``foreach=None`` uses the vectorised ``torch._foreach_*`` path; ``False`` forces the
    per-tensor reference loop (same maths).

    Like torch's fused optimisers, a ``found_inf`` attribute (a 0-dim float tensor on the
    parameters' device, set before ``step``) skips the step on the device where it is non-zero:
    parameters, moments and step counts stay exactly as they were, whatever the gradients hold,
    and the host never waits for the device to decide (the training loop's step has no sync).

    ``compiled=True`` runs that skippable step on a GPU through ``torch.compile`` (a graph per parameter
    layout, i.e. per group and (device, dtype) bucket, built on its first step and shared by every
    Lamb in the process; the learning rate enters as a device tensor, so a schedule does not
    recompile). Its lists of 0-dim tensors (bias corrections, trust ratios) and per-tensor gradient
    masks are otherwise one kernel per parameter tensor each; compiled, they fuse into a few
    kernels. Same maths, rounding aside.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        use_trust_ratio: bool = True,
        *,
        foreach: bool | None = None,
        compiled: bool = False,
    ):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            use_trust_ratio=bool(use_trust_ratio),
            foreach=foreach,
        )
        super().__init__(params, defaults)
        self.compiled = bool(compiled)

    def __getstate__(self):
        """The pickled state: torch's, and whether the step is compiled."""
        return {**super().__getstate__(), "compiled": self.compiled}

    def __setstate__(self, state):
        """Restore pickled state, filling defaults added in later versions."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("use_trust_ratio", True)
            group.setdefault("foreach", None)
        self.__dict__.setdefault("compiled", False)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """Perform one optimisation step; ``closure`` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("Lamb does not support complex parameters")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue

            kwargs = dict(
                lr=float(group["lr"]),
                beta1=float(group["betas"][0]),
                beta2=float(group["betas"][1]),
                eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]),
                use_trust_ratio=bool(group.get("use_trust_ratio", True)),
            )
            foreach = group.get("foreach")
            if foreach is None:
                foreach = not torch.jit.is_scripting()
            found_inf = getattr(self, "found_inf", None)
            if not foreach:
                if found_inf is None or not bool(found_inf):       # reference path: skips on the host
                    _lamb_single(params, grads, exp_avgs, exp_avg_sqs, steps, **kwargs)
                continue
            if found_inf is not None:                               # the skip-aware path counts on the device
                for i, p in enumerate(params):
                    if steps[i].device != p.device:
                        steps[i] = self.state[p]["step"] = steps[i].to(p.device)
            # Bucket by (device, dtype): foreach kernels need homogeneous lists.
            buckets: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                buckets.setdefault((p.device, p.dtype), []).append(i)
            for idx in buckets.values():
                lists = ([params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
                         [exp_avg_sqs[i] for i in idx], [steps[i] for i in idx])
                if found_inf is None:
                    _lamb_foreach(*lists, **kwargs)
                    continue
                device = params[idx[0]].device
                # The rate as a tensor filled on the device (no host copy, no recompilation as it changes).
                lr = torch.full((), kwargs["lr"], device=device,
                                dtype=torch.promote_types(params[idx[0]].dtype, torch.float32))
                update = _update_fn(_lamb_foreach_skippable, self.compiled, device)
                update(*lists, found_inf=found_inf.to(device), **dict(kwargs, lr=lr))
        return loss


# The device types whose updates `compiled=True` compiles. On a CPU the eager update launches nothing to
# fuse away: `benchmarks/update_bench.py tiny` measured it 1.01x faster compiled, for 92 s of compilation.
COMPILED_DEVICES = ("cuda",)


def _update_fn(fn: Callable, compiled: bool, device: torch.device) -> Callable:
    """`fn`, compiled (`_compiled`) where `compiled` asks it and `device` is one of COMPILED_DEVICES."""
    return _compiled(fn) if compiled and device.type in COMPILED_DEVICES else fn


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """`fn` through torch.compile, whole (no graph breaks) and at the shapes it meets; one wrapper per function.

    Its graphs are shared by every caller in the process, one per list layout (lengths, shapes, dtypes), up to
    dynamo's recompile limit (8); a layout past it runs `fn` eagerly (same maths) with a warning.
    """
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.FailOnRecompileLimitHit:     # raised before the graph runs: nothing changed
            warnings.warn(f"{fn.__name__}: torch.compile's recompile limit reached (too many parameter layouts "
                          "in one process); this layout runs eagerly", stacklevel=2)
            return fn(*args, **kwargs)
    return run


def _lamb_single(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps,
                 weight_decay, use_trust_ratio):
    """Per-tensor LAMB update (reference path)."""
    for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        s += 1
        t = s.item()
        bc1 = 1.0 - beta1**t
        bc2 = 1.0 - beta2**t
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
        update = (m / bc1).div_(denom)
        if weight_decay != 0.0:
            update.add_(p, alpha=weight_decay)
        if use_trust_ratio:
            norm_dtype = torch.promote_types(p.dtype, torch.float32)
            w_norm = torch.linalg.vector_norm(p, dtype=norm_dtype)
            u_norm = torch.linalg.vector_norm(update, dtype=norm_dtype)
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            update.mul_(ratio.to(update.dtype))
        p.add_(update, alpha=-lr)


def _adam_updates(params, exp_avgs, exp_avg_sqs, bc1, sqrt_bc2, *, eps, weight_decay) -> list:
    """Per tensor, the Adam direction with decoupled weight decay: (m / bc1) / (sqrt(v) / sqrt_bc2 + eps) + wd * w."""
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, sqrt_bc2)
    torch._foreach_add_(denom, eps)
    updates = torch._foreach_div(exp_avgs, bc1)
    torch._foreach_div_(updates, denom)
    del denom
    if weight_decay != 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    return updates


def _trust_ratios(params, updates) -> torch.Tensor:
    """LAMB's layer-wise ||w|| / ||u|| per tensor (1 where either norm is 0), one vector in float32 or wider."""
    norm_dtype = torch.promote_types(params[0].dtype, torch.float32)
    w_norm = torch.stack(torch._foreach_norm(params, 2, dtype=norm_dtype))
    u_norm = torch.stack(torch._foreach_norm(updates, 2, dtype=norm_dtype))
    return torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))


def _lamb_foreach(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps,
                  weight_decay, use_trust_ratio):
    """Vectorised LAMB update over a list of same-device, same-dtype tensors."""
    torch._foreach_add_(steps, 1.0)
    ts = [s.item() for s in steps]
    bc1 = [1.0 - beta1**t for t in ts]
    sqrt_bc2 = [math.sqrt(1.0 - beta2**t) for t in ts]

    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    updates = _adam_updates(params, exp_avgs, exp_avg_sqs, bc1, sqrt_bc2, eps=eps, weight_decay=weight_decay)
    if use_trust_ratio:
        scale = (_trust_ratios(params, updates) * -lr).to(params[0].dtype)
        torch._foreach_mul_(updates, list(scale.unbind(0)))
        torch._foreach_add_(params, updates)
    else:
        torch._foreach_add_(params, updates, alpha=-lr)


def _lamb_foreach_skippable(params, grads, exp_avgs, exp_avg_sqs, steps, *, found_inf, lr, beta1, beta2, eps,
                            weight_decay, use_trust_ratio):
    """The vectorised LAMB update, applied with weight ``keep = 1 - found_inf`` decided on the device.

    Same maths as :func:`_lamb_foreach` when ``keep`` is 1 (``lr`` may be a 0-dim tensor on the device).
    When it is 0 the gradients are zeroed first (NaN and inf included), the moments are scaled by 1
    and added 0, the step counts by 0, and the parameters by 0 times a finite update: all stay bit
    for bit. Step counts live on the device, so no value is read back by the host.
    """
    bad = found_inf != 0
    dtype = exp_avgs[0].dtype
    keep = (~bad).to(dtype)
    for g in grads:
        g.masked_fill_(bad, 0.0)
    # The step counts take `keep` as a list: _foreach_add_ of a 0-dim CUDA tensor to 0-dim tensors
    # synchronises with the host (torch 2.11, measured), its list overload does not.
    torch._foreach_add_(steps, [keep.to(steps[0].dtype)] * len(steps))
    # Bias corrections in float64, as the host computes them in _lamb_foreach; a skipped first
    # step (count 0) takes step 1's, which multiplies a zero update.
    t = torch.stack(steps).double().clamp_min(1.0)           # a few kernels for all tensors, not a few each
    bc1 = list((1.0 - beta1 ** t).to(dtype).unbind(0))
    sqrt_bc2 = list((1.0 - beta2 ** t).sqrt().to(dtype).unbind(0))
    torch._foreach_mul_(exp_avgs, 1.0 - (1.0 - beta1) * keep)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, 1.0 - (1.0 - beta2) * keep)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    updates = _adam_updates(params, exp_avgs, exp_avg_sqs, bc1, sqrt_bc2, eps=eps, weight_decay=weight_decay)
    ratio = _trust_ratios(params, updates) if use_trust_ratio else \
        torch.ones(len(params), dtype=torch.promote_types(params[0].dtype, torch.float32), device=params[0].device)
    scale = (ratio * (-lr * keep.to(ratio.dtype))).to(params[0].dtype)     # 0 (or -0) when skipped
    torch._foreach_mul_(updates, list(scale.unbind(0)))
    torch._foreach_add_(params, updates)


# ----------------------------------------------------------------------------------------------
# Parameter groups
# ----------------------------------------------------------------------------------------------

_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable params into ``[decay+trust group, no-decay/no-trust group]`` with ``names``.

    A parameter goes to the second group (``weight_decay=0``, ``use_trust_ratio=False``) when it
    is a bias, belongs to a LayerNorm/GroupNorm/RMSNorm, has ``ndim <= 1``, is entirely zero at
    call time (e.g. zero-initialised output projections), or is named in the model's
    ``embedding_parameters`` (learned tokens and lookup tables: a trust ratio would tie each
    update to the tiny norm they are initialised with).  Everything else goes to the first group
    (``weight_decay=weight_decay``, ``use_trust_ratio=True``).  Frozen params
    (``requires_grad=False``) are left out.  Both groups are always returned (possibly empty) so
    the group layout, and hence optimiser checkpoints, are stable.
    """
    model = unwrap_model(model)
    embeddings = set(getattr(model, "embedding_parameters", ()))
    norm_param_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            norm_param_ids.update(id(p) for p in module.parameters(recurse=False))

    decay, decay_names, no_decay, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = (
            name == "bias"
            or name.endswith(".bias")
            or id(p) in norm_param_ids
            or p.ndim <= 1
            or not bool(p.detach().any())
            or name in embeddings
        )
        if exclude:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "names": decay_names, "weight_decay": float(weight_decay),
         "use_trust_ratio": True},
        {"params": no_decay, "names": no_decay_names, "weight_decay": 0.0,
         "use_trust_ratio": False},
    ]


# ----------------------------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------------------------


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate at 0-based ``step``: linear warm-up then cosine decay to ``lr * min_lr_ratio``.

    * warm-up (``step < warmup_steps``): ``lr * (step + 1) / warmup_steps``, so step 0 is non-zero
      and step ``warmup_steps - 1`` reaches the peak ``lr``;
    * decay (``warmup_steps <= step < total_steps``): cosine from ``lr`` at ``step == warmup_steps``
      to ``lr * min_lr_ratio`` at ``step == total_steps``;
    * ``step >= total_steps``: stays at ``lr * min_lr_ratio`` (this takes precedence over warm-up
      when ``warmup_steps >= total_steps``).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError("warmup_steps and total_steps must be >= 0")
    min_lr = lr * min_lr_ratio
    if step >= total_steps:
        return min_lr
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel/DataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of the unwrapped model, by name: exactly its state_dict keys."""
    model = unwrap_model(model)
    return dict(model.state_dict(keep_vars=True))


class EMA:
    """Float32 exponential moving average of a model's parameters and buffers.

    ``beta = 0.5 ** (1 / halflife_steps)`` so that the weight of a past value halves every
    ``halflife_steps`` updates; ``halflife_steps == 0`` makes the EMA track the current weights.
    Floating-point tensors are averaged in float32; other buffers (e.g. integer counters) are
    copied as-is on every update.  The EMA lives on the model's device(s).  It is never compiled: the update
    that ``keep`` gates runs as a few multi-tensor kernels off the CPU (`_lerp_gated`), on an H100 faster than
    compiled (docs/benchmarks.md, thirty-ninth visit), without the compilation a cold start would pay.
    """

    def __init__(self, model: nn.Module, halflife_steps: float):
        if halflife_steps < 0:
            raise ValueError(f"halflife_steps must be >= 0, got {halflife_steps}")
        self.halflife_steps = float(halflife_steps)
        self.beta = 0.5 ** (1.0 / self.halflife_steps) if self.halflife_steps > 0 else 0.0
        self.shadow: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, t in _named_tensors(model).items():
                t = t.detach()
                self.shadow[name] = t.float().clone() if t.is_floating_point() else t.clone()
        self._float_names = [n for n, t in self.shadow.items() if t.is_floating_point()]
        self._other_names = [n for n, t in self.shadow.items() if not t.is_floating_point()]

    def _source(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Named tensors of ``model``, checked against the EMA's names."""
        src = _named_tensors(model)
        if src.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - src.keys())
            extra = sorted(src.keys() - self.shadow.keys())
            raise KeyError(f"model does not match EMA: missing={missing[:5]} unexpected={extra[:5]}")
        return src

    @torch.no_grad()
    def update(self, model: nn.Module, keep: torch.Tensor | None = None) -> None:
        """Move the average towards ``model``'s current weights: ``ema = beta * ema + (1 - beta) * w``.

        ``keep`` (a 0-dim tensor on the model's device, 1 or 0) applies or skips the update on the
        device, without the host reading it: a skipped update leaves every tensor bit for bit
        (given finite weights, as a skipped optimiser step leaves them).
        """
        src = self._source(model)
        if keep is not None:
            self._update_masked(src, keep)
            return
        weight = 1.0 - self.beta
        buckets: dict[tuple, tuple[list, list]] = {}
        for name in self._float_names:
            dst = self.shadow[name]
            s = src[name].detach()
            if s.device != dst.device or s.dtype != dst.dtype:
                s = s.to(device=dst.device, dtype=dst.dtype)
            pair = buckets.setdefault((dst.device, dst.dtype), ([], []))
            pair[0].append(dst)
            pair[1].append(s)
        for dsts, srcs in buckets.values():
            if weight == 1.0:
                torch._foreach_copy_(dsts, srcs)
            else:
                torch._foreach_lerp_(dsts, srcs, weight)
        for name in self._other_names:
            self.shadow[name].copy_(src[name])

    def _update_masked(self, src: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
        """:meth:`update` with its weight multiplied by ``keep``, and buffers copied only where it is 1."""
        buckets: dict[tuple, tuple[list, list]] = {}
        for name in self._float_names:
            dst = self.shadow[name]
            pair = buckets.setdefault((dst.device, dst.dtype), ([], []))
            pair[0].append(dst)
            pair[1].append(src[name].detach().to(device=dst.device, dtype=dst.dtype))
        for (device, dtype), (dsts, srcs) in buckets.items():
            _lerp_gated(dsts, srcs, keep.to(device), 1.0 - self.beta)
        for name in self._other_names:
            dst = self.shadow[name]
            dst.copy_(torch.where(keep.to(dst.device) != 0, src[name].to(dst.device), dst))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``name -> tensor`` dict of the averaged weights (safetensors-friendly)."""
        return {name: t.detach().clone().contiguous() for name, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load averaged weights saved by :meth:`state_dict` (strict: same names and shapes)."""
        if state_dict.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state_dict.keys())
            extra = sorted(state_dict.keys() - self.shadow.keys())
            raise KeyError(f"EMA state mismatch: missing={missing[:5]} unexpected={extra[:5]}")
        for name, dst in self.shadow.items():
            src = state_dict[name]
            if src.shape != dst.shape:
                raise ValueError(f"EMA shape mismatch for {name}: {tuple(src.shape)} vs {tuple(dst.shape)}")
            dst.copy_(src)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Copy the averaged weights into ``module`` (same architecture), casting to its dtypes."""
        dst = self._source(module)
        for name, t in self.shadow.items():
            dst[name].copy_(t)

    def to(self, device: torch.device | str) -> "EMA":
        """Move the averaged tensors to ``device`` (in place); returns self."""
        self.shadow = {n: t.to(device) for n, t in self.shadow.items()}
        return self


def _lerp_gated(dsts: list, srcs: list, keep: torch.Tensor, weight: float) -> None:
    """``dst += keep * weight * (src - dst)`` for each pair: the EMA step where ``keep`` (0-dim) is 1, nothing where 0."""
    w = (keep.to(torch.float32) * weight).to(dsts[0].dtype)
    if dsts[0].device.type == "cpu":
        torch._foreach_lerp_(dsts, srcs, [w] * len(dsts))       # a loop over the tensors either way on a CPU
    else:
        _lerp_by_tensor(dsts, srcs, w)


def _lerp_by_tensor(dsts: list, srcs: list, w: torch.Tensor) -> None:
    """``dst += w * (src - dst)`` for each pair, ``w`` a 0-dim tensor on their device, in three multi-tensor passes.

    A lerp whose weights are 0-dim tensors, unlike the tensors it updates, runs tensor by tensor on CUDA; a
    difference, a product with one 0-dim tensor and a sum each take a few kernels for all the tensors.
    """
    diffs = torch._foreach_sub(srcs, dsts)
    torch._foreach_mul_(diffs, w)
    torch._foreach_add_(dsts, diffs)


# ----------------------------------------------------------------------------------------------
# From a recipe
# ----------------------------------------------------------------------------------------------


def make_optimizer(groups: list, t) -> torch.optim.Optimizer:
    """The recipe's optimiser (`train.optimizer`, its lr, betas, eps, weight decay) over parameter groups `groups`.

    LAMB's skippable step is compiled when the model is (`train.compile`); fused AdamW is one kernel already.
    """
    if t.optimizer == "adamw":
        # fused: the one AdamW that takes `found_inf`, a device-side skip (the training loop's update step)
        return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay,
                                 fused=True)
    return Lamb(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay,
                compiled=bool(t.compile))


def clip_gradients(params: list, t) -> torch.Tensor:
    """Clip the gradients' global norm at `train.grad_clip` (0: no clipping); returns the norm before clipping."""
    return torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))


def make_ema(net: torch.nn.Module, t) -> "EMA | None":
    """The EMA of `net`'s weights that training keeps (`train.ema_halflife_steps`; negative: none)."""
    return EMA(net, t.ema_halflife_steps) if t.ema_halflife_steps >= 0 else None
