# Sourced by the GPU scripts: the wheels folder that travels with the checkout (WHL), a temporary
# site for what the GPU host lacks (tomli-w; the benchmark-only peers go there too), and PYTHONPATH
# with the checkout first.
WHL=${WHL:-out/gpu/whl}
export HPDM_BENCH_SITE=${HPDM_BENCH_SITE:-/tmp/hpdm-bench-site}
mkdir -p "$HPDM_BENCH_SITE"
python3 -c 'import tomli_w' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target "$HPDM_BENCH_SITE" "$WHL"/tomli_w-*.whl
export PYTHONPATH=$HPDM_BENCH_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
