#!/bin/sh
# Quantization end to end: BN folding -> int8 ONNX Runtime (PTQ) -> LSQ mixed precision (searched per-layer
# bits + QAT) -> dynamic fixed point -> per-layer histograms.
# With no arguments it runs on the embedded default (digits_net on scikit-learn's digits), training the model
# first when its checkpoint is missing. The checkpoint may be a thinned one from prune.sh (prune, then quantize).
#   sh quantization.sh [MODEL CHECKPOINT DATA [extra quantization.py flags…]]
# e.g. sh prune.sh && sh quantization.sh digits_net work_space/pruned_model/digits_net.pth
#      sh quantization.sh resnet20 ../shared/data/resnet_cifar10/resnet20-12fca82f.th \
#          image_folder:../shared/data/cifar10_test --from_data_parallel --eval_batches 8 --epochs 0
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python}
MODEL=${1:-digits_net}
CKPT=${2:-work_space/checkpoints/digits_net.pth}
DATA=${3:-digits}
[ $# -ge 3 ] && shift 3 || shift $#
EXTRA="$*"
OUT=work_space/output/quant

if [ "$MODEL" = digits_net ] && [ ! -f "$CKPT" ]; then
  echo "== 0. training the default model (no checkpoint at $CKPT)"
  $PY -m compression_tool.cli.default_model --output "$CKPT"
fi

COMMON="--model $MODEL --best_model_path $CKPT --data $DATA --out_dir $OUT --force"
echo "== 1. BN folding (outputs must match)"
$PY quantization.py --mode fold $COMMON $EXTRA
echo "== 2. post-training int8: ONNX export, static QDQ quantization, ONNX Runtime vs fp32"
$PY quantization.py --mode ptq $COMMON $EXTRA
echo "== 3. LSQ: per-layer bits searched under average 4-bit weights / 6-bit activations, then QAT"
$PY quantization.py --mode lsq $COMMON --avg_bit_weights 4 --avg_bit_fm 6 \
    --save work_space/checkpoints/${MODEL}_lsq.pth $EXTRA
echo "== 4. dynamic fixed point (8-bit), without and with BN folding"
$PY quantization.py --mode dfp $COMMON $EXTRA
echo "== 5. per-layer weight / activation histograms"
$PY quantization.py --mode hist $COMMON $EXTRA
echo "== done: $OUT/${MODEL}_fp32.onnx, $OUT/${MODEL}_int8.onnx, work_space/checkpoints/${MODEL}_lsq.pth, $OUT/histograms/${MODEL}/"
