"""The LIS evaluator on Apache Spark: the same numbers as :mod:`lis.evaluator`, on logs that
outgrow one machine (docs/science.md; README "The Spark engine").

What grows with the log runs on the executors: reading and validating the Parquet log
(:mod:`lis.spark.source`), the window cuts (:mod:`lis.spark.windows`), the co-engagement
builder (:mod:`lis.spark.builders`), per-user histories and similarity features with the
in-memory kernel on blocks of whole users (:mod:`lis.spark.blocks`), the probe's Newton sums
(:mod:`lis.spark.probe`) and exact AUC/GAUC with bootstrap statistics per user
(:mod:`lis.spark.metrics`). What is bounded by the catalogue runs on the driver: the oracle
table, the item-list builders (category, random, ranker_knn), the built-in ranker (fitted on a
bounded sample of users) and the report. Entry point: ``lis.engine.make_evaluator(..., EvaluatorConfig(
engine="spark"))`` or :class:`lis.spark.evaluator.SparkLISEvaluator`. Needs pyspark (the
``spark`` extra) and Java 17.
"""
