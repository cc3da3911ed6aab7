"""The model: video RIN blocks (rin), context fusion (fusion), the HPDM network (network), FLOP counts (flops)."""

from .network import HPDMNet, LevelContext, NetOutput, cond_token_count, reading_blocks, token_grid

__all__ = ["HPDMNet", "LevelContext", "NetOutput", "cond_token_count", "reading_blocks", "token_grid"]
