"""One local SparkSession for every Spark test (start-up costs seconds), skipped with the reason
when pyspark or Java 17 is missing (CI has both; `make test` installs pyspark)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[spark]')")
    from lis.spark.session import JAVA_HINT, java_major, spark_session

    major = java_major()
    if major is None or major < 17:
        pytest.skip(f"the Spark engine needs Java 17 ({JAVA_HINT})")
    session = spark_session("local[2]", {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.driver.memory": "2g"})
    yield session
    session.stop()
