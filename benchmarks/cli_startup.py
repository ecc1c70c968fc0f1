"""How long ``cdp --help`` and ``cdp plugins list`` take, against the bare interpreter's start in the same run.

Goal (issue 11): both under 0.5 s on these machines. Prints the median wall time of ``--repeats`` runs of each
command (bytecode cached, as in any installed environment) and its ratio to ``python -c pass``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "cdp --help": [str(BIN / "cdp"), "--help"],
    "cdp plugins list": [str(BIN / "cdp"), "plugins", "list"],
    "cdp plugins list --json": [str(BIN / "cdp"), "plugins", "list", "--json"],
}


def median_seconds(command: list[str], repeats: int) -> float:
    subprocess.run(command, capture_output=True, check=True)  # warm the page cache and bytecode
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    results = {name: median_seconds(command, args.repeats) for name, command in COMMANDS.items()}
    reference = results["python -c pass (reference)"]
    print(f"{'command':28} {'median s':>9} {'x python':>9}  goal < 0.5 s")
    for name, seconds in results.items():
        verdict = "" if name.startswith("python") else ("ok" if seconds < 0.5 else "SLOW")
        print(f"{name:28} {seconds:9.3f} {seconds / reference:9.1f}  {verdict}")


if __name__ == "__main__":
    main()
