#!/usr/bin/env bash
# Train Duet's demo models from scratch on CPU (2 cores, ~85 minutes wall, both models side by
# side on one thread each, on the committed tokenizer), package them into app/data/demo and run
# the eval:
#     bash scripts/train_demo.sh [OUT_DIR]        # default build/demo
# The generator is seeded (--seed 1) and nothing is downloaded; see training/ and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${1:-build/demo}"
MINUTES="${DUET_TRAIN_MINUTES:-85}"
# the committed tokenizer (both models read it); DUET_NEW_TOKENIZER=1 trains a new one
"$PY" -m training.train tokenizer --out "$OUT" --seed 1 ${DUET_NEW_TOKENIZER:+--new-tokenizer}
# PASSIVE: the two trainers share two cores (spinning OpenMP threads would steal from each other);
# the evals below run alone and keep the default (passive waits cost a small model most of its speed)
OMP_WAIT_POLICY=PASSIVE "$PY" -m training.train reasoner --out "$OUT" --minutes "$MINUTES" --seed 1 --threads 1 \
    --hp '{"batch": 4, "lr": 0.002, "design_share": 0.4}' > "$OUT/train_reasoner.log" 2>&1 &
OMP_WAIT_POLICY=PASSIVE "$PY" -m training.train coder --out "$OUT" --minutes "$MINUTES" --seed 1 --threads 1 > "$OUT/train_coder.log" 2>&1
wait
"$PY" -m training.package --run "$OUT"
"$PY" -m training.eval --out bench/results/demo_eval.json
"$PY" -m training.eval --style train --n 12 --n-coder 20 --n-run 12 --out bench/results/demo_eval_train_style.json
"$PY" -m training.eval --style sample --n 30 --n-coder 12 --n-run 6 --out bench/results/demo_eval_sample.json
"$PY" -m training.package --run "$OUT" --eval bench/results/demo_eval.json \
    --eval-train bench/results/demo_eval_train_style.json --eval-sample bench/results/demo_eval_sample.json
