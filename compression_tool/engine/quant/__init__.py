"""Quantization: BN folding, int8 PTQ through ONNX Runtime, LSQ mixed precision, dynamic fixed point.

Small modules, each importable on its own:
- bn_fold: fold conv/linear + BatchNorm pairs (both orders) into the conv, exactly.
- quantizers / qmodules: fake-quantizers (min-max affine, LSQ, dynamic fixed point) and the wrapper that puts
  them on every Conv/Linear's weights and input activations.
- ptq_onnx: ONNX export, static int8 quantization (QDQ, per-channel), ONNX Runtime sessions and timing.
- lsq: LSQ quantization-aware training with per-layer bit widths; bit_search: per-layer bits under a budget.
- fixed_point: Ristretto-style dynamic fixed point; histograms: per-layer weight/activation PNGs.
"""
