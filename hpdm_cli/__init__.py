"""hpdm: Hierarchical Patch Diffusion Models for high-resolution video generation.

The engine (importable, no CLI dependencies): `config` (typed recipe), `pyramid` (patch
hierarchies), `model` (video RIN, deep context fusion, adaptive computation), `diffusion`
(EDM objective), `sampling`, `train`, `data`, `text`, `io`, `eval` (FVD),
`checkpoint` (a model from a checkpoint), `conditioning`; one driver per command in `drivers`.
The `hpdm` command lives in `hpdm_cli.cli`.
"""

__version__ = "0.1.0"
