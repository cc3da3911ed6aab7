# Sourced by the GPU scripts that train the shapes base level alone: score_base prints, for a
# checkpoint or model file ($1) and a number of held-out prompts ($2, default 64), one JSON line of
# level-0 faithfulness and stripe R^2 sampled alone (benchmarks/base_level_faithfulness.py) and one
# JSON line per sigma of one denoiser call on noised real level 0 (benchmarks/denoise_texture.py).
score_base() {
  python3 benchmarks/base_level_faithfulness.py "$1" --num "${2:-64}" --splits heldout 2>&1 | tail -n 1
  python3 benchmarks/denoise_texture.py "$1" --num "${2:-64}" --sigmas 0.1,0.2,0.4,0.7,1.0 2>&1 | tail -n 5
}
