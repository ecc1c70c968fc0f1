"""The one SparkSession of a process, configured here and nowhere else.

The master comes from ``--spark-master`` (the ``spark_master`` setting), else ``CDP_SPARK_MASTER``, else ``local[*]``.
One-machine defaults: adaptive execution, shuffle partitions sized to the cores, a driver heap of half the memory and
the parallel garbage collector, UTC session time zone, Parquet with snappy and microsecond timestamps, Arrow between
the JVM and Python; on any master, pyspark's DataFrame debugging off. Java is chosen by :func:`find_java`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.transforms.java import JavaRuntime, find_java

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

SPARK_MASTER_ENV_VAR = "CDP_SPARK_MASTER"
DEFAULT_SPARK_MASTER = "local[*]"
_LOCAL_RE = re.compile(r"^local(?:\[(?P<threads>\*|\d+)(?:,\s*\d+)?\])?$")

#: Where the process's cgroups are named, and where their hierarchies are mounted.
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: A default heap above 32 GB loses the JVM's compressed object pointers.
MAX_DEFAULT_DRIVER_MB = 31 * 1024
#: A local driver's garbage collector, unless the operator chose one (:func:`_operator_chose`).
LOCAL_COLLECTOR = "-XX:+UseParallelGC"
_COLLECTOR_OPTION = re.compile(r"-XX:\+Use\w*GC\b")
#: A local driver's JIT, unless the operator tuned it (:func:`_operator_chose`): the optimising compiler (C2) takes a
#: method once it is three times as hot as Java's defaults ask (5,000 calls, 40,000 loop iterations, 15,000 of both).
#: Each query's generated classes are new to the JVM, many run for moments, and C2 compiles them on the cores the
#: tasks run on: at 1,000,000 records it used about a fifth of a full refresh's CPU. In three alternating pairs
#: (docs/transforms.md, Performance) C2 used 7-18 % less CPU in the full refresh and 23-34 % less in the 1 %
#: incremental run, which took 4-16 % less time (the full refresh 2-6 %). Code that runs long enough to matter still
#: reaches C2, a few thousand calls later.
LOCAL_JIT_OPTIONS = (
    "-XX:Tier4InvocationThreshold=15000 -XX:Tier4MinInvocationThreshold=1800 "
    "-XX:Tier4CompileThreshold=45000 -XX:Tier4BackEdgeThreshold=120000"
)
_JIT_OPTION = re.compile(r"-XX:[+-]?(Tier\w+|\w*CompileThreshold\w*)\b|-X(int|comp)\b")
#: Where the JVM (and Spark's launcher, for the driver) take options besides the command line; pyspark passes
#: ``PYSPARK_SUBMIT_ARGS`` to the launcher (``--driver-java-options``, ``--conf spark.driver.defaultJavaOptions=...``).
_JAVA_OPTIONS_VARIABLES = (
    "JAVA_TOOL_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "_JAVA_OPTIONS",
    "SPARK_SUBMIT_OPTS",
    "PYSPARK_SUBMIT_ARGS",
)

#: pyspark's DataFrame debugging: the Python call site of every column function, kept for the query context of
#: analysis errors. It costs about six JVM round trips and a walk of the Python stack per function, whatever the data
#: size (Spark's own description: "a non-trivial performance overhead"): off, a run of four transforms on a few rows
#: took 30 % less time. Left on when the operator sets it, e.g. while writing a transform.
DATAFRAME_DEBUGGING = "spark.python.sql.dataFrameDebugging.enabled"

#: Spark compiles each query's generated Java code once per distinct source, keeping the classes in a cache of 100 by
#: default. A run of the customers transforms builds more than that, so a second run in the same JVM generated and
#: compiled its classes again (Janino, then the JIT). With 1,000 entries, repeated runs of a 100-record increment on
#: 1,000,000 records took about a quarter less time (docs/transforms.md, Performance). Static: read once, when the
#: session starts; left to the operator who sets it.
CODEGEN_CACHE = "spark.sql.codegen.cache.maxEntries"
CODEGEN_CACHE_ENTRIES = 1000

_lock = threading.Lock()
_session: SparkSession | None = None
_master: str | None = None


class SparkSessionError(CdpError):
    """The Spark session could not start, or was asked for with a different master than the one running."""


def resolve_spark_master(explicit: str | None = None) -> str:
    """``explicit`` (``--spark-master``), else ``CDP_SPARK_MASTER``, else ``local[*]``."""
    return explicit or os.environ.get(SPARK_MASTER_ENV_VAR) or DEFAULT_SPARK_MASTER


def local_cores(master: str) -> int | None:
    """How many cores a ``local`` master uses (``local[*]``: all of them); None for a cluster master."""
    match = _LOCAL_RE.match(master.strip())
    if match is None:
        return None
    threads = match["threads"]
    if threads is None:
        return 1
    if threads == "*":
        return os.cpu_count() or 1
    return int(threads)


def spark_conf(master: str) -> dict[str, str]:
    """Every setting the session starts with (a cluster's own shuffle partitions are left to Spark and AQE)."""
    conf = {
        "spark.master": master,
        "spark.app.name": "cdp-transforms",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # The driver builds every plan, on a cluster too (DATAFRAME_DEBUGGING).
        **({} if _operator_set(DATAFRAME_DEBUGGING) else {DATAFRAME_DEBUGGING: "false"}),
        # The driver and every executor compile generated code and keep a cache each, on a cluster too (CODEGEN_CACHE).
        **({} if _operator_set(CODEGEN_CACHE) else {CODEGEN_CACHE: str(CODEGEN_CACHE_ENTRIES)}),
        # cdp transform prints its own progress per table; Spark's stage bars would interleave with it.
        "spark.ui.showConsoleProgress": "false",
        # Table folders hold only data files: no _SUCCESS markers, no .crc checksum files beside local Parquet.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    }
    cores = local_cores(master)
    if cores is not None:
        # Two partitions per core keeps every core busy through a skewed stage; AQE merges the small ones.
        conf["spark.sql.shuffle.partitions"] = str(max(2, 2 * cores))
        conf["spark.default.parallelism"] = str(max(2, 2 * cores))
        if (memory := local_driver_memory()) is not None:
            conf["spark.driver.memory"] = memory
        if not _operator_chose(_COLLECTOR_OPTION):
            # A local driver runs every task, so throughput is what counts: with Java's default collector (G1) a
            # 1,000,000-record full refresh took about 3 % more wall time and 4 % more CPU (benchmarks/README.md).
            # Spark proposed the same default for any JVM options that name no collector (SPARK-53084). A second
            # collector would stop the JVM starting ("Multiple garbage collectors selected").
            conf["spark.driver.extraJavaOptions"] += f" {LOCAL_COLLECTOR}"
        if not _operator_chose(_JIT_OPTION):
            conf["spark.driver.extraJavaOptions"] += f" {LOCAL_JIT_OPTIONS}"
    return conf


def local_driver_memory() -> str | None:
    """The heap of a local master's driver, which runs every task too: half the memory the process may use (the
    machine's, or its cgroup's limit in a container), at least Spark's own 1g and at most 31g; None when the operator
    chose it (``SPARK_DRIVER_MEMORY`` or ``SPARK_MEM`` here or in ``spark-env.sh``, ``spark.driver.memory`` in
    ``spark-defaults.conf``). Spark's 1g spills and runs out of heap on a million raw records; DuckDB, the
    single-node reference, takes 80 % of the memory by default."""
    if os.environ.get("SPARK_DRIVER_MEMORY") or os.environ.get("SPARK_MEM") or _operator_set("spark.driver.memory"):
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Not a POSIX system: Spark's own default.
        return None
    if (limit := _cgroup_memory_limit()) is not None:
        total = min(total, limit)
    return f"{min(MAX_DEFAULT_DRIVER_MB, max(1024, total // 2 // 2**20))}m"


def _cgroup_memory_limit() -> int | None:
    """The smallest memory limit on the process's cgroup and the groups above it (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``); None where there is none. A container's limit may sit on a parent group."""
    try:
        lines = PROC_CGROUP.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)  # hierarchy-ID:controller-list:cgroup-path
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        if controllers == "":
            root, name = CGROUP_ROOT, "memory.max"
        elif "memory" in controllers.split(","):
            root, name = CGROUP_ROOT / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = root / group.lstrip("/")
        for candidate in (folder, *folder.parents):
            try:
                value = (candidate / name).read_text(encoding="ascii").strip()
            except OSError:
                value = ""
            if value.isdigit():  # v2 says "max" where there is no limit; v1 gives a huge number.
                limits.append(int(value))
            if candidate == root:
                break
    return min(limits, default=None)


def _operator_set(name: str) -> bool:
    """Whether the files Spark's launcher reads set ``name``: in ``spark-defaults.conf`` (a Java properties file), or,
    for ``spark.driver.memory``, ``SPARK_DRIVER_MEMORY`` / ``SPARK_MEM`` in ``spark-env.sh`` (which ``spark-class``
    sources after this process has started it)."""
    folder = _spark_conf_folder()
    if any(_property_name(line) == name for line in _lines(folder / "spark-defaults.conf")):
        return True
    return name == "spark.driver.memory" and any(
        re.match(r"(export\s+)?SPARK_(DRIVER_MEMORY|MEM)=", line) for line in _lines(folder / "spark-env.sh")
    )


def _operator_chose(option: re.Pattern[str]) -> bool:
    """Whether the driver's JVM is given an option ``option`` matches already: in an environment variable the JVM or
    Spark's launcher reads, in ``spark-env.sh``, or in the driver's Java options in ``spark-defaults.conf``. Where it
    is, ours is left out, whichever of the two the JVM would read last."""
    folder = _spark_conf_folder()
    chosen = [os.environ.get(name, "") for name in _JAVA_OPTIONS_VARIABLES]
    chosen += [line for line in _lines(folder / "spark-env.sh") if not line.startswith("#")]
    chosen += [
        line
        for line in _lines(folder / "spark-defaults.conf")
        if _property_name(line) in ("spark.driver.extraJavaOptions", "spark.driver.defaultJavaOptions")
    ]
    return any(option.search(text) for text in chosen)


def _spark_conf_folder() -> Path:
    """Where Spark's launcher reads ``spark-defaults.conf`` and ``spark-env.sh``."""
    folder = os.environ.get("SPARK_CONF_DIR")
    if folder is None:
        home = os.environ.get("SPARK_HOME")
        if home is None:
            import pyspark

            home = str(Path(pyspark.__file__).parent)
        folder = str(Path(home) / "conf")
    return Path(folder)


def _property_name(line: str) -> str:
    """The name a line of a Java properties file sets (its first word before ``=``, ``:`` or a space)."""
    return re.split(r"[\s=:]", line, maxsplit=1)[0]


def _lines(path: Path) -> list[str]:
    """The stripped lines of a configuration file; none if it cannot be read (Spark's reader is as lenient)."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return []


def spark_session(master: str | None = None, *, conf: Mapping[str, str] | None = None) -> SparkSession:
    """The process's SparkSession, started on first use with :func:`spark_conf` (plus ``conf``, which wins).

    Later calls return the same session; asking for another master than the running one is a SparkSessionError.
    """
    global _session, _master
    wanted = resolve_spark_master(master)
    with _lock:
        if _session is not None:
            if master is not None and wanted != _master:
                raise SparkSessionError(
                    f"Spark already runs on '{_master}' in this process; it cannot switch to '{wanted}'"
                )
            return _session
        java = find_java()
        _session = _start(wanted, java, {**spark_conf(wanted), **(conf or {})})
        _master = wanted
        return _session


def _start(master: str, java: JavaRuntime, conf: Mapping[str, str]) -> SparkSession:
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    # Spark's launcher (bin/spark-class) runs $JAVA_HOME/bin/java: point it at the runtime chosen above.
    os.environ["JAVA_HOME"] = str(java.home)
    if local_cores(master) is not None:
        # Local Python workers run this interpreter, so they import this environment's pyarrow and plugins.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    started = time.monotonic()
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except PySparkException as exc:
        raise SparkSessionError(
            f"Spark did not start on '{master}' with Java {java.major} from {java.source} ({java.home}): {exc}"
        ) from exc
    session.sparkContext.setLogLevel("WARN")
    log_event(
        logger,
        "spark_started",
        master=master,
        java_major=java.major,
        java_source=java.source,
        seconds=round(time.monotonic() - started, 2),
    )
    return session


def stop_spark() -> None:
    """Stop the process's session (the next :func:`spark_session` starts a new one)."""
    global _session, _master
    with _lock:
        if _session is not None:
            _session.stop()
        _session = None
        _master = None
