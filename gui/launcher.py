"""The ``headtune`` program: the window, or a sub-command of the core command line.

``headtune`` alone and ``headtune gui [PLAN]`` open the window; every other sub-command is handed
to ``headtune.core.cli`` before anything imports Qt, so headless commands (also under a
distributed launcher, or on a machine without a display) never load the window's libraries.
"""

from __future__ import annotations

import sys

from headtune.core.cli import EXIT_BAD_INPUT, build_parser
from headtune.core.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # --help and usage errors print and exit here
    if args.version or args.command not in (None, "gui"):
        return cli_main(argv)
    try:
        from .app import main as gui_main
    except ImportError as exc:
        print(f"headtune: the window cannot start: {exc}. Install PySide6-Essentials and pyqtgraph.", file=sys.stderr)
        return EXIT_BAD_INPUT
    return gui_main([args.plan] if getattr(args, "plan", None) else [])


if __name__ == "__main__":
    sys.exit(main())
