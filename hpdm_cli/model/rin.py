"""The Recurrent Interface Network block (Jabri et al. 2022): read, compute, write.

Interface tokens x [B, N, d] carry the (tokenised) patch; latents z [B, M + C, d_z] carry the
learned latents followed by the conditioning tokens. A block
  * reads:    z += CrossAttn(LN(z) -> LN(x)); z += MLP(LN(z))
  * computes: K times { z += SelfAttn(LN(z)); z += MLP(LN(z)) }
  * writes:   x += CrossAttn(LN(x) -> LN(z)); x += MLP(LN(x))
There is no self-attention over the interface, so the cost is linear in the number of tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import MLP, Attention, SelfAttention


class ComputeLayer(nn.Module):
    """One pre-norm transformer layer over the latents."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Self-attention then MLP, both residual."""
        z = z + self.attn(self.norm1(z))
        return z + self.mlp(self.norm2(z))


class RINBlock(nn.Module):
    """Read (latents <- interface), K compute layers on the latents, write (interface <- latents)."""

    def __init__(self, interface_dim: int, latent_dim: int, compute_layers: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.read_norm_z = nn.LayerNorm(latent_dim)
        self.read_norm_x = nn.LayerNorm(interface_dim)
        self.read = Attention(latent_dim, interface_dim, head_dim)
        self.read_mlp_norm = nn.LayerNorm(latent_dim)
        self.read_mlp = MLP(latent_dim, mlp_ratio)
        self.compute = nn.ModuleList(ComputeLayer(latent_dim, head_dim, mlp_ratio) for _ in range(compute_layers))
        self.write_norm_x = nn.LayerNorm(interface_dim)
        self.write_norm_z = nn.LayerNorm(latent_dim)
        self.write = Attention(interface_dim, latent_dim, head_dim)
        self.write_mlp_norm = nn.LayerNorm(interface_dim)
        self.write_mlp = MLP(interface_dim, mlp_ratio)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update interface tokens x [B, N, d] and latents z [B, S, d_z]; returns (x, z)."""
        z = z + self.read(self.read_norm_z(z), self.read_norm_x(x))
        z = z + self.read_mlp(self.read_mlp_norm(z))
        for layer in self.compute:
            z = layer(z)
        x = x + self.write(self.write_norm_x(x), self.write_norm_z(z))
        x = x + self.write_mlp(self.write_mlp_norm(x))
        return x, z
