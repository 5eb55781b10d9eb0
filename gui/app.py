"""Entry point of the window (``headtune-gui`` and ``headtune gui``).

The window itself is built by its own issue; until then this entry point says so plainly
instead of failing, and points at the command line, which can already train.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("The Headtune window is not part of this version yet. Train from the command line: "
          "`headtune train --demo` or `headtune train PLAN.yaml` (see `headtune train --help`).",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
