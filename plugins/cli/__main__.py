"""``python -m plugins.cli`` and the ``cdp`` console script."""

from __future__ import annotations

import sys

from plugins.cli.app import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
