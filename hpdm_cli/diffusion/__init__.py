"""Diffusion: the EDM parametrisation and the hierarchical training objective (edm)."""

from .edm import (LossOutput, NoiseDraw, c_in, c_noise, c_out, c_skip, denoise, draw_noise, edm_loss,
                  input_scales, sample_sigmas, v_target)

__all__ = ["LossOutput", "NoiseDraw", "c_in", "c_noise", "c_out", "c_skip", "denoise", "draw_noise", "edm_loss",
           "input_scales", "sample_sigmas", "v_target"]
