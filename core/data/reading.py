"""Reading datasets and detecting their format.

Rows come from .jsonl/.json/.csv/.parquet/.txt files or a hub dataset, each remembered with
its line (or row) number so a malformed one can be named. Four formats are understood:
alpaca (instruction/input/output), messages (role/content), ShareGPT (from/value) and raw
text; each row becomes an ``Example`` (a conversation, or a text trained on every token). Text
files are UTF-8; a byte-order mark at the start (Windows editors write one) is not data.

A fifth, ``preference``, holds pairs for preference tuning (``training.method`` dpo or orpo); each
row becomes a ``Pair`` (the prompt's turns, a chosen and a rejected reply). Its layouts, told apart
row by row: flat texts (``prompt``/``chosen``/``rejected``); ``chosen`` and ``rejected`` as whole
conversations sharing their prompt turns (Anthropic HH, UltraFeedback binarized), with or without
a ``prompt``; and ``question``/``response_j``/``response_k`` (StackExchange paired).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

IGNORE_INDEX = -100
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


@dataclass
class Row:
    line: int  # 1-based line (jsonl/txt/json text) or row number (csv/parquet/hub)
    value: Any


@dataclass
class Example:
    """One training example: chat ``messages`` or raw ``text`` (exactly one is set)."""

    line: int
    messages: list[dict[str, str]] | None = None
    text: str | None = None


@dataclass
class Pair:
    """One preference example: the prompt's turns (ending on a user turn) and two replies."""

    line: int
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str

    def conversation(self, which: str) -> list[dict[str, str]]:
        """The prompt followed by the ``chosen`` or ``rejected`` reply."""
        return [*self.prompt, {"role": "assistant", "content": getattr(self, which)}]


def example_texts(ex: Example | Pair) -> tuple[list[str], list[str]]:
    """(the texts the run trains on: the assistant's replies or the raw text; every text of the
    example, prompts included)."""
    if isinstance(ex, Pair):
        prompts = [m["content"] for m in ex.prompt]
        return [ex.chosen, ex.rejected], [*prompts, ex.chosen, ex.rejected]
    if ex.text is not None:
        return [ex.text], [ex.text]
    messages = ex.messages or []
    return [m["content"] for m in messages if m["role"] == "assistant"], [m["content"] for m in messages]


# -- reading -----------------------------------------------------------------------------


def _where(path: Path, line: int, unit: str = "line") -> str:
    return f"{path.name}, {unit} {line}"


def read_rows(path_or_id: str) -> tuple[list[Row], str]:
    """Read raw rows; returns (rows, unit) where unit is "line" or "row" for messages."""
    try:
        return _read_rows(path_or_id)
    except OSError as exc:  # a name too long for the file system, a folder that cannot be listed
        shown = path_or_id if len(path_or_id) <= 200 else path_or_id[:200] + "…"
        raise DataError(f"The dataset {shown} cannot be read ({exc.strerror or exc}). Check data.path.") from None


def _read_rows(path_or_id: str) -> tuple[list[Row], str]:
    path = Path(path_or_id).expanduser()
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix not in FILE_SUFFIXES:
            raise DataError(
                f"{path} has the extension {suffix or '(none)'}, which Headtune does not read. "
                f"Use one of {', '.join(FILE_SUFFIXES)}."
            )
        try:
            reader = {
                ".jsonl": _read_jsonl,
                ".json": _read_json,
                ".csv": _read_csv,
                ".parquet": _read_parquet,
                ".txt": _read_txt,
            }[suffix]
            return reader(path)
        except PermissionError:
            raise DataError(f"{path} cannot be read: permission denied.") from None
        except UnicodeDecodeError:
            raise _not_utf8(path, suffix) from None
    if path.exists():
        raise DataError(f"{path} is a folder; data.path must be a file or a hub dataset id.")
    if suffix in FILE_SUFFIXES or path_or_id.startswith((".", "/", "~")):
        raise DataError(f"The dataset file {path} does not exist. Check data.path.")
    return _read_hub(path_or_id), "row"


