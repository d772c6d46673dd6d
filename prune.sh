#!/bin/sh
# The whole pruning chain: sensitivity analysis -> schedule -> thinning -> report.
# With no arguments it runs on the embedded default (digits_net on scikit-learn's digits), training the
# model first when its checkpoint is missing.
#   sh prune.sh [MODEL CHECKPOINT DATA TARGET METHOD [extra pruning.py flags…]]
# e.g. sh prune.sh resnet20 ../shared/data/resnet_cifar10/resnet20-12fca82f.th \
#          image_folder:../shared/data/cifar10_test 80 fpgm --from_data_parallel --eval_batches 8
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python}
MODEL=${1:-digits_net}
CKPT=${2:-work_space/checkpoints/digits_net.pth}
DATA=${3:-digits}
TARGET_ARG=${4:-}          # read before the shift below: extra flags must never be taken for the target
METHOD=${5:-l1}
[ $# -ge 5 ] && shift 5 || shift $#
EXTRA="$*"

if [ "$MODEL" = digits_net ] && [ ! -f "$CKPT" ]; then
  echo "== 0. training the default model (no checkpoint at $CKPT)"
  $PY -m compression_tool.cli.default_model --output "$CKPT"
fi

CSV=work_space/sensitivity_data/${MODEL}_${METHOD}.csv
echo "== 1. sensitivity analysis -> $CSV"
$PY pruning.py --mode sa --model "$MODEL" --best_model_path "$CKPT" --data "$DATA" --method "$METHOD" \
    --output "$CSV" $EXTRA
$PY pruning_analysis_tools/plot_csv.py "$CSV" --force

# default target: 1 point below the unpruned top-1 (read from the CSV's sparsity-0 rows)
TARGET=${TARGET_ARG:-$($PY -c "import csv,sys; r=[x for x in csv.DictReader(open(sys.argv[1])) if float(x['sparsity'])==0]; print(round(float(r[0][list(r[0])[2]])-1.0,2))" "$CSV")}
INPUT=$($PY -c "import sys, model_define as m; print(','.join(map(str,m.model_spec(sys.argv[1]).input_size)))" "$MODEL")
YAML=yaml_file/${MODEL}_${TARGET}.yaml
echo "== 2. schedule for target $TARGET -> $YAML"
$PY pruning_analysis_tools/auto_make_yaml.py "$CSV" "$TARGET" "$MODEL" "$INPUT" --method "$METHOD" \
    --dataset "${DATA%%:*}" --output "$YAML" --force

OUT=work_space/pruned_model/${MODEL}.pth
echo "== 3. thinning -> $OUT"
$PY pruning.py --mode prune --model "$MODEL" --best_model_path "$CKPT" --data "$DATA" --yaml "$YAML" \
    --save_model_pt --output "$OUT" --force $EXTRA
DONE="$CSV, ${CSV%.csv}.png, $YAML, $OUT, work_space/layers_out/${MODEL}.keep.json"
[ "$MODEL" = digits_net ] && FT_DEFAULT=2 || FT_DEFAULT=0
FT=${FINETUNE_EPOCHS:-$FT_DEFAULT}
if [ "$FT" -gt 0 ]; then
  FT_DIR=work_space/finetuned/${MODEL}
  echo "== 4. fine-tuning the thinned model for $FT epochs -> $FT_DIR"
  $PY pruning.py --mode finetune --best_model_path "$OUT" --data "$DATA" --epochs "$FT" --lr 0.01 \
      --save_dir "$FT_DIR" --force
  DONE="$DONE, $FT_DIR"
fi
echo "== done: $DONE"
