"""Evaluation: the Fréchet Video Distance (`fvd`) with a PyTorch port of the Inception-I3D detector (`i3d`).

Import the submodules directly (`from hpdm_cli.eval.fvd import evaluate_fvd`); this package
itself imports nothing heavy (no torch, no PyAV).
"""

from ..errors import HPDMError


class FVDError(HPDMError, ValueError):
    """A user-fixable problem with an FVD evaluation (paths, protocol, weights); the message says what to do."""


__all__ = ["FVDError"]