def _not_utf8(path: Path, suffix: str) -> DataError:
    """The error for a file that is not UTF-8, naming the line and column of the first bad byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        start = 0
    except UnicodeDecodeError as exc:
        start = exc.start
    line = data.count(b"\n", 0, start) + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    return DataError(
        f"{_where(path, line)}, column {column}: byte 0x{data[start]:02x} is not UTF-8, so this cannot be a "
        f"{suffix} file Headtune reads. Save the file as UTF-8 (in most editors: Save as, encoding UTF-8).",
        line=line,
    )


def _read_jsonl(path: Path) -> tuple[list[Row], str]:
    rows = []
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(Row(n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{_where(path, n)} is not valid JSON ({exc.msg} at column {exc.colno}). "
                    "Each line of a .jsonl file must be one JSON object.",
                    line=n,
                ) from None
    return rows, "line"


def _read_json(path: Path) -> tuple[list[Row], str]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (it looks like JSON Lines: rename it to .jsonl)" if text.lstrip().startswith("{") else ""
        raise DataError(
            f"{_where(path, exc.lineno)} is not valid JSON ({exc.msg} at column {exc.colno}){hint}.", line=exc.lineno
        ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path} holds a JSON object; expected a list of rows (or an object with one list).")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of rows.")
    # Row numbers are 1-based positions in the list; JSON has no reliable per-item line.
    return [Row(i, v) for i, v in enumerate(data, start=1)], "item"


def _read_csv(path: Path) -> tuple[list[Row], str]:
    try:
        return _read_csv_rows(path)
    except csv.Error as exc:
        raise DataError(f"{path} is not a valid CSV file ({exc}).") from None


def _read_csv_rows(path: Path) -> tuple[list[Row], str]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        if "\x00" in sample:
            raise DataError(f"{path} is not a CSV text file.")
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise DataError(f"{path} has no header row; the first line must name the columns.")
        rows = []
        for row in reader:
            # reader.line_num is the physical line where this record ended.
            if None in row:
                raise DataError(
                    f"{_where(path, reader.line_num)} has more fields than the header "
                    f"({len(reader.fieldnames)} columns).",
                    line=reader.line_num,
                )
            rows.append(Row(reader.line_num, dict(row)))
    return rows, "line"


def _read_parquet(path: Path) -> tuple[list[Row], str]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable Parquet file ({exc.__class__.__name__}: {exc}).") from None
    return [Row(i, v) for i, v in enumerate(table.to_pylist(), start=1)], "row"


def _read_txt(path: Path) -> tuple[list[Row], str]:
    """Raw text: documents separated by blank lines; each remembers its first line."""
    rows: list[Row] = []
    buf: list[str] = []
    start = 0
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                if not buf:
                    start = n
                buf.append(line.rstrip("\n"))
            elif buf:
                rows.append(Row(start, {"text": "\n".join(buf)}))
                buf = []
    if buf:
        rows.append(Row(start, {"text": "\n".join(buf)}))
    return rows, "line"


def _read_hub(dataset_id: str) -> list[Row]:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as exc:
        name = type(exc).__name__
        if "Gated" in name or "gated" in str(exc).lower():
            raise DataError(
                f"The dataset {dataset_id} is gated: accept its terms on the hub page, then log in "
                "with `hf auth login` or set HF_TOKEN."
            ) from None
        raise DataError(
            f"The dataset {dataset_id} is neither a local file nor loadable from the hub "
            f"({name}: {str(exc).splitlines()[0] if str(exc) else ''}). Check data.path; offline, "
            "use a local file."
        ) from None
    return [Row(i, v) for i, v in enumerate(ds, start=1)]


# -- formats -----------------------------------------------------------------------------


def detect_format(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if ("chosen" in row and "rejected" in row) or ("response_j" in row and "response_k" in row):
        return "preference"
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        conv = row["conversations"]
        if isinstance(conv, list) and conv and isinstance(conv[0], dict) and "from" in conv[0]:
            return "sharegpt"
        return "messages"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def _need_str(row: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: the column {key!r} is missing (columns here: {', '.join(map(str, row))}).")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be text, got {type(value).__name__}.")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: {key!r} is empty.")
    return value


def to_example(row: Row, fmt: str, where: str) -> Example:
    v = row.value
    if not isinstance(v, dict):
        raise DataError(f"{where}: expected an object with named fields, got {type(v).__name__}.", line=row.line)
    try:
        if fmt == "text":
            return Example(row.line, text=_need_str(v, "text", where))
        if fmt == "alpaca":
            instruction = _need_str(v, "instruction", where)
            extra = v.get("input") or ""
            if not isinstance(extra, str):
                raise DataError(f"{where}: 'input' must be text.")
            user = instruction + ("\n\n" + extra if extra.strip() else "")
            messages = []
            if isinstance(v.get("system"), str) and v["system"].strip():
                messages.append({"role": "system", "content": v["system"]})
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": _need_str(v, "output", where)},
            ]
            return Example(row.line, messages=messages)
        key = "conversations" if "conversations" in v and "messages" not in v else "messages"
        turns = v.get(key)
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: {key!r} must be a non-empty list of turns.")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise DataError(f"{where}: turn {i + 1} is not an object.")
            if fmt == "sharegpt":
                role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
                if role is None:
                    raise DataError(
                        f"{where}: turn {i + 1} has from={turn.get('from')!r}; expected one of "
                        f"{', '.join(SHAREGPT_ROLES)}."
                    )
                content = turn.get("value")
            else:
                role, content = turn.get("role"), turn.get("content")
                if role not in ("system", "user", "assistant", "tool"):
                    raise DataError(
                        f"{where}: turn {i + 1} has role={role!r}; expected system, user, assistant or tool."
                    )
            if not isinstance(content, str):
                raise DataError(f"{where}: turn {i + 1} has no text content.")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing to train on.")
        return Example(row.line, messages=messages)
    except DataError as exc:
        exc.line = row.line
        raise


def _turns(value: Any, key: str, where: str) -> list[dict[str, str]]:
    """A list of role/content (or from/value) turns, checked."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {key!r} must be text or a non-empty list of turns.")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {key!r} turn {i + 1} is not an object.")
        role = turn.get("role", SHAREGPT_ROLES.get(str(turn.get("from", "")).lower()))
        content = turn.get("content", turn.get("value"))
        if role not in ("system", "user", "assistant", "tool"):
            raise DataError(
                f"{where}: {key!r} turn {i + 1} has role={role!r}; expected system, user, assistant or tool."
            )
        if not isinstance(content, str):
            raise DataError(f"{where}: {key!r} turn {i + 1} has no text content.")
        out.append({"role": role, "content": content})
    return out


