"""The model: video RIN blocks (rin), context fusion (fusion), the HPDM network (network), FLOP counts (flops)."""

from .network import HPDMNet, LevelContext

__all__ = ["HPDMNet", "LevelContext"]
