#!/usr/bin/env bash
# The GPU runs behind docs/results.md (MQAR and the language-modelling comparison), for a machine with 4 GPUs.
# Run from the repository root with PYTHONPATH=src (benchmarks/device_run.sh sets it), results under $OUT:
#   bash benchmarks/eval_gpu_runs.sh profile     where the small models' training step goes (eager, compiled,
#                                                packed or one long document, default or 8 threads, alone)
#   bash benchmarks/eval_gpu_runs.sh launch      the long runs in the background (setsid, so they outlive the
#                                                call): the comparison (LONG_STEPS steps of 24 rows of
#                                                LONG_DATA, default site-packages; the sliding-window hybrid alone on GPU 3, the
#                                                others two per GPU on 0 and 1) and MQAR's DeltaNet runs on
#                                                LONG_MQAR_GPUS (default 2; LONG_MQAR: "dim:heads:lr ...",
#                                                LONG_MQAR_STEPS, LONG_MQAR_SECONDS)
#   bash benchmarks/eval_gpu_runs.sh watch S     print their progress for S seconds, then pack what exists
#   bash benchmarks/eval_gpu_runs.sh finish      stop the comparison (checkpoints), make both tables, pack
#   bash benchmarks/eval_gpu_runs.sh threads     the trainer's CPU-thread cap checked: one run alone with the
#                                                default and with OMP_NUM_THREADS=64, then four at once
#   bash benchmarks/eval_gpu_runs.sh calibrate   100 compiled steps of 4 architectures, one GPU each
#   bash benchmarks/eval_gpu_runs.sh mqar        MQAR, the paper's setting: 12 runs (3 models, 2 widths, a few
#                                                rates) spread over MQAR_GPUS, each at most MQAR_SECONDS
#   bash benchmarks/eval_gpu_runs.sh bench       bench kernels on GPU 0 and bench model's sweep on GPU 1
#   bash benchmarks/eval_gpu_runs.sh compare     the language-modelling comparison: COMPARE_STEPS steps of
#                                                COMPARE_BATCH rows of 2048 bytes, 2 runs on GPU 0, then a
#                                                table of what finished within COMPARE_SECONDS
#
# Long runs through the device tool (a call lasts at most 10 minutes; the machine goes back after 30 s idle
# and after 30 minutes held): first call `SAVE_CACHES=0 bash benchmarks/device_run.sh 585 "bash
# benchmarks/eval_gpu_runs.sh launch && bash benchmarks/eval_gpu_runs.sh watch 480"`, then at once
# `PYTHONPATH=src bash benchmarks/eval_gpu_runs.sh watch 540`, then `... finish`. Each call returns what exists
# so far (long.tgz), so a machine lost between calls loses only the runs' remainder.
set -u
phase=$1
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/mqar /tmp/bench
case $phase in
profile)
    mkdir -p /tmp/prof
    find "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" -name '*.py' | head -4000 | xargs cat > /tmp/one_document.txt
    prof() {  # GPU, label, extra options
        local gpu=$1 label=$2
        shift 2
        CUDA_VISIBLE_DEVICES=$gpu python3 benchmarks/profile_train_step.py --label "$label" --out /tmp/prof \
            --batch-size 24 --seq-len 2048 "$@" > "/tmp/prof/$label.log" 2>&1
        tail -1 "/tmp/prof/$label.log"
    }
    # round 1: four at once, default threads (each torch process starts one per core)
    prof 0 r1-deltanet --model deltanet-small &
    prof 1 r1-tpp --model transformer++-small &
    prof 2 r1-deltanet-onedoc --model deltanet-small --data /tmp/one_document.txt &
    prof 3 r1-deltanet-compiled --model deltanet-small --compile --warmup 12 &
    wait
    # round 2: four at once, 8 threads each
    export OMP_NUM_THREADS=8
    prof 0 r2-deltanet --model deltanet-small &
    prof 1 r2-tpp --model transformer++-small &
    prof 2 r2-tpp-compiled --model transformer++-small --compile --warmup 12 &
    prof 3 r2-linear-compiled --model linear-attn-small --compile --warmup 12 &
    wait
    unset OMP_NUM_THREADS
    # round 3: one alone
    prof 0 r3-deltanet-alone --model deltanet-small
    prof 0 r3-swa-alone --model deltanet-swa-small
    tar czf "$OUT/profile.tgz" -C /tmp prof
    ;;
