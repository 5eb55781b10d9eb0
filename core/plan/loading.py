"""Reading a plan: strict types, migrations of older files, ``key=value`` overrides and paths.

Loading is strict on purpose: unknown keys, wrong types, out-of-range values and impossible
combinations raise ``PlanError`` naming the dotted key and what is allowed, before any model
or data is touched. Relative paths resolve against the plan file's folder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from ..errors import PlanError
from ..model.templates import BUILTIN_TEMPLATES
from .checks import validate
from .schema import SCHEMA_VERSION, Plan, _hints, all_keys

BUILTIN_TEMPLATE_NAMES = tuple(BUILTIN_TEMPLATES)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "empty (null)",
    }.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted for floats)."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise PlanError(f"{key}: {value!r} is not allowed; use {_describe(tp)}.", key)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except PlanError:
                continue
        raise PlanError(f"{key}: {value!r} is not valid; expected {_describe(tp)}.", key)
    if origin is list:
        if not isinstance(value, list):
            raise PlanError(f"{key}: expected {_describe(tp)}, got {value!r}.", key)
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise PlanError(f"{key}: {value!r} is not a finite number.", key)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise PlanError(f"{key}: expected {_describe(tp)}, got {value!r}.", key)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise PlanError(f"{prefix or 'the plan'}: expected a mapping of keys, got {data!r}.", prefix or None)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = f"{prefix}{unknown[0]}"
        raise PlanError(f"{k}: unknown key. Allowed here: {', '.join(names)}.", k)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, key, value = hints[f.name], f"{prefix}{f.name}", data[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value if value is not None else {}, key + ".")  # type: ignore[arg-type]
            continue
        kwargs[f.name] = _coerce(value, tp, key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise PlanError(f"{key}: {value!r} is not allowed; use one of {', '.join(map(repr, choices))}.", key)
    return cls(**kwargs)


def migrate(data: dict) -> dict:
    """Check the plan format's version. There is one format so far; a plan file without
    ``schema_version`` is taken as the current one, a newer one is refused. (Run folders written
    before the ``memory:`` section existed are resumed with the stock memory options: see
    ``core.training.job.resume_plan``.)"""
    if not isinstance(data, dict):
        raise PlanError("The plan must be a mapping of sections (model:, data:, ...).")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PlanError(f"schema_version: {version!r} is not a plan format version.", "schema_version")
    if version > SCHEMA_VERSION:
        raise PlanError(
            f"schema_version: this plan was written by a newer Headtune (format {version}; "
            f"this version reads up to {SCHEMA_VERSION}). Update Headtune.",
            "schema_version",
        )
    data["schema_version"] = SCHEMA_VERSION
    return data


def plan_from_dict(data: dict, base_dir: str | os.PathLike | None = None, check: bool = True) -> Plan:
    """Build and validate a plan; relative paths resolve against ``base_dir``.

    ``check=False`` skips the checks across fields (types are still enforced): the window
    estimates memory for a plan that is still being written, e.g. before a dataset is chosen.
    """
    data = migrate(copy.deepcopy(data if data is not None else {}))
    plan = _build(Plan, data, "")
    if base_dir is not None:
        resolve_paths(plan, Path(base_dir))
    if check:
        validate(plan)
    return plan


def read_plan_file(path: Path) -> dict:
    """The mapping a plan file holds, or a ``PlanError`` saying why it holds none."""
    try:
        if not path.is_file():
            raise PlanError(f"The plan file {path} does not exist.")
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PlanError(f"The plan file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    except UnicodeDecodeError:
        raise PlanError(f"The plan file {path} is not a text (UTF-8) file.") from None
    except RecursionError:
        raise PlanError(f"The plan file {path} is nested far too deeply to be a plan.") from None
    except OSError as exc:  # a name too long, a folder given, no permission
        raise PlanError(f"The plan file {str(path)[:200]} cannot be read ({exc.strerror or exc}).") from None
    if not isinstance(data, dict):
        raise PlanError(
            f"The plan file {path} must hold a mapping of sections (model:, data:, ...), not a {type(data).__name__}."
        )
    return data


def load_plan(path: str | os.PathLike, overrides: list[str] | None = None, check: bool = True) -> Plan:
    """Read a YAML plan file, apply ``key=value`` overrides, validate (``check=False``: types only,
    so the window can reopen a plan that is still being written)."""
    path = Path(path)
    data = read_plan_file(path)
    data = apply_overrides(data, overrides or [], base_dir=Path.cwd())
    return plan_from_dict(data, base_dir=path.parent, check=check)


PATH_KEYS = ("model.name_or_path", "data.path", "data.chat_template", "output.dir")


def apply_overrides(data: dict, overrides: list[str], base_dir: Path | None = None) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a plan mapping.

    Relative paths typed on the command line mean the current folder, not the plan's: with
    ``base_dir`` they are made absolute against it here.
    """
    if not isinstance(data, dict):
        raise PlanError("The plan must be a mapping of sections (model:, data:, ...).")
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise PlanError(f"--set {item!r}: expected key=value, e.g. training.max_steps=20.")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in all_keys():
            raise PlanError(f"--set {key}: unknown key. Known keys: {', '.join(all_keys())}.", key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if base_dir is not None and key in PATH_KEYS and isinstance(value, str):
            value = _resolve(value, base_dir, always=key == "output.dir")
        node[leaf] = value
    return data


def with_overrides(plan: Plan, overrides: list[str]) -> Plan:
    """A validated copy of ``plan`` with ``key=value`` overrides applied."""
    return plan_from_dict(apply_overrides(plan.to_dict(), overrides))


def _looks_local(value: str) -> bool:
    return (
        value.startswith((".", "/", "~"))
        or "\\" in value
        or value.endswith((".gguf", ".jsonl", ".json", ".csv", ".parquet", ".txt", ".jinja", ".j2"))
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the file system is no file
        return False


def _resolve(value: str, base: Path, always: bool = False) -> str:
    if not value or (value in ("model",) + BUILTIN_TEMPLATE_NAMES and not always):
        return value
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    candidate = base / expanded
    if always or _exists(candidate) or _looks_local(value):
        return str(candidate.resolve())
    return value


def resolve_paths(plan: Plan, base: Path) -> None:
    """Make relative local paths absolute against ``base`` (the plan file's folder).

    A value that exists relative to ``base``, or looks like a file path, is a path; anything
    else (``org/name``) is left alone as a hub id.
    """

    def fix(value: str, always: bool = False) -> str:
        return _resolve(value, base, always)

    plan.model.name_or_path = fix(plan.model.name_or_path)
    plan.data.path = fix(plan.data.path)
    if plan.data.chat_template not in ("model",) + BUILTIN_TEMPLATE_NAMES:
        plan.data.chat_template = fix(plan.data.chat_template)
    plan.output.dir = fix(plan.output.dir, always=True)
