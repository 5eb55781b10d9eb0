"""Reading datasets, detecting their format, and turning rows into masked training examples.

Rows come from .jsonl/.json/.csv/.parquet/.txt files or a hub dataset, each remembered with
its line (or row) number so a malformed one can be named. Four formats are understood:
alpaca (instruction/input/output), messages (role/content), ShareGPT (from/value) and raw
text. Chat and instruction rows go through the chat template and only the assistant's tokens
(with the end-of-turn token) are trained; the prompt is masked with -100. Raw text trains on
every token.

Masking works on any chat template whose rendering of a conversation starts with its rendering
of every earlier prefix (true of the common templates): each assistant turn's character span is
found by rendering the prefix with and without that turn, and tokens are labelled through the
fast tokenizer's offset mapping. (TRL's assistant-only loss needs ``{% generation %}`` markers,
which most models' templates lack.)
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError

IGNORE_INDEX = -100
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")

# Used when the model has no chat template of its own (documented in the README).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system", "tool": "tool", "function": "tool"}


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
class DataStats:
    format: str
    rows: int
    train_examples: int
    val_examples: int
    truncated: int = 0
    skipped_no_labels: int = 0
    trained_tokens: int = 0
    masked_tokens: int = 0
    template_source: str = ""
    packed_sequences: int = 0


@dataclass
class PreparedData:
    train: list[dict[str, list[int]]]
    val: list[dict[str, list[int]]]
    stats: DataStats
    examples: list[Example] = field(default_factory=list)


# -- reading -----------------------------------------------------------------------------

def _where(path: Path, line: int, unit: str = "line") -> str:
    return f"{path.name}, {unit} {line}"


def read_rows(path_or_id: str) -> tuple[list[Row], str]:
    """Read raw rows; returns (rows, unit) where unit is "line" or "row" for messages."""
    path = Path(path_or_id).expanduser()
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix not in FILE_SUFFIXES:
            raise DataError(f"{path} has the extension {suffix or '(none)'}, which Headtune does not read. "
                            f"Use one of {', '.join(FILE_SUFFIXES)}.")
        try:
            reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
                      ".parquet": _read_parquet, ".txt": _read_txt}[suffix]
            return reader(path)
        except PermissionError:
            raise DataError(f"{path} cannot be read: permission denied.") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not a UTF-8 text file (byte {exc.start} cannot be decoded), so it "
                            f"cannot be a {suffix} file.") from None
    if path.exists():
        raise DataError(f"{path} is a folder; data.path must be a file or a hub dataset id.")
    if suffix in FILE_SUFFIXES or path_or_id.startswith((".", "/", "~")):
        raise DataError(f"The dataset file {path} does not exist. Check data.path.")
    return _read_hub(path_or_id), "row"


def _read_jsonl(path: Path) -> tuple[list[Row], str]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(Row(n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{_where(path, n)} is not valid JSON ({exc.msg} at column {exc.colno}). "
                                "Each line of a .jsonl file must be one JSON object.", line=n) from None
    return rows, "line"


def _read_json(path: Path) -> tuple[list[Row], str]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (it looks like JSON Lines: rename it to .jsonl)" if text.lstrip().startswith("{") else ""
        raise DataError(f"{_where(path, exc.lineno)} is not valid JSON ({exc.msg} at column {exc.colno}){hint}.",
                        line=exc.lineno) from None
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
    with path.open(encoding="utf-8", newline="") as fh:
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
                raise DataError(f"{_where(path, reader.line_num)} has more fields than the header "
                                f"({len(reader.fieldnames)} columns).", line=reader.line_num)
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
    rows, buf, start = [], [], 0
    with path.open(encoding="utf-8") as fh:
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
            raise DataError(f"The dataset {dataset_id} is gated: accept its terms on the hub page, then log in "
                            "with `hf auth login` or set HF_TOKEN.") from None
        raise DataError(f"The dataset {dataset_id} is neither a local file nor loadable from the hub "
                        f"({name}: {str(exc).splitlines()[0] if str(exc) else ''}). Check data.path; offline, "
                        "use a local file.") from None
    return [Row(i, v) for i, v in enumerate(ds, start=1)]


# -- formats -----------------------------------------------------------------------------

def detect_format(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
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
            messages += [{"role": "user", "content": user},
                         {"role": "assistant", "content": _need_str(v, "output", where)}]
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
                    raise DataError(f"{where}: turn {i + 1} has from={turn.get('from')!r}; expected one of "
                                    f"{', '.join(SHAREGPT_ROLES)}.")
                content = turn.get("value")
            else:
                role, content = turn.get("role"), turn.get("content")
                if role not in ("system", "user", "assistant", "tool"):
                    raise DataError(f"{where}: turn {i + 1} has role={role!r}; expected system, user, assistant "
                                    "or tool.")
            if not isinstance(content, str):
                raise DataError(f"{where}: turn {i + 1} has no text content.")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing to train on.")
        return Example(row.line, messages=messages)
    except DataError as exc:
        exc.line = row.line
        raise


def load_examples(path_or_id: str, fmt: str = "auto") -> tuple[list[Example], str]:
    """Read a dataset and convert every row; returns (examples, detected format)."""
    rows, unit = read_rows(path_or_id)
    name = Path(path_or_id).name
    if not rows:
        raise DataError(f"The dataset {path_or_id} is empty: it has no rows to train on.")
    if fmt == "auto":
        fmt = detect_format(rows[0].value) or ""
        if not fmt:
            keys = ", ".join(map(str, rows[0].value)) if isinstance(rows[0].value, dict) else type(rows[0].value).__name__
            raise DataError(f"{name}, {unit} {rows[0].line}: cannot tell the format from its fields ({keys}). "
                            "Expected instruction/output (alpaca), messages (role/content), conversations "
                            "(from/value) or text; or set data.format.", line=rows[0].line)
    return [to_example(r, fmt, f"{name}, {unit} {r.line}") for r in rows], fmt


# -- chat template and tokenisation ------------------------------------------------------

def resolve_template(tokenizer, choice: str) -> tuple[str, str]:
    """(template text, where it came from) for ``data.chat_template``."""
    if choice == "model":
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.chat_template, "model"
        return CHATML_TEMPLATE, "chatml (the model has no chat template)"
    if choice in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[choice], choice
    path = Path(choice)
    if not path.is_file():
        raise DataError(f"data.chat_template: {choice!r} is not 'model', a built-in template "
                        f"({', '.join(BUILTIN_TEMPLATES)}) or an existing Jinja file.")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data.chat_template: the file {path} cannot be read ({exc}).") from None


def _render(tokenizer, messages, template: str, generation_prompt: bool, where: str = "") -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # Jinja errors raised by the template itself ("roles must alternate", ...)
        raise DataError(f"{where}: the chat template refused this conversation ({exc}). Fix the row, or "
                        "choose another data.chat_template (e.g. chatml).") from None


def assistant_spans(tokenizer, messages, template: str, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tokenizer, messages, template, False, where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], template, True, where) if i else ""
        after = _render(tokenizer, messages[: i + 1], template, False, where)
        if not (full.startswith(after) and after.startswith(before)):
            continue  # a template that rewrites earlier turns: only the turns we can locate train
        spans.append((len(before), len(after)))
    if not spans:
        raise DataError(f"{where}: the chat template does not render this conversation in a way that lets "
                        "Headtune find the assistant's reply. Choose another data.chat_template (e.g. chatml).")
    return full, spans


def tokenize_example(tokenizer, ex: Example, template: str, max_seq_len: int, where: str = "") -> dict:
    """input_ids and labels (-100 on masked tokens), truncated to ``max_seq_len``."""
    if ex.text is not None:
        ids = tokenizer(ex.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = assistant_spans(tokenizer, ex.messages, template, where)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = []
        for tok_id, (start, end) in zip(ids, enc["offset_mapping"]):
            trained = any(s <= start < e or (start == end and s < start <= e) for s, e in spans)
            labels.append(tok_id if trained else IGNORE_INDEX)
    truncated = len(ids) > max_seq_len
    return {"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len], "truncated": truncated}


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of ``range(n)``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, math.floor(n * val_fraction + 0.5)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def pack(features: Iterable[dict], max_seq_len: int) -> list[dict]:
    """Greedily concatenate examples, in order, into sequences of at most ``max_seq_len``."""
    packs: list[dict] = []
    cur: dict = {"input_ids": [], "labels": []}
    for f in features:
        if cur["input_ids"] and len(cur["input_ids"]) + len(f["input_ids"]) > max_seq_len:
            packs.append(cur)
            cur = {"input_ids": [], "labels": []}
        cur["input_ids"] += f["input_ids"]
        cur["labels"] += f["labels"]
    if cur["input_ids"]:
        packs.append(cur)
    return packs


def prepare(spec, tokenizer, seed: int) -> PreparedData:
    """Everything the trainer needs from ``plan.data``: tokenised, masked, split (and packed)."""
    examples, fmt = load_examples(spec.path, spec.format)
    template, template_source = ("", "") if fmt == "text" else resolve_template(tokenizer, spec.chat_template)
    if fmt != "text" and not getattr(tokenizer, "is_fast", False):
        raise DataError("This model's tokenizer has no fast (Rust) version, which Headtune needs to tell the "
                        "assistant's tokens from the prompt's. Use a model whose repository has tokenizer.json.")
    name = Path(spec.path).name
    features, truncated, skipped = [], 0, 0
    for ex in examples:
        f = tokenize_example(tokenizer, ex, template, spec.max_seq_len, f"{name}, line {ex.line}")
        truncated += f.pop("truncated")
        if all(label == IGNORE_INDEX for label in f["labels"]):
            skipped += 1  # the reply was cut off entirely by max_seq_len
            continue
        features.append(f)
    if not features:
        raise DataError(f"No example in {name} has a trained token within data.max_seq_len="
                        f"{spec.max_seq_len}; raise data.max_seq_len.")
    train_idx, val_idx = split_indices(len(features), spec.val_fraction, seed)
    train, val = [features[i] for i in train_idx], [features[i] for i in val_idx]
    stats = DataStats(format=fmt, rows=len(examples), train_examples=len(train), val_examples=len(val),
                      truncated=truncated, skipped_no_labels=skipped, template_source=template_source)
    for f in features:
        n_trained = sum(1 for x in f["labels"] if x != IGNORE_INDEX)
        stats.trained_tokens += n_trained
        stats.masked_tokens += len(f["labels"]) - n_trained
    if spec.packing:
        train, val = pack(train, spec.max_seq_len), pack(val, spec.max_seq_len)
        stats.packed_sequences = len(train)
    return PreparedData(train=train, val=val, stats=stats, examples=examples)


class Collator:
    """Right-pads a batch; padding is masked in ``attention_mask`` and ``labels``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