def to_pair(row: Row, where: str) -> Pair:
    """A preference row in any of the layouts the module docstring lists."""
    v = row.value
    try:
        if not isinstance(v, dict):
            raise DataError(f"{where}: expected an object with named fields, got {type(v).__name__}.")
        if "response_j" in v and "response_k" in v and not ("chosen" in v and "rejected" in v):
            prompt = [{"role": "user", "content": _need_str(v, "question", where)}]
            return Pair(row.line, prompt, _need_str(v, "response_j", where), _need_str(v, "response_k", where))
        for key in ("chosen", "rejected"):
            if key not in v or v[key] is None:
                raise DataError(f"{where}: the column {key!r} is missing (columns here: {', '.join(map(str, v))}).")
        chosen, rejected = v["chosen"], v["rejected"]
        if isinstance(chosen, str) or isinstance(rejected, str):
            if isinstance(v.get("prompt"), list):
                prompt = _turns(v["prompt"], "prompt", where)
            else:
                prompt = [{"role": "user", "content": _need_str(v, "prompt", where)}]
            if prompt[-1]["role"] != "user":
                raise DataError(f"{where}: the prompt's last turn must be the user's, not {prompt[-1]['role']!r}.")
            return Pair(row.line, prompt, _need_str(v, "chosen", where), _need_str(v, "rejected", where))
        # Whole conversations: the turns before the last are the prompt (and must be the same in
        # both); the last turn of each is the reply.
        c, r = _turns(chosen, "chosen", where), _turns(rejected, "rejected", where)
        for key, turns in (("chosen", c), ("rejected", r)):
            if turns[-1]["role"] != "assistant":
                raise DataError(f"{where}: the last turn of {key!r} must be the assistant's reply.")
        if c[:-1] != r[:-1]:
            raise DataError(
                f"{where}: 'chosen' and 'rejected' differ before their last turn; they must share the prompt."
            )
        prompt = c[:-1]
        if not prompt:  # the replies alone, the prompt in its own column
            p = v.get("prompt")
            prompt = (
                _turns(p, "prompt", where)
                if isinstance(p, list)
                else [{"role": "user", "content": _need_str(v, "prompt", where)}]
            )
        if prompt[-1]["role"] != "user":
            raise DataError(f"{where}: the prompt's last turn must be the user's, not {prompt[-1]['role']!r}.")
        for key, turns in (("chosen", c), ("rejected", r)):
            if not turns[-1]["content"].strip():
                raise DataError(f"{where}: the reply in {key!r} is empty.")
        return Pair(row.line, prompt, c[-1]["content"], r[-1]["content"])
    except DataError as exc:
        exc.line = row.line
        raise


