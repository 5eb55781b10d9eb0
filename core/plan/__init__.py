"""The plan: one validated configuration object for a whole fine-tuning run.

``schema`` holds the sections and their fields (help text, ranges, choices), ``loading`` reads
YAML and ``key=value`` overrides strictly, ``checks`` validates across fields, and
``memory_options`` says what the ``memory:`` options amount to on a device.
"""

from __future__ import annotations

from .checks import bitsandbytes_problem, validate
from .loading import apply_overrides, load_plan, migrate, plan_from_dict, resolve_paths, with_overrides
from .schema import (
    SCHEMA_VERSION,
    TARGET_PRESETS,
    AdapterSpec,
    DataSpec,
    EmbeddingsSpec,
    MemorySpec,
    ModelSpec,
    OutputSpec,
    Plan,
    TrainingSpec,
    all_keys,
    choices_for,
    help_for,
    range_for,
)

__all__ = [
    "SCHEMA_VERSION",
    "TARGET_PRESETS",
    "AdapterSpec",
    "DataSpec",
    "EmbeddingsSpec",
    "MemorySpec",
    "ModelSpec",
    "OutputSpec",
    "Plan",
    "TrainingSpec",
    "all_keys",
    "apply_overrides",
    "bitsandbytes_problem",
    "choices_for",
    "help_for",
    "load_plan",
    "migrate",
    "plan_from_dict",
    "range_for",
    "resolve_paths",
    "validate",
    "with_overrides",
]
