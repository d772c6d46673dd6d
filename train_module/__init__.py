"""Fine-tuning: margin heads (heads.py), optimizer/LR schedule (optim.py), training loops (finetune.py),
CLI (``python -m train_module``, cli.py)."""
