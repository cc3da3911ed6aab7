"""Transformer building blocks: multi-head (cross-)attention on fused SDPA kernels and MLPs."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_linear(layer: nn.Linear, std: float = 0.02) -> nn.Linear:
    """Truncated-normal weights and zero bias (ViT-style initialisation)."""
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class QKNorm(nn.Module):
    """RMS normalisation of queries and keys per head, with a learned gain each (bounded attention logits).

    The logit q.k / sqrt(head_dim) is then at most |gain_q| |gain_k| sqrt(head_dim) whatever the
    projection weights grow to: the guard against attention-logit growth of Dehghani et al. 2023
    (ViT-22B, "QK normalisation"), docs/method.md. The statistic is taken in float32 and the result
    keeps the input's dtype (bf16 under autocast, like the values it meets in attention).
    """

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.q_gain = nn.Parameter(torch.ones(head_dim))
        self.k_gain = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def _rms(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * gain).to(x.dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (q, k), both [..., head_dim]."""
        return self._rms(q, self.q_gain), self._rms(k, self.k_gain)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qk_norm) -> torch.Tensor:
    """SDPA of heads [B, h, S, d], after `qk_norm` (a QKNorm or None)."""
    if qk_norm is not None:
        q, k = qk_norm(q, k)
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head attention of queries [B, Sq, dim] over a context [B, Sk, context_dim] (self-attention if equal)."""

    def __init__(self, dim: int, context_dim: int, head_dim: int, qk_norm: bool = False):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.q = init_linear(nn.Linear(dim, dim, bias=False))
        self.kv = init_linear(nn.Linear(context_dim, 2 * dim, bias=False))
        self.out = init_linear(nn.Linear(dim, dim))
        self.qk_norm = QKNorm(head_dim) if qk_norm else None

    def forward(self, x: torch.Tensor, context: torch.Tensor, query_pos: Optional[torch.Tensor] = None,
                key_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend from x to context and project back to `dim`.

        query_pos [1 or B, Sq, dim] / key_pos [1 or B, Sk, context_dim], if given, are added to the queries' /
        keys' inputs only, not to the values (positions in the attention logits alone, as DETR's encodings,
        Carion et al. 2020): q = W_q (x + query_pos), k = W_k (context + key_pos), v = W_v context.
        """
        B, Sq, _ = x.shape
        Sk, dim = context.shape[1], self.heads * self.head_dim
        q = self.q(x) if query_pos is None else self.q(x) + self.q(query_pos)
        q = q.view(B, Sq, self.heads, self.head_dim).transpose(1, 2)
        if key_pos is None:
            k, v = self.kv(context).view(B, Sk, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            k, v = self.kv(context).view(B, Sk, 2, dim).unbind(2)
            k = k + F.linear(key_pos, self.kv.weight[:dim])
            k, v = (t.view(B, Sk, self.heads, self.head_dim).transpose(1, 2) for t in (k, v))
        y = attend(q, k, v, self.qk_norm)
        return self.out(y.transpose(1, 2).reshape(B, Sq, -1))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool = False):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.qkv = init_linear(nn.Linear(dim, 3 * dim, bias=False))
        self.out = init_linear(nn.Linear(dim, dim))
        self.qk_norm = QKNorm(head_dim) if qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over the sequence x [B, S, dim]."""
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = attend(q, k, v, self.qk_norm)
        return self.out(y.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = init_linear(nn.Linear(dim, hidden))
        self.fc2 = init_linear(nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply fc2(gelu(fc1(x)))."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class GridConv(nn.Module):
    """Depthwise convolution over each patch's token grid, zero padded ("same"): x [B, N, d] -> [B, N, d].

    The parameters are those of `nn.Conv3d(d, d, kernel, padding=kernel // 2, groups=d)` (`weight`
    [d, 1, kf, kh, kw], `bias` [d], zero-initialised; the model's kernel is 3x3x3), and two
    computations of it give the same result:
      * "conv3d": torch's grouped Conv3d on the tokens transposed to channels-first;
      * "shifts": the tokens as they are (channels-last), padded once, and one shifted copy per
        kernel tap scaled per channel, summed in float32 (one fused kernel under torch.compile;
        its backward is element-wise too).
    `GridConv.method` picks one for all instances: "auto" takes the faster one measured for the
    device, eager or compiled, in `FASTEST` (docs/benchmarks.md, "The interface convolution": on an
    H200 torch.compile fuses the shifts into one kernel, 3x faster than cuDNN's grouped kernel for
    the layer, while eagerly they are 4.6x slower; on a CPU Conv3d is 22x faster eagerly).
    """

    FASTEST = {("cpu", False): "conv3d", ("cpu", True): "conv3d", ("cuda", False): "conv3d", ("cuda", True): "shifts"}
    method = "auto"

    def __init__(self, dim: int, grid: tuple[int, int, int], kernel: tuple[int, int, int] = (3, 3, 3)):
        super().__init__()
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"GridConv kernel {tuple(kernel)}: every size must be odd (same-size output)")
        self.grid, self.kernel = tuple(grid), tuple(kernel)
        self.weight = nn.Parameter(torch.zeros(dim, 1, *self.kernel))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of x [B, N, d] (N = f * h * w tokens in grid order) -> [B, N, d]."""
        method = self.method
        if method == "auto":
            method = self.FASTEST.get((x.device.type, torch.compiler.is_compiling()), "conv3d")
        pad = [k // 2 for k in self.kernel]
        if method == "conv3d":
            g = x.transpose(1, 2).unflatten(2, self.grid)                  # [B, d, f, h, w]
            if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
                # On CPUs with native bf16 (AVX512-BF16), torch's grouped Conv3d under bf16 autocast
                # returns a wrong weight gradient for some grids (two tokens deep in time: relative
                # error ~1, NaN at 32 channels; 4x4x4 and 4x8x8 are right), so on the CPU it runs in
                # float32, cast as autocast would.
                with torch.autocast("cpu", enabled=False):
                    y = F.conv3d(g.float(), self.weight.float(), self.bias.float(), padding=pad, groups=x.shape[-1])
                y = y.to(torch.get_autocast_dtype("cpu"))
            else:
                y = F.conv3d(g, self.weight, self.bias, padding=pad, groups=x.shape[-1])
            return y.flatten(2).transpose(1, 2)
        if method != "shifts":
            raise ValueError(f"GridConv.method {method!r}: expected auto, conv3d or shifts")
        (f, h, w), (kf, kh, kw) = self.grid, self.kernel
        p = F.pad(x.float().unflatten(1, self.grid), (0, 0, pad[2], pad[2], pad[1], pad[1], pad[0], pad[0]))
        k = self.weight.float().flatten(1)                             # [d, kf * kh * kw], (i, j, l) order
        out = self.bias.float()
        for n in range(kf * kh * kw):
            i, j, l = n // (kh * kw), n // kw % kh, n % kw
            out = out + p[:, i:i + f, j:j + h, l:l + w] * k[:, n]
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        return out.flatten(1, 3).to(dt)
