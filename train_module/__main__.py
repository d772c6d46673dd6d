"""``python -m train_module``: see train_module/cli.py."""
from train_module.cli import main

main()
