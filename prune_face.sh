#!/bin/sh
# The face chain: sensitivity on a verification metric -> schedule -> thinning -> fine-tuning (ArcFace, with and
# without distillation from the unpruned model) -> verification -> report.
#   sh prune_face.sh [BUDGET [CHECKPOINT]]
#     BUDGET      drop:D (default drop:1): target-true — the largest MACs reduction whose thinned, composed model
#                 stays at most D points of 10-fold accuracy (METRIC) below the unpruned model, decided on the check
#                 identities, judged on the report identities (SPLIT). A number F in (0, 1): budget mode — keep F
#                 of the MACs, least sensitive layers first (no accuracy promise).
#     CHECKPOINT  face embedder to prune; default: a MobileFaceNet trained here at 56x48 with ArcFace on ORL s3..s20
# e.g. sh prune_face.sh                 # drop:1 on the default embedder
#      sh prune_face.sh 0.5             # keep 50 % of the MACs
#      INPUT=112,96 sh prune_face.sh drop:1 ../shared/data/mobilefacenet_casia/068.ckpt
# Settings (environment): ORL (../shared/data/orl_faces), MODEL (mobilefacenet), INPUT (56,48 for the default
# model, else the model's own size), METHOD (l1), METRIC (lfw_acc), SPARSITIES (0,0.2,0.4,0.6,0.8),
# TRAIN_SUBJECTS (s3..s20: the default embedder's and the fine-tuning's identities), SPLIT (target-true: sa/check/
# report identities, default s21..s26/s27..s33/s34..s40 — 540/630/630 pairs, disjoint from TRAIN_SUBJECTS),
# BN_METHOD (adabn | paired: BN re-estimation after thinning, auto_make_yaml.py --bn_method), MULTIPLE_TESTING
# (none here: auto_make_yaml.py's default guard, simultaneous, needs about 18 check identities to vouch for even the
# lightest cut of the default embedder and this split has 7, so the demo keeps the search's own pick and prints its
# selection-adjusted bound; give MULTIPLE_TESTING=simultaneous with more check identities), BASE_EPOCHS (12),
# FT_EPOCHS (6), FT_LR (0.01), ALPHA (1: distillation weight), WORK (work_space/face_chain), PYTHON.
# Verification: target-true reports on the report identities; budget mode on s31..s40. Fine-tuning runs a fixed
# number of epochs and keeps the last state: no checkpoint is picked on the pairs that are reported.
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python}
BUDGET=${1:-drop:1}
CKPT=${2:-}
case "$BUDGET" in
  drop:*) MODE=target_true; DROP=${BUDGET#drop:}; TAG=drop$DROP ;;
  *) MODE=budget; FLOPS=$BUDGET ;;
esac
SPLIT=${SPLIT:-s21..s26/s27..s33/s34..s40}
BN_METHOD=${BN_METHOD:-adabn}
MULTIPLE_TESTING=${MULTIPLE_TESTING:-none}
TRAIN_SUBJECTS=${TRAIN_SUBJECTS:-s3..s20}
ORL=${ORL:-../shared/data/orl_faces}
MODEL=${MODEL:-mobilefacenet}
METHOD=${METHOD:-l1}
METRIC=${METRIC:-lfw_acc}
SPARSITIES=${SPARSITIES:-0,0.2,0.4,0.6,0.8}
FT_EPOCHS=${FT_EPOCHS:-6}
FT_LR=${FT_LR:-0.01}
ALPHA=${ALPHA:-1}
WORK=${WORK:-work_space/face_chain}
[ "$MODE" = budget ] && TAG=flops-$($PY -c "import sys; print(round(100 - 100 * float(sys.argv[1])))" "$FLOPS")
[ -d "$ORL" ] || { echo "error: ORL faces not found at $ORL (set ORL=DIR)" >&2; exit 2; }
mkdir -p "$WORK"
# ArcFace on TRAIN_SUBJECTS, fixed length, last state kept (no selection on the reported pairs)
TRAIN="--data identity_folders:$ORL --subjects $TRAIN_SUBJECTS --head arcface --s 32 --m 0.5 --batch_size 32 --hflip
       --warmup_iters 9 --force"

if [ -z "$CKPT" ]; then
  INPUT=${INPUT:-56,48}
  BASE_EPOCHS=${BASE_EPOCHS:-12}
  BASE_DIR=$WORK/baseline_${TRAIN_SUBJECTS}_e$BASE_EPOCHS
  CKPT=$(ls -t "$BASE_DIR"/last_step=*.pth 2>/dev/null | head -1 || true)
  if [ -z "$CKPT" ]; then
    echo "== 0. training the default embedder ($MODEL at $INPUT, ArcFace on ORL $TRAIN_SUBJECTS)"
    $PY -m compression_tool.cli.face_chain init --output "$WORK/init.pth" --model "$MODEL" --input_size "$INPUT" --force
    $PY pruning.py --mode finetune --best_model_path "$WORK/init.pth" $TRAIN --epochs "$BASE_EPOCHS" --lr 0.1 \
        --weight_decay 5e-3 --milestones "$(echo "$BASE_EPOCHS" | awk '{print 0.6*$1","0.85*$1}')" \
        --save_dir "$BASE_DIR"
    CKPT=$(ls -t "$BASE_DIR"/last_step=*.pth | head -1)
  fi
