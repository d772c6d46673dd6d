"""Evaluation (an application of the engine): classification and verification metrics, and ``setup``, which
turns a data spec into a fixed evaluation subset and an ``evaluate(model)`` function.
``python -m test_module.evaluate`` is a shim onto compression_tool.cli.evaluate."""
