"""The evaluator for a config's engine: ``make_evaluator(log, catalogue, EvaluatorConfig(engine=...))``.

``engine="memory"`` (default) is :class:`lis.evaluator.LISEvaluator`; ``engine="spark"`` is
:class:`lis.spark.evaluator.SparkLISEvaluator` (same API, same numbers; ``log`` may then be a
Spark DataFrame from :func:`lis.spark.source.read_log`). One home for the choice, so the
in-memory evaluator never imports the engine built on top of it.
"""
from __future__ import annotations

from lis.evaluator import EvaluatorConfig, LISEvaluator


def make_evaluator(log, catalogue=None, config: EvaluatorConfig | None = None, name: str = "log") -> LISEvaluator:
    config = config or EvaluatorConfig()
    config.check()
    if config.engine == "spark":
        from lis.spark.evaluator import SparkLISEvaluator

        return SparkLISEvaluator(log, catalogue, config, name=name)
    return LISEvaluator(log, catalogue, config, name=name)
