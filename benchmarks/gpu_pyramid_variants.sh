#!/usr/bin/env bash
# Pyramid variants trained on from one start side by side on one GPU, then scored at equal steps:
# what does one setting change is worth, measured by FVD and faithfulness at the same N? VARIANTS
# train at once from FROM (default the packaged model), one process each, each for SECONDS_EACH
# (start-up and graph capture included) in a cosine schedule of STEPS, checkpointing every 250 steps
# into $RUNS/<variant>; RESUME=1 continues them on the same warm machine in a later call. SWEEP=1
# then scores every variant's newest checkpoint with benchmarks/guidance_sweep.py on EVAL_NUM
# held-out prompts per side (FVD against real clips with the floor and the trivial baselines,
# faithfulness, stripes, a contact sheet per variant in $OUT/sheets), SETTINGS as there (default the
# protocol of docs/results.md, sections 21-23: guidance 1.5 at level 0, 32/32/16 steps, `fhw`),
# the variants named by SCORE (default all of VARIANTS) in one process, one after another against the
# same real clips (their features and the baselines computed once): two N = 512 sweeps side by side
# did not finish in a 600-s call on an H200 (one alone takes ~285 s), so at N = 512 score one variant
# per call (SCORE=grid, then SCORE=continuous in the next call). Needs out/gpu/shapes_prompts_tokens.safetensors to train,
# out/gpu/shapes_prompts_heldout.safetensors to score, the I3D file at $I3D and out/gpu/whl
# (benchmarks/stage_gpu_inputs.sh).
# A variant's overrides: the environment variable V_<variant> if set, else the table below:
#   grid        pyramid.offsets="grid": every level trained on its pixel grid, as sampling tiles it
#   continuous  pyramid.offsets="continuous": the paper's offsets, the control (docs/results.md, section 26)
#   tiles       pyramid.offsets="tiles": every level trained on the sampler's own tile chains, the frame's
#               border included (docs/method.md, section 3; docs/results.md, section 50), against grid
#   tex         level 0 trained mostly in the stripes' band, log-sigma N(-1, 1.2^2) (docs/results.md section 19
#               trained a base level alone at N(-1, 1): stripes, but no motion from scratch); the upper levels
#               as before. The base level's texture is the largest gap left (sections 29-30); watch direction
#   tex2 / tex3 further into that band, N(-1.3, 1.1^2) / N(-1.5, 1.0^2), each trained from the one before
#               (FROM=/tmp/tex.safetensors ...): tex 75.8, tex2 71.1, tex3 71.1 FVD; tex3 + 3000 steps at
#               its band 71.8 (docs/results.md, section 31): the band's gain has run out
# and the paper's design ablations (its Tables 2-3; docs/results.md, section 16), best grown from a
# trained base level rather than from the packaged pyramid (see below):
#   default     the recipe as it is (deep fusion, load [1,1,2,2,3,3], context_prob 0.75)
#   shallow     model.fusion="shallow": the RGB of the level below, concatenated to the input
#   uniform     model.load=[3,3,3,3,3,3]: no adaptive computation, every block runs every level
#   ctx0 / ctx025 / ctx1   diffusion.context_prob 0 / 0.25 / 1
#   detach      model.context_detach=true: no gradient from a level into the lower levels' context
#   nocoords    model.fusion_coords=false: no token coordinates in the context fusion
# and the whole model from scratch in one call (FROM is ignored; docs/results.md, section 62):
#   scratch     every level from random weights, half the samples with level 0 in the loss: 5000 steps in 524 s
#               of a cold H100 (compilation included), 15.9% direction
#   fast        the same with three quarters of them and level 0's noise centred higher (more samples above
#               sigma 3, where the motion is decided): 7500 steps in 515 s with the compile cache warm, 98 / 98 / 93%
#               faithful, FVD 176.3 at N = 256 (3.8x the floor):
#     VARIANTS=fast SECONDS_EACH=572 STEPS=7500 EXPORT=fast bash benchmarks/gpu_pyramid_variants.sh
#   fast with level 0's log-sigma centred at 0.5 (35% of its samples above sigma 3): on a cold machine 4817
#   steps of a 5000-step cosine, the motion from step ~4000 (56.2% direction) but the stripes lost, FVD 496.9
#   at N = 256 (section 64):
#     V_fastP='train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.5,-1.2,-1.2] data.short_caption_prob=0.3' \
#       VARIANTS=fastP SECONDS_EACH=570 STEPS=5000 CURVE=1 EXPORT=fastP bash benchmarks/gpu_pyramid_variants.sh
#   fastR       fast with level 0's log-sigma mean ramped from 1.0 at the first step to -1.0 at the last
#               (diffusion.p_mean_start): the motion's noise band first, the stripes' last. On a cold H100 all 5000
#               steps in 481 s: crisp shapes 1.45x too large, no motion (track 0.016, 19.5% direction), FVD 464.7
#               at N = 256 (docs/results.md, section 67)
#     VARIANTS=fastR SECONDS_EACH=560 STEPS=5000 CURVE=1 EXPORT=fastR bash benchmarks/gpu_pyramid_variants.sh
#   fastS       fast at half the batch (128): twice the optimiser steps per sample. On a cold H100 all 7000 steps in
#               531 s, no motion at any step (track <= 0.003), 47.7% direction, stripes 0.298, FVD 282.6 against fast's
#               189.3 at N = 128 (docs/results.md, section 66): the motion waits for samples, not steps
#     VARIANTS=fastS SECONDS_EACH=530 STEPS=7000 CURVE=1 CURVE_EVERY=1000 EXPORT=fastS bash benchmarks/gpu_pyramid_variants.sh
#   fastL       fast at twice the batch (512), the same learning rate: 4494 videos/s against 4148 at 256 on one H100
#               (1.08x); 2212 steps of a 2300-step cosine in 400 s after fastR on the same machine (the network
#               recompiled for the batch): blobs (68.4% shape), no motion, FVD 860.9 at N = 256 (section 67)
#     VARIANTS=fastL SECONDS_EACH=400 STEPS=2300 CURVE=1 EXPORT=fastL bash benchmarks/gpu_pyramid_variants.sh
#   fastC       fast with the share of samples on clean context ramped from 0 at the first step to 0.75 at the last
#               (diffusion.context_prob_start): level 0 in every sample's loss while the motion is learnt, the upper
#               levels trained mostly as sampling shows them the levels below (the recipe's 0.75, section 35) by the
#               end; level 0 in 62.5% of the samples over the run against fast's 75%; not yet run
#     VARIANTS=fastC SECONDS_EACH=572 STEPS=7500 CURVE=1 EXPORT=fastC bash benchmarks/gpu_pyramid_variants.sh
#   fastH       fast with its residual streams in bf16 (model.bf16_streams): 1.09x the videos/s (4455 against 4094 on an
#               H100), the same losses. With its compile cache warm, 8500 steps in 530 s: FVD 130.1 at N = 256 (2.8x the
#               floor, fast 176.3), stripes 0.520, but direction 70.7%: up and down learnt, left and right at chance;
#               cold, 7047 steps in 555 s: 158.1, 48.0% (docs/results.md, section 68)
#     CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fastH SECONDS_EACH=555 STEPS=7500 CURVE=1 CURVE_EVERY=1000 EXPORT=fastH bash ...
#     then, on the same machine:  CACHE=/tmp/cc VARIANTS=fastH SECONDS_EACH=535 STEPS=8500 CURVE=1 CURVE_EVERY=1000 ...
#   fastW       fastH with the text states whitened (model.text_whitening): fastH's projection held "left" and "right"
#               prompts at 0.10 of a caption's norm against the encoder's 0.24 and learnt no horizontal motion, while it
#               held "up" and "down" at 0.35 and moved them (docs/results.md, section 69); whitened, the direction swaps
#               start as far apart as the others. On an H100, cold 6358 steps in 555 s (first step 146.8 s), then with
#               its own compile cache 8448 steps in 538 s: the words kept apart (1.5x the encoder's distance) but no
#               motion (track 0.019), 37.5% direction, stripes 0.347, FVD 208.9 against fastH's 130.1 at N = 256
#               (docs/results.md, section 70). Its graph differs from fastH's (one matrix product more): own cache
#     CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fastW SECONDS_EACH=555 STEPS=7500 CURVE=1 CURVE_EVERY=1000 EXPORT=fastW bash ...
#   fastF       fastH with fixed random Fourier features of the joint (frame, row, column) token index under the
#               learned position table (model.pos_embed="fourier", docs/method.md section 4): one key can then pick
#               out a moving object's tokens in every frame. On an H200, cold 7451 steps in 555 s (first step
#               120.6 s), then with its own compile cache 8500 steps in 491 s: the motion by step 2000 on both axes,
#               direction 100%, but the backgrounds wavy (stripes 0.394), FVD 253.3 against fastH's 130.1 at N = 256
#               (docs/results.md, section 72)
#     CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fastF SECONDS_EACH=555 STEPS=7500 CURVE=1 CURVE_EVERY=1000 EXPORT=fastF bash ...
#   fastF0      fastF with the Fourier table at the base level only (model.pos_fixed_levels="base"): the motion is
#               level 0's; given the real level 0, fastF's upper levels had 45% more error than a learned
#               table's (section 72). On a cold H100 5770 of 7500 steps (first step 168.4 s): direction 100%,
#               upper levels' losses back to the learned table's, FVD 314.6 at N = 256 (docs/results.md, section 73)
#     CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fastF0 SECONDS_EACH=555 STEPS=7500 CURVE=1 CURVE_EVERY=1000 EXPORT=fastF0 bash ...
#   fastF0n     fastF0 with level 0's noise back at the recipe's log-sigma N(-0.5, 1.6^2), from fast's N(0.0, 1.6^2):
#               the Fourier table brings the motion early (section 72), so level 0 can spend more samples in the
#               stripes' band (section 64: samples moved above sigma 3 cost the stripes). The same graph as fastF0:
#               on its machine, cp /tmp/cc/fastF0.bin /tmp/cc/fastF0n.bin, then
#               8261 of 8500 steps on an H100: direction 99.2%, upper levels given the real level 0 nearly the
#               learned table's (MSE 0.00486 against 0.00430), but level 0's stripes fainter (0.222 alone) and its
#               objects 1.2x too large: FVD 244.0 (section 73)
#     CACHE=/tmp/cc VARIANTS=fastF0n SECONDS_EACH=535 STEPS=8500 CURVE=1 CURVE_EVERY=1000 EXPORT=fastF0n bash ...
#   fastF0q     fastF0 with the fixed table at a quarter of unit scale (model.pos_fixed_scale=0.25): at unit scale
#               it is ~70% of level 0's token norm (section 73); on the CPU testbed a quarter keeps the motion on
#               both axes (track 0.98 at 4000 steps), a tenth loses the horizontal one; but trained at the
#               recipe's lower noise the quarter brings no motion by 4000 steps (0.23, vertical; unit scale 0.90),
#               so at fast's N(0, 1.6^2) it may lose the motion (section 73). Not yet run; a cold call
#               holds ~5800 steps, so give it STEPS=6000, then 8500 with the cache:
#     CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fastF0q SECONDS_EACH=555 STEPS=6000 CURVE=1 CURVE_EVERY=1000 EXPORT=fastF0q bash ...
#   fastF0g     fastF0 with the fixed table faded in with the noise (model.pos_fixed_sigma=[0.5,3.0]: none below
#               sigma 0.5, all above 3): the motion is decided above sigma 3, the stripes below 1, where the unit-scale
#               table costs level 0 ~20% of its accuracy (section 73). On the CPU testbed it brought the motion
#               sooner (0.83 at step 2000) but not the low-noise accuracy back. On an H100, cut short at 3939 of
#               4800 steps (section 74): direction 100%, motion by step 2000, no stripes yet, FVD 710.9; its compile
#               cache came back, so the finished schedule fits one call on a fresh H100 (parts carried as out/cc/):
#     CACHE=out/cc VARIANTS=fastF0g SECONDS_EACH=555 STEPS=8500 CURVE=1 CURVE_EVERY=1000 EXPORT=fastF0g bash ...
#   fastF0a     fastF0 with the fixed table in the attention logits alone (model.pos_fixed_into="attention": level
#               0's read keys and write queries; its tokens carry content and the learned table only), so the
#               table no longer takes a share of every token that the low-noise texture needs. On the CPU testbed
#               (section 74) it keeps the learned table's low-noise accuracy but, like it, learns no motion in 4000
#               steps (nor with the table in the read's values too, "read"): not run on the GPU.
#   fastF0ag    fastF0a with the table faded in with the noise as fastF0g (model.pos_fixed_sigma=[0.5,3.0]); the
#               same on the testbed.
#   fastF0s     fastF0 with the fixed table subtracted from level 0's tokens before the readout
#               (model.pos_fixed_subtract=true): the blocks see it, the output norm and detokenizer do not. On the
#               CPU testbed (section 75) alone it weakens the motion (track 0.42 at 4000 steps against 0.90).
#   fastF0sg    fastF0g (faded in [0.5, 3]) with the subtraction: on the testbed level 0's low-noise accuracy back
#               to the learned table's (MSE 0.00112 at sigma 0.1 against 0.00113; fastF0g's form 0.00124) with
#               most of the motion (0.72 against 0.87; a second seed 0.00119 against 0.00129 and the learned
#               table's 0.00109, track 0.73 against 0.85); at this variant's own level-0 noise, N(0, 1.6^2), two
#               seeds 7% and 14% below fastF0g's form at sigma 0.1, the motion kept (section 76). The next GPU
#               run, fastF0g its control. Not yet run on the GPU; a cold call holds ~5800 steps:
#     CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fastF0sg SECONDS_EACH=555 STEPS=6000 CURVE=1 CURVE_EVERY=1000 EXPORT=fastF0sg bash ...
#   fast2g      fastH on two GPUs of one host (NPROC=2, below): 256 videos per GPU, 512 a step, the same learning rate
#               and schedule. Every one-call run's motion began after ~0.25-0.33M level-0 samples above sigma 3
#               (docs/results.md, sections 64-68: ~6000 steps of 256 on one GPU); two GPUs reach that count in half the
#               steps, so the same ten minutes hold the motion's onset and ~5000 steps after it. Not yet run; compiled
#               DDP with CUDA graphs is unmeasured (if its first step fails, EXTRA='train.compile=true' drops the graphs)
#     NPROC=2 CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fast2g SECONDS_EACH=555 STEPS=8000 CURVE=1 CURVE_EVERY=1000 EXPORT=fast2g bash ...
#   the same budget in two stages is worse (section 63: 23.4% direction, FVD 211.4 at N = 256):
#     V_fastA='train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3' \
#       VARIANTS=fastA SECONDS_EACH=560 STEPS=4500 EXPORT=fastA bash benchmarks/gpu_pyramid_variants.sh
#     FROM=/tmp/pyr-variants/fastA V_fastB='diffusion.context_prob=0.75 data.short_caption_prob=0.3 train.lr=0.0005 train.warmup_steps=50' \
#       VARIANTS=fastB SECONDS_EACH=250 STEPS=3000 EXPORT=fastB bash benchmarks/gpu_pyramid_variants.sh
# Ablations at equal budget from a real base level: the base level from scratch as the packaged
# model's was (recipes/shapes.toml's header), 10000 steps in ~500 s of training over two calls
# (docs/benchmarks.md, tenth visit; EXPORT=base brings it back, 16.4 MB, to carry as FROM):
#   V_base='diffusion.p_mean=-0.5 diffusion.p_std=1.6' VARIANTS=base SECONDS_EACH=380 STEPS=7000 \
#     CKPT_EVERY=7000 NUM=16 EXPORT=base bash benchmarks/gpu_base_variants.sh
#   (then RESUME=1 STEPS=10000 SECONDS_EACH=240 CKPT_EVERY=10000 ... on the warm machine)
# then every variant from it, side by side, the same steps each (docs/results.md, section 35; the
# base travels in the packaged model's place, hpdm_cli/assets/shapes-t2v.safetensors, to fit 64 MiB,
# and the first call copies it to /tmp/base.safetensors before anything else):
#   FROM=/tmp/base.safetensors VARIANTS="default shallow uniform" SECONDS_EACH=570 STEPS=800 \
#     EXPORT="default shallow" bash ...   (an export of the uniform variant, 16.8 MB, is over a file's 16 MiB)
#     (cold machine: 561 s; the uniform variant costs 1.52x the FLOPs per step)
#   FROM=/tmp/base.safetensors VARIANTS="ctx0 ctx025 ctx1" SECONDS_EACH=330 STEPS=800 SWEEP=1 \
#     SETTINGS=1.5,1,1/32,32,16/none EVAL_NUM=256 SCORE="default shallow uniform ctx0 ctx025 ctx1" bash ...
#     (warm machine: 221 s of training, 268 s to score all six in one process; this call carries the
#     I3D file whole, out/gpu/i3d-kinetics-400.ckpt as I3D=, with the checkout's tracked images and
#     model left out, and finds the prompt table that the first call carried still on the machine)
#   the paper's other two rows, not yet run: VARIANTS="detach nocoords" the same way (both checked to
#   start from the base on a CPU), scored beside SCORE=default to share its real clips; and the spread
#   between two runs of one variant, which section 35 could not give: V_default_s1='train.seed=1'
#   VARIANTS="default_s1" (train.seed draws the upper levels' initialisation, data order and noise anew)
# The 16x64x64 pyramid trains at ~3250-4650 videos/s alone on an H200 with CUDA graphs, ~4100 on an H100 with
# the GPU 96-100% busy: not waiting on launches or the host (docs/benchmarks.md, thirty-sixth visit), nor on kernels
# too small to fill it (batch 512: only 1.08x the videos/s, thirty-ninth visit); three side by side made ~4300-5200
# together (eleventh visit).
# The I3D parts, the wheels and the prompt tables do not travel in one call (64 MiB), so, on one warm
# machine, back to back (see benchmarks/gpu_grown_stage.sh for the same layout):
#   1. carry out/gpu/whl, out/gpu/shapes_prompts_tokens.safetensors, out/i3dp/part-00:
#      mkdir -p /tmp/i3d && cp out/i3dp/part-00 /tmp/i3d/ && SECONDS_EACH=560 STEPS=2500 bash benchmarks/gpu_pyramid_variants.sh
#   2. the same with part-01 and RESUME=1 (the same STEPS)
#   3. carry out/gpu/whl, out/gpu/shapes_prompts_heldout.safetensors, part-02: cp out/i3dp/part-02 /tmp/i3d/ &&
#      cat /tmp/i3d/part-0* > /tmp/i3d-kinetics-400.ckpt && SECONDS_EACH=0 SWEEP=1 SCORE=grid EVAL_NUM=512 bash ...
#   4. carry out/gpu/whl and the held-out table again: SECONDS_EACH=0 SWEEP=1 SCORE=continuous EVAL_NUM=512 bash ...
#      (the I3D file stays in /tmp on the warm machine)
# NPROC=N trains each variant with N processes on one host (torchrun --standalone; one GPU each, DDP; the CPU with
# gloo): train.batch_size stays the global batch, split over the processes; SECONDS_EACH still bounds the whole run
# (torchrun passes the time limit's SIGTERM to every process, which checkpoint together and stop).
# CURVE=1 then prints each variant's motion learning curve: benchmarks/mean_motion.py's `track` (0: the level-0
# denoiser moves the object no way, 1: as the data does) for its checkpoints every CURVE_EVERY steps (500) and its
# last, ~2 s each on a GPU (DEVICE, default cuda), also kept in $OUT/<v>-track.jsonl.
# CACHE=DIR gives each variant train.compile_cache=DIR/<v>.bin (torch.compile's caches, loaded before its first step,
# written after it), joined first from carried parts DIR/<v>.bin.part-* when the file is missing; with CACHE_OUT=1 the
# written file comes back as $OUT/<v>.bin.part-NN of 15 MiB (a returned file is at most 16 MiB). Given the cache, a
# fresh cache folder starts as a warm machine does: `fast`'s first step 8.9 s against 124.2 s, step 50 at 30.7 s
# against 145.8 s on an H100 (20.7 MiB, two parts; docs/benchmarks.md, fortieth visit), so that `fast`'s 7500 steps
# fit one cold call (the same torch and GPU model as the machine that wrote it):
#   CACHE=/tmp/cc CACHE_OUT=1 VARIANTS=fast ...    then, on another cold machine, carry the parts as out/cc/:
#   CACHE=out/cc VARIANTS=fast ...                 and read its "compile cache:" and "first step:" lines
# EXPORT="v ..." writes those variants' newest EMA weights in fp16 to $OUT/<v>.safetensors (what a call returns is
# at most 64 MiB together: three exports of the 16x64^2 model, 16.7 MB each).
# A CPU check of the script: EXTRA='train.compile=false train.precision=fp32 train.batch_size=2
#   data.synthetic_videos=16 data.num_workers=0' SECONDS_EACH=60 STEPS=10 CURVE=1 DEVICE=cpu SWEEP=1 EVAL_NUM=2 BATCH=2 \
#   SETTINGS=1.5,1,1/16,16,8/none I3D=out/gpu/i3d-kinetics-400.ckpt SWEEP_FLAGS= \
#   PATH=.venv/bin:$PATH bash benchmarks/gpu_pyramid_variants.sh
# and of NPROC (two gloo processes, ~40 s): NPROC=2 VARIANTS=fast2g EXTRA='train.compile=false train.precision="fp32"
#   train.batch_size=2 data.synthetic_videos=16 data.num_workers=0' SECONDS_EACH=120 STEPS=6 CURVE=1 CURVE_EVERY=3 DEVICE=cpu \
#   EXPORT=fast2g PATH=.venv/bin:$PATH bash benchmarks/gpu_pyramid_variants.sh
set -uo pipefail
OUT=${OUT:-out/result}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
RECIPE=${RECIPE:-recipes/shapes.toml}
RUNS=${RUNS:-/tmp/pyr-variants}; mkdir -p "$RUNS"
VARIANTS=${VARIANTS:-grid continuous}
FROM=${FROM:-packaged}
I3D=${I3D:-/tmp/i3d-kinetics-400.ckpt}
SETTINGS=${SETTINGS:-1.5,1,1/32,32,16/fhw}
TABLE='data.prompt_table="out/gpu/shapes_prompts_tokens.safetensors"'
overrides() {   # $1: variant -> its recipe overrides
  local var="V_$1"
  if [ -n "${!var+x}" ]; then echo "${!var}"; return; fi
  case "$1" in
    grid) echo 'pyramid.offsets="grid"' ;;
    continuous) echo 'pyramid.offsets="continuous"' ;;
    tiles) echo 'pyramid.offsets="tiles"' ;;
    tex) echo 'diffusion.p_mean=[-1.0,-1.2,-1.2] diffusion.p_std=[1.2,1.2,1.2]' ;;
    tex2) echo 'diffusion.p_mean=[-1.3,-1.2,-1.2] diffusion.p_std=[1.1,1.2,1.2]' ;;
    tex3) echo 'diffusion.p_mean=[-1.5,-1.2,-1.2] diffusion.p_std=[1.0,1.2,1.2]' ;;
    default) echo '' ;;
    shallow) echo 'model.fusion="shallow"' ;;
    uniform) echo 'model.load=[3,3,3,3,3,3]' ;;
    ctx0) echo 'diffusion.context_prob=0.0' ;;
    ctx025) echo 'diffusion.context_prob=0.25' ;;
    ctx1) echo 'diffusion.context_prob=1.0' ;;
    detach) echo 'model.context_detach=true' ;;
    nocoords) echo 'model.fusion_coords=false' ;;
    scratch) echo 'train.init_from="" diffusion.context_prob=0.5 data.short_caption_prob=0.3' ;;
    fast) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3' ;;
    fastR) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[-1.0,-1.2,-1.2] diffusion.p_mean_start=[1.0,-1.2,-1.2] data.short_caption_prob=0.3' ;;
    fastS) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 train.batch_size=128' ;;
    fastL) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 train.batch_size=512' ;;
    fastC) echo 'train.init_from="" diffusion.context_prob=0.75 diffusion.context_prob_start=0.0 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3' ;;
    fastH) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true' ;;
    fastW) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.text_whitening=true' ;;
    fastF) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier"' ;;
    fastF0) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base"' ;;
    fastF0n) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[-0.5,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base"' ;;
    fastF0q) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base" model.pos_fixed_scale=0.25' ;;
    fastF0g) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base" model.pos_fixed_sigma=[0.5,3.0]' ;;
    fastF0a) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base" model.pos_fixed_into="attention"' ;;
    fastF0ag) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base" model.pos_fixed_into="attention" model.pos_fixed_sigma=[0.5,3.0]' ;;
    fastF0s) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base" model.pos_fixed_subtract=true' ;;
    fastF0sg) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true model.pos_embed="fourier" model.pos_fixed_levels="base" model.pos_fixed_subtract=true model.pos_fixed_sigma=[0.5,3.0]' ;;
    fast2g) echo 'train.init_from="" diffusion.context_prob=0.25 diffusion.p_mean=[0.0,-1.2,-1.2] data.short_caption_prob=0.3 model.bf16_streams=true train.batch_size=512' ;;
    *) echo "unknown variant $1 (grid continuous tiles tex tex2 tex3 default shallow uniform ctx0 ctx025 ctx1 detach nocoords scratch fast fastR fastS fastL fastC fastH fastW fastF fastF0 fastF0n fastF0q fastF0g fastF0a fastF0ag fastF0s fastF0sg fast2g, or set V_$1)" >&2; return 2 ;;
  esac
}
train_variant() {   # $1: variant -> trains it for SECONDS_EACH into $RUNS/$1 (resumes it with RESUME=1)
  local v=$1 ov rc how
  ov=$(overrides "$v") || return 2
  [ "${RESUME:-0}" = 1 ] || rm -rf "${RUNS:?}/$v"
  local cache=() launch=(python3 -m hpdm_cli)
  if [ "${NPROC:-1}" -gt 1 ]; then
    launch=(python3 -m torch.distributed.run --standalone "--nproc_per_node=$NPROC" -m hpdm_cli)
  fi
  if [ -n "${CACHE:-}" ]; then
    mkdir -p "$CACHE"
    if [ ! -f "$CACHE/$v.bin" ] && ls "$CACHE/$v.bin".part-* > /dev/null 2>&1; then
      cat "$CACHE/$v.bin".part-* > "$CACHE/$v.bin"
    fi
    cache=("train.compile_cache=\"$CACHE/$v.bin\"")
  fi
  # shellcheck disable=SC2086
  timeout --preserve-status -s TERM "$SECONDS_EACH" "${launch[@]}" train "$RECIPE" --run-dir "$RUNS/$v" \
    --no-progress "$TABLE" "train.init_from=\"$FROM\"" "train.steps=${STEPS:-2500}" \
    'train.compile="reduce-overhead"' train.ckpt_every=250 train.keep_last=0 "${cache[@]}" $ov ${EXTRA:-} \
    >> "$RUNS/$v.log" 2>&1
  rc=$?
  if [ "${CACHE_OUT:-0}" = 1 ] && [ -f "${CACHE:-}/$v.bin" ]; then
    split -b 15M -d "$CACHE/$v.bin" "$OUT/$v.bin.part-"
  fi
  cp "$RUNS/$v/stats.jsonl" "$OUT/$v-stats.jsonl" 2>/dev/null
  case $rc in 0) how="finished its STEPS" ;; 143) how="stopped by the time limit" ;; *) how="failed" ;; esac
  # torchrun itself exits 1 on the forwarded SIGTERM, after its traceback: the processes' own lines say whether
  # they stopped cleanly
  local torchrun_stop=0
  if [ "$rc" != 0 ] && tail -n 80 "$RUNS/$v.log" | grep -q "^stopped by signal 15"; then
    how="stopped by the time limit"; torchrun_stop=1
  fi
  echo "[$v] $ov: exit $rc, $how; last lines of the log:"
  if [ "$torchrun_stop" = 1 ]; then tail -n 80 "$RUNS/$v.log" | grep -E "^(step |stopped by)" | tail -n 2
  else tail -n 2 "$RUNS/$v.log"; fi | cut -c1-300
  # the cold start's split (network, update) and what torch warned of (a CUDA-graph slow path, a recompile
  # limit), which would otherwise stay in the log on the machine
  grep -i -e "warn" -e "^first step:" -e "^compile cache:" "$RUNS/$v.log" | sort -u | head -n 8 | cut -c1-300 | sed "s/^/[$v] log: /" || true
}
curve_variant() {   # $1: variant -> mean_motion.py's track for its checkpoints every CURVE_EVERY steps and its last
  local v=$1 all=("$RUNS/$1"/checkpoints/ckpt-*)
  [ -e "${all[0]}" ] || { echo "[$v] no checkpoint: no curve"; return 1; }
  python3 benchmarks/mean_motion.py "${all[@]}" --every "${CURVE_EVERY:-500}" --device "${DEVICE:-cuda}" \
    --tables out/gpu/shapes_prompts_tokens.safetensors > "$RUNS/$v-track.log" 2>&1
  grep '"track"' "$RUNS/$v-track.log" > "$OUT/$v-track.jsonl" || { echo "[$v] no curve:"; tail -n 3 "$RUNS/$v-track.log"; return 1; }
  echo "[$v] motion learning curve (step: track, left/right, up/down):" "$(python3 -c "import json, sys; print('  '.join('%d: %s %s %s' % (d['step'], d['track'], d.get('track_h'), d.get('track_v')) for d in map(json.loads, sys.stdin)))" < "$OUT/$v-track.jsonl")"
}
sweep_variants() {   # $@: variants -> guidance_sweep.py's lines for their newest checkpoints in $OUT/sweep.txt
  # (one process: the real clips' features and baselines are computed once; lines are written as they
  # come, so a call that runs out of time still brings back what was scored; sheets in $OUT/sheets)
  local runs=() v
  for v in "$@"; do   # a variant without a checkpoint (its training failed) would stop the others' scoring
    if ls "$RUNS/$v"/checkpoints/ckpt-* >/dev/null 2>&1; then runs+=("$RUNS/$v"); else echo "[$v] no checkpoint: not scored"; fi
  done
  [ "${#runs[@]}" -gt 0 ] || return 1
  # shellcheck disable=SC2086
  python3 benchmarks/guidance_sweep.py "${runs[@]}" --num "${EVAL_NUM:-512}" --batch "${BATCH:-256}" ${SWEEP_FLAGS---bf16} \
    --settings "$SETTINGS" --i3d-weights "$I3D" --tables out/gpu/shapes_prompts_heldout.safetensors \
    --sheets "$OUT/sheets" 2>&1 | grep --line-buffered -v "^WARNING" > "$OUT/sweep.txt"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "commit ${HPDM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; $RECIPE from $FROM; variants: $VARIANTS"
T0=$SECONDS
for v in $VARIANTS; do overrides "$v" > /dev/null || exit 2; done
for v in ${EXPORT:-}; do   # checked before the training, whose minutes a wrong name would waste
  [[ " $VARIANTS " == *" $v "* ]] || [ -d "$RUNS/$v" ] || \
    { echo "EXPORT=$v: no variant of that name in VARIANTS ($VARIANTS) nor a run at $RUNS/$v; EXPORT names variants" >&2; exit 2; }
done
if [ "${SECONDS_EACH:-0}" -gt 0 ]; then
  for v in $VARIANTS; do train_variant "$v" & done
  wait
  echo "trained in $((SECONDS - T0)) s"
fi
if [ "${CURVE:-0}" = 1 ]; then
  for v in $VARIANTS; do curve_variant "$v"; done
fi
if [ "${SWEEP:-0}" = 1 ]; then
  [ -f "$I3D" ] || { echo "SWEEP=1 needs the I3D weights at $I3D"; exit 2; }
  for v in ${SCORE:-$VARIANTS}; do echo "== $v: $(overrides "$v")"; done
  # shellcheck disable=SC2086
  sweep_variants ${SCORE:-$VARIANTS}
  cat "$OUT/sweep.txt"
  echo "scored in $((SECONDS - T0)) s"
fi
for v in ${EXPORT:-}; do
  export_to "$RUNS/$v" "$OUT/$v.safetensors"
done
echo "total $((SECONDS - T0)) s"
