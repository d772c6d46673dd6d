#!/usr/bin/env python
"""Quantization: BN folding, int8 ONNX Runtime, LSQ, dynamic fixed point, histograms — see `python quantization.py
--help`. The command line lives in compression_tool.cli.quantization."""
from compression_tool.cli.quantization import main

if __name__ == "__main__":
    main()
