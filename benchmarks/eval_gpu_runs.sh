#!/usr/bin/env bash
# The GPU runs behind docs/results.md (MQAR and the language-modelling comparison), for a machine with 4 GPUs.
# Run from the repository root with PYTHONPATH=src (benchmarks/device_run.sh sets it), results under $OUT:
#   bash benchmarks/eval_gpu_runs.sh calibrate   100 compiled steps of 4 architectures, one GPU each
#   bash benchmarks/eval_gpu_runs.sh mqar        MQAR, the paper's setting: 12 runs (3 models, 2 widths, a few
#                                                rates) spread over MQAR_GPUS, each at most MQAR_SECONDS
#   bash benchmarks/eval_gpu_runs.sh bench       bench kernels on GPU 0 and bench model's sweep on GPU 1
#   bash benchmarks/eval_gpu_runs.sh compare     the language-modelling comparison: COMPARE_STEPS steps of
#                                                COMPARE_BATCH rows of 2048 bytes, 2 runs on GPU 0, then a
#                                                table of what finished within COMPARE_SECONDS
set -u
phase=$1
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/mqar /tmp/bench
case $phase in
calibrate)
    python3 -m deltanet eval compare --out /tmp/calibrate --architectures deltanet transformer++ linear-attn \
        deltanet-swa --steps 100 --log-interval 20 --eval-interval 0 --eval-rows 16 --compile --gpus 0 1 2 3
    mkdir -p "$OUT/calibrate"
    for run in /tmp/calibrate/*/; do
        name=$(basename "$run")
        cp "$run/metrics.jsonl" "$OUT/calibrate/$name.metrics.jsonl"
        tail -5 "$run/log.txt" > "$OUT/calibrate/$name.log.txt"
    done
    ;;
mqar)
    # MQAR_RUNS (model:lr ...; default: DeltaNet at 3 rates, linear attention at 2, Transformer++ at 1), each
    # at widths 64 and 128, spread over MQAR_GPUS
    seconds=${MQAR_SECONDS:-240}
    read -r -a gpus <<< "${MQAR_GPUS:-0 1 2 3}"
    index=0
    runs=${MQAR_RUNS:-deltanet:5e-4 deltanet:1e-3 deltanet:2e-3 linear-attn:1e-3 linear-attn:3e-3 transformer++:1e-3}
    for run in $runs; do
        model=${run%%:*}
        lr=${run##*:}
        for dim in 64 128; do
            CUDA_VISIBLE_DEVICES=${gpus[$((index % ${#gpus[@]}))]} python3 -m deltanet eval mqar --models "$model" \
                --dims $dim --lrs "$lr" --steps "${MQAR_STEPS:-30000}" --batch-size 128 --eval-every 250 --stop-at 0.999 \
                --time-limit "$seconds" --out /tmp/mqar > "/tmp/mqar/$model-$dim-$lr.log" 2>&1 &
            index=$((index + 1))
        done
    done
    wait
    python3 -m deltanet eval mqar --out /tmp/mqar --report-only
    ;;
bench)
    # the two figures, each on a GPU of its own (MQAR may run on the others meanwhile)
    python3 -m deltanet bench kernels --out /tmp/bench/kernels > /tmp/bench/kernels.log 2>&1 &
    CUDA_VISIBLE_DEVICES=1 python3 -m deltanet bench model --out /tmp/bench/model --sections sweep --steps 5 \
        --warmup 2 > /tmp/bench/model.log 2>&1 &
    wait
    tail -40 /tmp/bench/kernels.log /tmp/bench/model.log
    ;;
compare)
    # eager, as measured on 2026-11-27 (linear attention did not compile then; fixed since: --compile is open)
    timeout "${COMPARE_SECONDS:-480}" python3 -m deltanet eval compare --out /tmp/compare \
        --steps "${COMPARE_STEPS:-1000}" --batch-size "${COMPARE_BATCH:-24}" --eval-interval 250 \
        --gpus 0 1 2 3 --runs-per-gpu 2
    python3 -m deltanet eval compare --out /tmp/compare --report-only
    mkdir -p /tmp/pack/compare
    cp /tmp/compare/results.* /tmp/compare/loss_curves.png /tmp/pack/compare/
    for run in /tmp/compare/*/; do
        name=$(basename "$run")
        cp "$run/metrics.jsonl" "/tmp/pack/compare/$name.metrics.jsonl"
        cp "$run/log.txt" "/tmp/pack/compare/$name.log.txt"
    done
    tar czf "$OUT/compare.tgz" -C /tmp/pack compare
    ;;
*)
    echo "unknown phase $phase: calibrate, mqar or compare" >&2
    exit 2
    ;;
esac