else
  INPUT=${INPUT:-$($PY -c "import sys, model_define as m
print(','.join(map(str, m.model_spec(sys.argv[1]).input_size[1:])))" "$MODEL")}
fi
COMMON="--model $MODEL --input_size $INPUT"

SPLIT_FLAGS=""
REPORT_SUBJECTS=s31..s40
if [ "$MODE" = target_true ]; then SPLIT_FLAGS="--split $SPLIT"; REPORT_SUBJECTS=${SPLIT##*/}; fi
CSV=$WORK/${MODEL}_${METHOD}_${METRIC}_${MODE}.csv
echo "== 1. sensitivity analysis on $METRIC (ORL pairs; target-true: the SA identities of $SPLIT) -> $CSV"
$PY pruning.py --mode sa $COMMON --best_model_path "$CKPT" --data "orl:$ORL" --metric "$METRIC" \
    --method "$METHOD" --sparsities "$SPARSITIES" --output "$CSV" --work_space "$WORK" $SPLIT_FLAGS
$PY pruning_analysis_tools/plot_csv.py "$CSV" --force

YAML=$WORK/${MODEL}_${TAG}.yaml
BN_FLAGS=""
if [ "$MODE" = target_true ]; then
  echo "== 2. target-true schedule: at most $DROP points of $METRIC below the unpruned model -> $YAML"
  $PY pruning_analysis_tools/auto_make_yaml.py "$CSV" --drop "$DROP" --mode target_true $COMMON \
      --best_model_path "$CKPT" --data "orl:$ORL" --metric "$METRIC" --method "$METHOD" $SPLIT_FLAGS \
      --bn_recalib 8 --bn_method "$BN_METHOD" --multiple_testing "$MULTIPLE_TESTING" --output "$YAML" --force
  if [ "$($PY -m compression_tool.cli.schedule_info "$YAML" pruners)" = 0 ]; then
    echo "error: no schedule meets the target on the check identities (see the note above); nothing to thin" >&2
    exit 1
  fi
  BN=$($PY -m compression_tool.cli.schedule_info "$YAML" bn_recalib)
  [ "$BN" -gt 0 ] && BN_FLAGS="--bn_recalib $BN"
else
  echo "== 2. schedule: least sensitive layers first until ${TAG#flops-}% of the MACs are gone -> $YAML"
  $PY pruning_analysis_tools/auto_make_yaml.py "$CSV" --flops "$FLOPS" $COMMON --best_model_path "$CKPT" \
      --metric "$METRIC" --method "$METHOD" --dataset orl --output "$YAML" --force
fi

PRUNED=$WORK/${MODEL}_${TAG}.pth
echo "== 3. thinning -> $PRUNED"
$PY pruning.py --mode prune $COMMON --best_model_path "$CKPT" --data "orl:$ORL" --metric "$METRIC" --yaml "$YAML" \
    --save_model_pt --output "$PRUNED" --force --work_space "$WORK" $SPLIT_FLAGS $BN_FLAGS
echo "== 4. fine-tuning $FT_EPOCHS epochs, without and with distillation from $CKPT"
$PY pruning.py --mode finetune --model "$MODEL" --best_model_path "$PRUNED" $TRAIN --epochs "$FT_EPOCHS" \
    --lr "$FT_LR" --milestones "$(echo "$FT_EPOCHS" | awk '{print 0.6*$1","0.85*$1}')" \
    --save_dir "$WORK/finetune_${TAG}_none"
$PY pruning.py --mode finetune --model "$MODEL" --best_model_path "$PRUNED" $TRAIN --epochs "$FT_EPOCHS" \
    --lr "$FT_LR" --milestones "$(echo "$FT_EPOCHS" | awk '{print 0.6*$1","0.85*$1}')" \
    --teacher_path "$CKPT" --distill cosine --alpha "$ALPHA" --save_dir "$WORK/finetune_${TAG}_cosine"
FT=$(ls -t "$WORK"/finetune_"${TAG}"_none/last_step=*.pth | head -1)
FTD=$(ls -t "$WORK"/finetune_"${TAG}"_cosine/last_step=*.pth | head -1)

echo "== 5. verification and report (ORL $REPORT_SUBJECTS pairs) -> $WORK/report_${TAG}.json"
$PY -m compression_tool.cli.face_chain report baseline="$CKPT" pruned="$PRUNED" finetuned="$FT" finetuned+distill="$FTD" \
    --data "orl:$ORL" --subjects "$REPORT_SUBJECTS" $COMMON --metric "$METRIC" --json "$WORK/report_${TAG}.json" --force
echo "== done: $CSV, ${CSV%.csv}.png, $YAML, $PRUNED, $FT, $FTD"
