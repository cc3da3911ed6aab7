"""Evaluation metrics: the Fréchet Video Distance (`fvd`, its sources read by `fvd_sources`) with a PyTorch port
of the Inception-I3D detector (`i3d`), prompt faithfulness measured from pixels (`faithfulness`), background
stripes (`texture`), tile seams (`seams`), all three read over every CPU core (`measure`), and training-loss
diagnostics (`diagnostics`).

This package measures; it never imports sampling, generation or the drivers (generating the clips
to measure is `hpdm_cli.drivers`' job). Import the submodules directly
(`from hpdm_cli.eval.fvd import frechet_distance`); this package itself imports nothing heavy
(no torch, no PyAV).
"""

from ..errors import HPDMError


class FVDError(HPDMError, ValueError):
    """A user-fixable problem with an FVD evaluation (paths, protocol, weights); the message says what to do."""


__all__ = ["FVDError"]
