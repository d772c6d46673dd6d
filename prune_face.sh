#!/bin/sh
# The face chain: sensitivity on a verification metric -> schedule for a FLOPs budget (auto_make_yaml.py --flops) -> thinning ->
# fine-tuning (ArcFace, with and without distillation from the unpruned model) -> verification -> report.
#   sh prune_face.sh [FLOPS [CHECKPOINT]]
#     FLOPS       fraction of the MACs to KEEP (default 0.7; as every budget flag of the project)
#     CHECKPOINT  face embedder to prune; default: a MobileFaceNet trained here at 56x48 with ArcFace on ORL s3..s30
# e.g. sh prune_face.sh 0.5
#      INPUT=112,96 sh prune_face.sh 0.7 ../shared/data/mobilefacenet_casia/068.ckpt
# Settings (environment): ORL (../shared/data/orl_faces), MODEL (mobilefacenet), INPUT (56,48 for the default
# model, else the model's own size), METHOD (l1), METRIC (lfw_acc), SPARSITIES (0,0.2,0.4,0.6,0.8),
# BASE_EPOCHS (12), FT_EPOCHS (6), FT_LR (0.01), ALPHA (1: distillation weight), WORK (work_space/face_chain),
# PYTHON.
# Verification: pairs from the held-out subjects s31..s40 (orl:DIR, seed 0). Fine-tuning runs a fixed number of
# epochs and keeps the last state: no checkpoint is picked on the pairs that are reported.
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python}
FLOPS=${1:-0.7}
CKPT=${2:-}
ORL=${ORL:-../shared/data/orl_faces}
MODEL=${MODEL:-mobilefacenet}
METHOD=${METHOD:-l1}
METRIC=${METRIC:-lfw_acc}
SPARSITIES=${SPARSITIES:-0,0.2,0.4,0.6,0.8}
FT_EPOCHS=${FT_EPOCHS:-6}
FT_LR=${FT_LR:-0.01}
ALPHA=${ALPHA:-1}
WORK=${WORK:-work_space/face_chain}
TAG=$($PY -c "import sys; print(round(100 - 100 * float(sys.argv[1])))" "$FLOPS")
[ -d "$ORL" ] || { echo "error: ORL faces not found at $ORL (set ORL=DIR)" >&2; exit 2; }
mkdir -p "$WORK"
# ArcFace on s3..s30, fixed length, last state kept (no selection on the reported pairs)
TRAIN="--data identity_folders:$ORL --subjects s3..s30 --head arcface --s 32 --m 0.5 --batch_size 32 --hflip
       --warmup_iters 9 --force"

if [ -z "$CKPT" ]; then
  INPUT=${INPUT:-56,48}
  BASE_EPOCHS=${BASE_EPOCHS:-12}
  CKPT=$WORK/baseline/last_step=$((BASE_EPOCHS * 9)).pth
  if [ ! -f "$CKPT" ]; then
    echo "== 0. training the default embedder ($MODEL at $INPUT, ArcFace on ORL s3..s30) -> $CKPT"
    $PY -m compression_tool.cli.face_chain init --output "$WORK/init.pth" --model "$MODEL" --input_size "$INPUT" --force
    $PY pruning.py --mode finetune --best_model_path "$WORK/init.pth" $TRAIN --epochs "$BASE_EPOCHS" --lr 0.1 \
        --weight_decay 5e-3 --milestones "$(echo "$BASE_EPOCHS" | awk '{print 0.6*$1","0.85*$1}')" \
        --save_dir "$WORK/baseline"
  fi
else
  INPUT=${INPUT:-$($PY -c "import sys, model_define as m
print(','.join(map(str, m.model_spec(sys.argv[1]).input_size[1:])))" "$MODEL")}
fi
COMMON="--model $MODEL --input_size $INPUT"

CSV=$WORK/${MODEL}_${METHOD}_${METRIC}.csv
echo "== 1. sensitivity analysis on $METRIC (ORL s31..s40 pairs) -> $CSV"
$PY pruning.py --mode sa $COMMON --best_model_path "$CKPT" --data "orl:$ORL" --metric "$METRIC" \
    --method "$METHOD" --sparsities "$SPARSITIES" --output "$CSV" --work_space "$WORK"
$PY pruning_analysis_tools/plot_csv.py "$CSV" --force

YAML=$WORK/${MODEL}_flops-${TAG}.yaml
echo "== 2. schedule: least sensitive layers first until ${TAG}% of the MACs are gone -> $YAML"
$PY pruning_analysis_tools/auto_make_yaml.py "$CSV" --flops "$FLOPS" $COMMON --best_model_path "$CKPT" --metric "$METRIC" \
    --method "$METHOD" --dataset orl --output "$YAML" --force

PRUNED=$WORK/${MODEL}_flops-${TAG}.pth
echo "== 3. thinning -> $PRUNED"
$PY pruning.py --mode prune $COMMON --best_model_path "$CKPT" --data "orl:$ORL" --metric "$METRIC" --yaml "$YAML" \
    --save_model_pt --output "$PRUNED" --force --work_space "$WORK"

echo "== 4. fine-tuning $FT_EPOCHS epochs, without and with distillation from $CKPT"
$PY pruning.py --mode finetune --model "$MODEL" --best_model_path "$PRUNED" $TRAIN --epochs "$FT_EPOCHS" \
    --lr "$FT_LR" --milestones "$(echo "$FT_EPOCHS" | awk '{print 0.6*$1","0.85*$1}')" \
    --save_dir "$WORK/finetune_${TAG}_none"
$PY pruning.py --mode finetune --model "$MODEL" --best_model_path "$PRUNED" $TRAIN --epochs "$FT_EPOCHS" \
    --lr "$FT_LR" --milestones "$(echo "$FT_EPOCHS" | awk '{print 0.6*$1","0.85*$1}')" \
    --teacher_path "$CKPT" --distill cosine --alpha "$ALPHA" --save_dir "$WORK/finetune_${TAG}_cosine"
FT=$WORK/finetune_${TAG}_none/last_step=$((FT_EPOCHS * 9)).pth
FTD=$WORK/finetune_${TAG}_cosine/last_step=$((FT_EPOCHS * 9)).pth

echo "== 5. verification and report (ORL s31..s40 pairs) -> $WORK/report_${TAG}.json"
$PY -m compression_tool.cli.face_chain report baseline="$CKPT" pruned="$PRUNED" finetuned="$FT" finetuned+distill="$FTD" \
    --data "orl:$ORL" $COMMON --metric "$METRIC" --json "$WORK/report_${TAG}.json" --force
echo "== done: $CSV, ${CSV%.csv}.png, $YAML, $PRUNED, $FT, $FTD"
