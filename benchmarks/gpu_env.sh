# Sourced by the GPU scripts: the wheels folder that travels with the checkout (WHL), a temporary
# site for what the GPU host lacks (tomli-w; the benchmark-only peers go there too), and PYTHONPATH
# with the checkout first. PyAV (36 MB; the tests' datasets are MP4) is installed when its wheel
# travels in $AV_WHL (default out/gpu/av: carry it too; it and the I3D weights do not fit together).
if [ -z "${WHL:-}" ]; then   # the full wheels folder, else the minimal one (tomli-w alone) when only it travelled
  WHL=out/gpu/whl; [ -d "$WHL" ] || WHL=out/gpu/whl-min
fi
export HPDM_BENCH_SITE=${HPDM_BENCH_SITE:-/tmp/hpdm-bench-site}
mkdir -p "$HPDM_BENCH_SITE"
python3 -c 'import tomli_w' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target "$HPDM_BENCH_SITE" "$WHL"/tomli_w-*.whl
AV_WHL=${AV_WHL:-out/gpu/av}
if ls "$AV_WHL"/av-*.whl >/dev/null 2>&1 && ! python3 -c 'import av' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target "$HPDM_BENCH_SITE" "$AV_WHL"/av-*.whl
fi
export PYTHONPATH=$HPDM_BENCH_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
# torch.compile's caches (FX graphs, AOTAutograd, Triton kernels) in one folder that can travel: a cold machine
# compiles the 32x128^2 model for ~400-490 s (docs/benchmarks.md, twentieth and twenty-sixth visits).
# COMPILE_CACHE=<a carried .tgz> fills the folder before anything compiles; `save_compile_cache` packs it
# into $OUT/compile-cache.tgz for the next cold machine (same torch, same GPU architecture). For the 32x128^2
# model's training on an H100 it came to 92 MB, more than a call returns (docs/benchmarks.md, twenty-seventh visit):
# it serves models whose caches are small, or several calls on one warm machine.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/hpdm-inductor}
mkdir -p "$TORCHINDUCTOR_CACHE_DIR"
if [ -n "${COMPILE_CACHE:-}" ] && [ -f "$COMPILE_CACHE" ]; then
  tar -xzf "$COMPILE_CACHE" -C "$TORCHINDUCTOR_CACHE_DIR" && echo "compile cache: $COMPILE_CACHE unpacked"
fi
save_compile_cache() {   # $OUT/compile-cache.tgz from the cache folder; prints its size (a returned file: <= 16 MiB)
  tar -czf "$OUT/compile-cache.tgz" -C "$TORCHINDUCTOR_CACHE_DIR" . && du -h "$OUT/compile-cache.tgz"
}
export_to() {   # $1: a run directory, $2: an output file: its newest sampling weights, fp16 (export_weights)
  python3 -c "from hpdm_cli.checkpoint import export_weights as e; print('exported', e('$1', '$2'))"
}
