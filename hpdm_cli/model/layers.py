"""Transformer building blocks: multi-head (cross-)attention on fused SDPA kernels and MLPs."""

from __future__ import annotations

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

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend from x to context and project back to `dim`."""
        B, Sq, _ = x.shape
        q = self.q(x).view(B, Sq, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
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
