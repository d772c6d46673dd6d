"""Pruning criteria: each ranks a group's root channels, lowest score removed first.

Importing the package registers every criterion; ``make_criterion(name)`` builds one, ``CRITERIA`` lists them.
"""
from compression_tool.engine.criteria import data, hrank, stats, weight  # noqa: F401  (register criteria)
from compression_tool.engine.criteria.base import (  # noqa: F401
                                                   CRITERIA,
                                                   Criterion,
                                                   criterion_for_pruner_class,
                                                   describe_criteria,
                                                   make_criterion,
)
from compression_tool.engine.criteria.hrank import HRank, state_fingerprint  # noqa: F401
from compression_tool.engine.criteria.weight import FPGM, L1, L2  # noqa: F401
