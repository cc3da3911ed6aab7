# Sourced by the GPU scripts: the wheels folder that travels with the checkout (WHL), a temporary
# site for what the GPU host lacks (tomli-w; the benchmark-only peers go there too), and PYTHONPATH
# with the checkout first. PyAV (36 MB; the tests' datasets are MP4) is installed when its wheel
# travels in $AV_WHL (default out/gpu/av: carry it too; it and the I3D weights do not fit together).
WHL=${WHL:-out/gpu/whl}
export HPDM_BENCH_SITE=${HPDM_BENCH_SITE:-/tmp/hpdm-bench-site}
mkdir -p "$HPDM_BENCH_SITE"
python3 -c 'import tomli_w' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target "$HPDM_BENCH_SITE" "$WHL"/tomli_w-*.whl
AV_WHL=${AV_WHL:-out/gpu/av}
if ls "$AV_WHL"/av-*.whl >/dev/null 2>&1 && ! python3 -c 'import av' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target "$HPDM_BENCH_SITE" "$AV_WHL"/av-*.whl
fi
export PYTHONPATH=$HPDM_BENCH_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
export_to() {   # $1: a run directory, $2: an output file: its newest sampling weights, fp16 (export_weights)
  python3 -c "from hpdm_cli.train.checkpoint import export_weights as e; print('exported', e('$1', '$2'))"
}
