"""``python -m test_module.evaluate``: evaluate a classifier or a face embedder — the command line is
compression_tool.cli.evaluate."""
from compression_tool.cli.evaluate import main

if __name__ == "__main__":
    main()
