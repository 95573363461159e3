#!/usr/bin/env bash
# The Python package (issue 18): builds the wheel from python/ with maturin,
# installs it into a fresh virtual environment with numpy and pytest, and
# runs python/tests against the delg-gpu binary that `cargo test --release`
# left in target/release. Shares target/ with the cargo steps, so only the
# extension and the crates it adds compile. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m venv --help >/dev/null 2>&1; then
    echo "ci: installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv >/dev/null
fi

venv=target/ci-python
rm -rf "$venv" target/wheels
python3 -m venv "$venv"
"$venv/bin/pip" install -q maturin numpy pytest
"$venv/bin/maturin" build --release -m python/Cargo.toml --out target/wheels \
    --interpreter "$venv/bin/python"
wheel=$(ls target/wheels/delg_gpu-*.whl)
echo "ci: wheel $wheel ($(du -h "$wheel" | cut -f1))"
"$venv/bin/pip" install -q "$wheel"

export DELG_GPU_BIN="$PWD/target/release/delg-gpu"
test -x "$DELG_GPU_BIN" || { echo "ci: $DELG_GPU_BIN is missing: run cargo test --release first" >&2; exit 1; }
# From python/tests, not python/: the installed wheel is imported, not the
# source folder python/delg_gpu (which lacks the compiled module).
"$venv/bin/python" -m pytest python/tests -q -p no:cacheprovider
