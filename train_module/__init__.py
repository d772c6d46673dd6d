"""Fine-tuning (an application of the engine): margin heads, optimizer/LR schedule, training loops.
``python -m train_module`` and ``train_module/train_sparse.py`` are shims onto compression_tool.cli."""
