"""A SparkSession for the evaluator: Java checked first, workers on this interpreter.

Workers run ``PYSPARK_PYTHON``; set to ``sys.executable`` so pandas UDFs find the same
packages as the driver (otherwise: "No module named 'pandas'"). Defaults suit local mode
(``local[*]``): no UI, UTC session time, Arrow batches, a driver heap of a third of the
machine's memory (4g to 16g); ``--spark-conf KEY=VALUE`` overrides.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from lis.errors import ConfigError

JAVA_HINT = "install Java 17 (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.python.worker.reuse": "true",
}


def default_driver_memory(total_bytes: int | None = None) -> str:
    """A third of this machine's memory, 4g to 16g. In local mode the driver's JVM is also every
    executor: 74M impressions ran out of a 4g heap on a 24 GiB machine and finished with 8g."""
    if total_bytes is None:
        try:
            total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return "4g"
    return f"{min(16, max(4, round(total_bytes / 3 / 2**30)))}g"


def java_major() -> int | None:
    """Major version of the java Spark would start (JAVA_HOME first), None when there is none."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    try:
        text = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def check_spark_available() -> None:
    """ConfigError (one line) unless pyspark imports and Java >= 17 is installed."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError("the Spark engine needs pyspark: pip install 'lis-align[spark]'.") from None
    major = java_major()
    if major is None or major < 17:
        found = "no java found" if major is None else f"found Java {major}"
        raise ConfigError(f"the Spark engine needs Java 17 or newer ({found}): {JAVA_HINT}.")


def parse_conf(items) -> dict:
    """``["spark.x=1", ...]`` (or a dict) -> dict, each item checked for KEY=VALUE."""
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--spark-conf must look like KEY=VALUE; got {item!r}.")
        out[key.strip()] = value.strip()
    return out


def spark_session(master: str | None = None, conf=None):
    """The active SparkSession, or a new one on ``master`` (default ``local[*]``) with ``conf``."""
    check_spark_available()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None and not conf:
        return active
    builder = SparkSession.builder.master(master or "local[*]").appName("lis-align")
    for key, value in (DEFAULTS | {"spark.driver.memory": default_driver_memory()} | parse_conf(conf)).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
