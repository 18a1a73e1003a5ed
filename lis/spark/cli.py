"""What ``lis-align lis score --engine spark`` loads: the catalogue on the driver (bounded, the
in-memory loader) and the log as a checked Spark DataFrame (:func:`lis.spark.source.read_log`)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from lis.errors import DataError


def load_spark_log(data_dir, master=None, conf=()):
    """``(data, spark)``: ``data.log`` a Spark DataFrame, ``data.catalogue`` pandas."""
    from lis.datadir import find_table
    from lis.schemas import load_catalogue
    from lis.spark.session import parse_conf, spark_session
    from lis.spark.source import find_log, read_log

    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found." if not root.exists() else f"{root}: not a directory.")
    catalogue = load_catalogue(find_table(root, "catalogue"))
    log_path = find_log(root)
    spark = spark_session(master, parse_conf(conf))
    log = read_log(spark, log_path, item_ids=catalogue["item_id"])
    return SimpleNamespace(catalogue=catalogue, log=log, path=root), spark
