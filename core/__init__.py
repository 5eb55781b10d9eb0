"""Headtune's Qt-free core: the plan, models, data, training job and command line.

Everything the window can do is reachable from here without importing Qt, so the same plan
runs from the GUI, from ``headtune train`` and under ``accelerate launch`` / ``torchrun``.
"""

__version__ = "0.1.0"

# The desktop id (reverse DNS): .desktop file, AppStream metainfo, icon names, Qt's desktop file name.
APP_ID = "io.github.headtune.Headtune"
