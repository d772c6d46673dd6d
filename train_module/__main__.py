"""``python -m train_module``: fine-tune a (pruned) model — the command line is compression_tool.cli.finetune."""
from compression_tool.cli.finetune import main

main()