PREFERENCE_FIELDS = (
    "prompt/chosen/rejected (texts, or chosen and rejected as conversations sharing their prompt turns) "
    "or question/response_j/response_k"
)


def load_pairs(path_or_id: str, fmt: str = "auto") -> list[Pair]:
    """Read a preference dataset and convert every row to a ``Pair``."""
    rows, unit = read_rows(path_or_id)
    name = Path(path_or_id).name
    if not rows:
        raise DataError(f"The dataset {path_or_id} is empty: it has no rows to train on.")
    found = detect_format(rows[0].value) if fmt == "auto" else fmt
    if found != "preference":
        value = rows[0].value
        keys = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
        raise DataError(
            f"{name}, {unit} {rows[0].line}: preference tuning (training.method dpo or orpo) needs rows with "
            f"{PREFERENCE_FIELDS}; this row has {keys}. Use such a dataset, or set training.method: sft.",
            line=rows[0].line,
        )
    return [to_pair(r, f"{name}, {unit} {r.line}") for r in rows]


def load_examples(path_or_id: str, fmt: str = "auto") -> tuple[list[Example], str]:
    """Read a dataset and convert every row; returns (examples, detected format). A preference
    dataset gives two conversations per row (prompt + chosen, prompt + rejected), which is what
    the previews and token statistics read; training reads its pairs with ``load_pairs``."""
    if fmt == "preference":
        pairs = load_pairs(path_or_id, fmt)
        return [Example(p.line, messages=p.conversation(w)) for p in pairs for w in ("chosen", "rejected")], fmt
    rows, unit = read_rows(path_or_id)
    name = Path(path_or_id).name
    if not rows:
        raise DataError(f"The dataset {path_or_id} is empty: it has no rows to train on.")
    if fmt == "auto":
        fmt = detect_format(rows[0].value) or ""
        if not fmt:
            keys = (
                ", ".join(map(str, rows[0].value)) if isinstance(rows[0].value, dict) else type(rows[0].value).__name__
            )
            raise DataError(
                f"{name}, {unit} {rows[0].line}: cannot tell the format from its fields ({keys}). "
                "Expected instruction/output (alpaca), messages (role/content), conversations "
                "(from/value), text, or preference pairs (prompt/chosen/rejected); or set data.format.",
                line=rows[0].line,
            )
    if fmt == "preference":
        return load_examples(path_or_id, fmt)
    return [to_example(r, fmt, f"{name}, {unit} {r.line}") for r in rows], fmt


# -- chat template and tokenisation ------------------------------------------------------
