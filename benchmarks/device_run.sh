#!/usr/bin/env bash
# One GPU session step on the device machine, with Triton's and Inductor's caches carried between calls.
#
# Usage (from the repository root, on the GPU machine):
#   bash benchmarks/device_run.sh SECONDS COMMAND...      e.g.
#   bash benchmarks/device_run.sh 300 python3 -m deltanet.benchmarks.kernels --no-sdpa --out '$OUT/k'
#
# - Installs the wheels in .whl/ (fla-core etc., never a dependency) into /tmp/site if present.
# - Restores .cache/tc_*.tgz* (Triton's kernel and autotuning cache, Inductor's cache) into /tmp/tc, so fla's
#   autotuning (about 280 s for the 340M model, 100 s per kernel shape) and our builds run once per project,
#   not once per call; afterwards writes them back under $OUT in parts below the device tool's 16 MiB limit.
#   Copy those parts into .cache/ (git-ignored) and carry ".cache" (and ".whl") in the next call.
#   SAVE_CACHES=0 skips that (the device tool returns at most 8 files: keep them for results).
# - Runs COMMAND with a timeout of SECONDS, its output teed into $OUT/log.txt.
set -u
seconds=$1
shift
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=src:/tmp/site
else
    export PYTHONPATH=src
fi
export TRITON_CACHE_DIR=/tmp/tc/triton TRITON_CACHE_AUTOTUNING=1 TORCHINDUCTOR_CACHE_DIR=/tmp/tc/inductor
mkdir -p /tmp/tc
for name in triton inductor; do
    if ls .cache/tc_${name}.tgz* >/dev/null 2>&1; then
        cat .cache/tc_${name}.tgz* | tar xzf - -C /tmp
    fi
done
set -o pipefail
timeout "$seconds" bash -c "$*" 2>&1 | tee "$OUT/log.txt"
status=$?
for name in triton inductor; do
    if [ -d /tmp/tc/$name ] && [ "${SAVE_CACHES:-1}" = 1 ]; then
        (cd /tmp && tar czf - tc/$name | split -b 15M - "$OUT/tc_${name}.tgz.part")
    fi
done
exit $status
