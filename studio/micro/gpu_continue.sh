#!/usr/bin/env bash
# One device call: continue the embedded model's training from the shipped export, score the
# result against the shipped model on the same GPU, and pack the new export into $OUT.
#
# A session's device time is 15 minutes in all, start-up included, and a call may run 10, so
# this is one prepared command. From the studio's session (the .whl folder holds diffusers and
# controlnet-aux wheels for the device's Python 3.12: see TRAINING.md):
#
#   run(command="bash studio/micro/gpu_continue.sh", carry=[".whl"], timeout_s=600)
#
# Budgets in minutes come from the environment: UNET_MIN (default 4.5), POSE_MIN (1.2),
# DEPTH_MIN (0.6); EVAL_N held-out prompts (200); SEED (1: scenes the first run, seed 0, never
# drew); TRAIN_ARGS more train options. DEVICE=cpu with tiny budgets (and TRAIN_ARGS="--pool 64
# --batch 4") checks the script on a machine without a GPU. What comes back (at most 8 files): log.txt, eval-shipped.json,
# eval-continued.json, and export.tgz.part-* (unpack: cat part-* | tar xzf - -C assets/models).
set -uo pipefail
: "${OUT:?OUT must name the folder whose files come back}"
UNET_MIN=${UNET_MIN:-4.5}
POSE_MIN=${POSE_MIN:-1.2}
DEPTH_MIN=${DEPTH_MIN:-0.6}
EVAL_N=${EVAL_N:-200}
DEVICE=${DEVICE:-cuda}
SEED=${SEED:-1}
TRAIN_ARGS=${TRAIN_ARGS:-}
WORK=${WORK:-/tmp/studio-continue}
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__)" >> "$LOG" 2>&1 || exit 1

# The shipped export is both the starting point and the baseline. The ControlNets are trained
# again after the UNet: a ControlNet adds to the UNet's features, which the UNet phase changes.
rm -rf "$WORK" && mkdir -p "$WORK"
cp -r assets/models "$WORK/shipped" && cp -r assets/models "$WORK/continued"
train() {
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
    python3 -m studio.micro.train --device "$DEVICE" --seed "$SEED" --out "$WORK/run" \
        --export-dest "$WORK/continued" $TRAIN_ARGS "$@" 2>&1 | tee -a "$LOG"
}
train --phase unet --init-from "$WORK/shipped/micro-sd" --minutes "$UNET_MIN" || exit 1
train --phase controlnet-pose --init-from "$WORK/continued/micro-sd" --minutes "$POSE_MIN" || exit 1
train --phase controlnet-depth --init-from "$WORK/continued/micro-sd" --minutes "$DEPTH_MIN" || exit 1

# Pack before scoring, so the weights come back even if the time runs out during the eval.
tar czf - -C "$WORK/continued" micro-sd micro-controlnet-pose micro-controlnet-depth \
    | split -b 15m - "$OUT/export.tgz.part-"
for name in shipped continued; do
    python3 -m studio.micro.eval --model "$WORK/$name/micro-sd" --device "$DEVICE" --n "$EVAL_N" --controlnets \
        --n-control $(( EVAL_N / 4 > 8 ? EVAL_N / 4 : 8 )) --judge-n 0 --json > "$OUT/eval-$name.json" 2>> "$LOG"
done
echo "done: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
