"""The Recurrent Interface Network block (Jabri et al. 2022): read, compute, write.

Interface tokens x [B, N, d] carry the (tokenised) patch; latents z [B, M + C, d_z] carry the
learned latents followed by the conditioning tokens. A block
  * reads:    z += CrossAttn(LN(z) -> LN(x)); z += MLP(LN(z))
  * computes: K times { z += SelfAttn(LN(z)); z += MLP(LN(z)) }
  * writes:   x += CrossAttn(LN(x) -> LN(z)); [x += DWConv(x)]; x += MLP(LN(x))
With `model.adaptive_norm` every latent LayerNorm of the read and compute layers is scaled and shifted by
the condition (not the write's, whose latents are keys and values); with
`model.adaptive_norm_interface` the write's two interface LayerNorms are too, which gives the
condition a per-channel path into every token (as a U-Net's class embedding enters every block).
With `model.pos_fixed_into = "attention"` a fixed position table enters the read's keys and the
write's queries only, with "read" the read's values too (docs/method.md section 4), not the tokens
themselves.
There is no self-attention over the interface, so the cost is linear in the number of tokens.
The optional depthwise 3x3x3 convolution over each patch's token grid (`model.interface_conv`,
docs/method.md section 4) lets neighbouring tokens exchange information directly instead of only
through the latents; it is zero-initialised, so a new block starts as the plain RIN block.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import MLP, Attention, GridConv, SelfAttention


def modulate(h: torch.Tensor, mod: Optional[torch.Tensor]) -> torch.Tensor:
    """Adaptive LayerNorm: h * (1 + scale) + shift for mod = (scale, shift) [2, B, 1, d]; identity if None."""
    return h if mod is None else h * (1 + mod[0]) + mod[1]


def modulations(linear: Optional[nn.Linear], c: Optional[torch.Tensor], pairs: int) -> list:
    """`pairs` (scale, shift) tensors [2, B, 1, d] made by `linear` from the condition c [B, d_z]; Nones if None."""
    if linear is None:
        return [None] * pairs
    return list(linear(F.silu(c)).view(c.shape[0], 2 * pairs, 1, -1).transpose(0, 1).split(2))


class ComputeLayer(nn.Module):
    """One pre-norm transformer layer over the latents."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, head_dim, qk_norm)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, z: torch.Tensor, mods: tuple = (None, None)) -> torch.Tensor:
        """Self-attention then MLP, both residual; `mods` modulate the two norms (see `modulate`)."""
        z = z + self.attn(modulate(self.norm1(z), mods[0]))
        return z + self.mlp(modulate(self.norm2(z), mods[1]))


class RINBlock(nn.Module):
    """Read (latents <- interface), K compute layers on the latents, write (interface <- latents)."""

    def __init__(self, interface_dim: int, latent_dim: int, compute_layers: int, head_dim: int, mlp_ratio: float,
                 adaptive_norm: bool = False, conv_grid: Optional[tuple[int, int, int]] = None,
                 adaptive_interface: bool = False, qk_norm: bool = False, read_pos_values: bool = False):
        super().__init__()
        self.read_pos_values = read_pos_values           # positions in the read's values as well as its keys
        # Adaptive LayerNorm on every latent sub-layer of the read and compute (not the write's key/value
        # norm write_norm_z) and, with adaptive_interface, on the two
        # interface norms of the write: scale and shift from the conditioning vector,
        # zero-initialised so that a new block starts as the plain one.
        self.latent_pairs = 2 + 2 * compute_layers                    # modulated latent norms
        self.modulation = self.interface_modulation = None
        if adaptive_norm:
            self.modulation = nn.Linear(latent_dim, 2 * self.latent_pairs * latent_dim)
        if adaptive_interface:
            self.interface_modulation = nn.Linear(latent_dim, 2 * 2 * interface_dim)
        for layer in (self.modulation, self.interface_modulation):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.read_norm_z = nn.LayerNorm(latent_dim)
        self.read_norm_x = nn.LayerNorm(interface_dim)
        self.read = Attention(latent_dim, interface_dim, head_dim, qk_norm)
        self.read_mlp_norm = nn.LayerNorm(latent_dim)
        self.read_mlp = MLP(latent_dim, mlp_ratio)
        self.compute = nn.ModuleList(ComputeLayer(latent_dim, head_dim, mlp_ratio, qk_norm)
                                     for _ in range(compute_layers))
        self.write_norm_x = nn.LayerNorm(interface_dim)
        self.write_norm_z = nn.LayerNorm(latent_dim)
        self.write = Attention(interface_dim, latent_dim, head_dim, qk_norm)
        self.conv_grid = conv_grid                       # token grid (f, h, w) of a patch, with interface_conv
        if conv_grid is not None:
            self.conv = GridConv(interface_dim, conv_grid)              # zero-initialised
        self.write_mlp_norm = nn.LayerNorm(interface_dim)
        self.write_mlp = MLP(interface_dim, mlp_ratio)

    def forward(self, x: torch.Tensor, z: torch.Tensor, c: Optional[torch.Tensor] = None,
                pos: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Update interface tokens x [B, N, d] and latents z [B, S, d_z] given the condition c [B, d_z]: (x, z).

        pos [1 or B, N, d], if given, enters the read's keys (and values, with read_pos_values) and the write's
        queries, not x itself.
        """
        mz = modulations(self.modulation, c, self.latent_pairs)          # read, read MLP, 2 per compute layer
        mx = modulations(self.interface_modulation, c, 2)                # write, write MLP
        xn = self.read_norm_x(x)
        if pos is not None and self.read_pos_values:
            z = z + self.read(modulate(self.read_norm_z(z), mz[0]), xn + pos)
        else:
            z = z + self.read(modulate(self.read_norm_z(z), mz[0]), xn, key_pos=pos)
        z = z + self.read_mlp(modulate(self.read_mlp_norm(z), mz[1]))
        for i, layer in enumerate(self.compute):
            z = layer(z, mz[2 + 2 * i:4 + 2 * i])
        x = x + self.write(modulate(self.write_norm_x(x), mx[0]), self.write_norm_z(z), query_pos=pos)
        if self.conv_grid is not None:
            x = x + self.conv(x)
        x = x + self.write_mlp(modulate(self.write_mlp_norm(x), mx[1]))
        return x, z