threads)
    mkdir -p /tmp/threads
    unset OMP_NUM_THREADS
    for label in alone-default alone-omp64; do
        [ $label = alone-omp64 ] && export OMP_NUM_THREADS=64
        python3 benchmarks/profile_train_step.py --model deltanet-small --label $label --out /tmp/threads \
            2>&1 | tail -1
    done
    unset OMP_NUM_THREADS
    for gpu in 0 1 2 3; do
        CUDA_VISIBLE_DEVICES=$gpu python3 benchmarks/profile_train_step.py --model deltanet-small \
            --label four-default-gpu$gpu --out /tmp/threads 2>&1 | tail -1 &
    done
    wait
    cp /tmp/threads/profile_train_step.jsonl "$OUT/"
    ;;
launch)
    mkdir -p /tmp/compare /tmp/mqar
    # 8 CPU threads per torch process: one per core (64) in each of several processes made every CPU-side op of
    # the step ~5x slower (benchmarks/eval_gpu_runs.sh profile, docs/results.md)
    export OMP_NUM_THREADS=8
    common="--out /tmp/compare --steps ${LONG_STEPS:-5000} --batch-size 24 --eval-interval 500"
    common="$common --data ${LONG_DATA:-site-packages}"  # stdlib (run 2) is read ~24 times at 250M tokens
    setsid nohup python3 -m deltanet eval compare $common --architectures deltanet-swa --gpus 3 \
        > /tmp/compare/driver-swa.log 2>&1 < /dev/null &
    setsid nohup python3 -m deltanet eval compare $common --architectures deltanet transformer++ linear-attn \
        deltanet-global --gpus 0 1 --runs-per-gpu 2 > /tmp/compare/driver-others.log 2>&1 < /dev/null &
    export OMP_NUM_THREADS=4
    read -r -a mqar_gpus <<< "${LONG_MQAR_GPUS:-2}"
    index=0
    for run in ${LONG_MQAR:-128:2:1e-3 128:2:2e-3 128:2:5e-4 64:2:1e-3 64:2:5e-4 64:1:1e-3 128:1:1e-3}; do
        IFS=: read -r dim heads lr <<< "$run"
        gpu=${mqar_gpus[$((index % ${#mqar_gpus[@]}))]}
        index=$((index + 1))
        CUDA_VISIBLE_DEVICES=$gpu setsid nohup python3 -m deltanet eval mqar --models deltanet --dims "$dim" \
            --heads "$heads" --lrs "$lr" --steps "${LONG_MQAR_STEPS:-30000}" --batch-size 128 --eval-every 500 --stop-at 0.999 \
            --time-limit "${LONG_MQAR_SECONDS:-1250}" --out "/tmp/mqar/h$heads" \
            > "/tmp/mqar/deltanet-$dim-h$heads-$lr.log" 2>&1 < /dev/null &
    done
    sleep 60
    tail -n 3 /tmp/compare/*/log.txt /tmp/compare/driver-*.log /tmp/mqar/*.log
    ;;
watch|finish)
    if [ "$phase" = watch ]; then
        for _ in $(seq 1 $(( ${2:-300} / 60 ))); do
            sleep 60
            echo "== $(date +%T)"
            for log in /tmp/compare/*/log.txt; do
                echo "$(basename "$(dirname "$log")"): $(grep -E '^step' "$log" | tail -1)"
            done
            for log in /tmp/mqar/*.log; do
                echo "$(basename "$log"): $(tr '\r' '\n' < "$log" | grep -v '^$' | tail -1 | cut -c1-150)"
            done
        done
    else
        pkill -TERM -f "deltanet eval compare" || true
        for _ in $(seq 1 30); do
            pgrep -f "deltanet train" > /dev/null || break
            sleep 2
        done
        python3 -m deltanet eval compare --out /tmp/compare --report-only
        for folder in /tmp/mqar/h*; do
            python3 -m deltanet eval mqar --out "$folder" --report-only
        done
    fi
    mkdir -p /tmp/pack/compare
    cp -r /tmp/mqar /tmp/pack/
    cp /tmp/compare/*.log /tmp/compare/results.* /tmp/compare/loss_curves.png /tmp/pack/compare/ 2>/dev/null
    for run in /tmp/compare/*/; do
        name=$(basename "$run")
        cp "$run/metrics.jsonl" "/tmp/pack/compare/$name.metrics.jsonl" 2>/dev/null
        cp "$run/log.txt" "/tmp/pack/compare/$name.log.txt" 2>/dev/null
    done
    tar czf "$OUT/long.tgz" -C /tmp/pack .
    ;;
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
        --steps "${COMPARE_STEPS:-1000}" --batch-size "${COMPARE_BATCH:-24}" --eval-interval 250 --data stdlib \
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
