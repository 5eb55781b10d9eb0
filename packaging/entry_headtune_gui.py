"""Frozen entry point of ``headtune-gui`` (no console window on Windows): the window only."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from headtune.gui.app import main

    sys.exit(main())
