"""Frozen entry point of ``headtune`` (console): the window with no arguments, sub-commands otherwise."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen child started by multiprocessing must not rerun main
    from headtune.gui.launcher import main

    sys.exit(main())
