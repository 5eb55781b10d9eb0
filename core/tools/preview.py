"""What the window shows before a run: model facts, a data preview, and token lookup.

All of it is Qt-free, so the same answers are available headless. ``model_summary`` reads only
the model's config (no weights); ``preview_data`` needs a tokenizer and is meant to run off the UI
thread; ``find_tokens`` and ``search_vocab`` let a person pick token rows by their text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.examples import tokenize_example
from ..data.reading import IGNORE_INDEX, load_examples, read_rows
from ..errors import DataError
from ..model.shape import ModelShape, read_model_config
from ..model.sources import resolve_source
from ..model.templates import resolve_template

if TYPE_CHECKING:
    from ..estimate import DataTokens


@dataclass(frozen=True)
class ModelSummary:
    name: str
    source: str  # folder, hub or gguf
    architecture: str
    params: int
    vocab: int
    hidden: int
    layers: int
    context: int
    tied: bool
    shape: ModelShape


def model_summary(name_or_path: str) -> ModelSummary:
    """Architecture and sizes from config.json (or a GGUF header): instant, no weights read."""
    cfg = read_model_config(name_or_path)
    shape = ModelShape.from_config(cfg)
    kind = resolve_source(name_or_path, convert_gguf=False).kind
    arch = (cfg.get("architectures") or [shape.model_type or "unknown"])[0]
    return ModelSummary(
        name=name_or_path,
        source=kind,
        architecture=str(arch),
        params=shape.total_params,
        vocab=shape.vocab,
        hidden=shape.hidden,
        layers=shape.layers,
        context=shape.max_positions,
        tied=shape.tied,
        shape=shape,
    )


@dataclass
class DataPreview:
    format: str
    rows: int
    columns: list[str]
    table: list[list[str]]  # the first rows, one short string per cell
    lengths: list[int]  # tokens per example before truncation
    trained: list[int]  # labelled tokens per example before truncation (those the loss sees)
    first_trained: list[int]  # position of each example's first labelled token
    max_seq_len: int
    truncated: int  # examples longer than max_seq_len
    trained_tokens: int  # within max_seq_len, over the examples measured
    masked_tokens: int
    template_source: str
    segments: list[tuple[str, str]] = field(default_factory=list)  # first example: (text, trained|masked|cut)
    base_lengths: list[int] = field(default_factory=list)  # with the plan's new tokens: lengths without them


def _cell(value, limit: int = 120) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview_data(
    spec,
    tokenizer,
    table_rows: int = 20,
    max_examples: int = 5000,
    new_tokens: list[str] | tuple[str, ...] = (),
    vocab_tokens: list[str] | tuple[str, ...] = (),
) -> DataPreview:
    """Format, row count, the first rows, token lengths and one example split into trained and
    masked text, for ``spec`` (a ``DataSpec``). Raises ``DataError`` naming the bad row.

    With ``new_tokens``/``vocab_tokens`` (the plan's), the lengths are those of the tokenizer the
    run will use (a copy extended with them), and ``base_lengths`` those of ``tokenizer``."""
    base_tokenizer = None
    if new_tokens or vocab_tokens:
        import copy

        from ..embeddings.setup import add_new_tokens

        base_tokenizer, tokenizer = tokenizer, copy.deepcopy(tokenizer)
        add_new_tokens(tokenizer, list(new_tokens), list(vocab_tokens))
    rows, _ = read_rows(spec.path)
    examples, fmt = load_examples(spec.path, spec.format)
    columns: list[str] = []
    for r in rows[:table_rows]:
        for k in r.value if isinstance(r.value, dict) else {"text": r.value}:
            if k not in columns:
                columns.append(str(k))
    table = [
        [_cell((r.value if isinstance(r.value, dict) else {"text": r.value}).get(c, "")) for c in columns]
        for r in rows[:table_rows]
    ]
    template, source = ("", "") if fmt == "text" else resolve_template(tokenizer, spec.chat_template)
    name = Path(spec.path).name
    lengths, labelled, first, truncated, trained, masked = [], [], [], 0, 0, 0
    base_lengths: list[int] = []
    segments: list[tuple[str, str]] = []
    for i, ex in enumerate(examples[:max_examples]):
        # Preference data: one conversation per reply (chosen, rejected), only its last reply trained.
        last = fmt == "preference"
        f = tokenize_example(tokenizer, ex, template, 10**9, f"{name}, line {ex.line}", last_reply_only=last)
        if base_tokenizer is not None:
            base_lengths.append(
                len(tokenize_example(base_tokenizer, ex, template, 10**9, last_reply_only=last)["input_ids"])
            )
        n = len(f["input_ids"])
        lengths.append(n)
        marks = [j for j, x in enumerate(f["labels"]) if j > 0 and x != IGNORE_INDEX]
        labelled.append(len(marks))
        first.append(marks[0] if marks else n)
        truncated += n > spec.max_seq_len
        kept = f["labels"][: spec.max_seq_len]
        t = sum(1 for x in kept if x != IGNORE_INDEX)
        trained, masked = trained + t, masked + len(kept) - t
        if i == 0:
            segments = _segments(tokenizer, f["input_ids"], f["labels"], spec.max_seq_len)
    return DataPreview(
        format=fmt,
        rows=len(rows),
        columns=columns,
        table=table,
        lengths=lengths,
        trained=labelled,
        first_trained=first,
        max_seq_len=spec.max_seq_len,
        truncated=truncated,
        trained_tokens=trained,
        masked_tokens=masked,
        template_source=source,
        segments=segments,
        base_lengths=base_lengths,
    )


def _segments(tokenizer, ids: list[int], labels: list[int], max_seq_len: int) -> list[tuple[str, str]]:
    """Runs of consecutive tokens of the same kind, decoded to text."""
    kinds = [
        "cut" if i >= max_seq_len else ("trained" if lab != IGNORE_INDEX else "masked") for i, lab in enumerate(labels)
    ]
    out: list[tuple[str, str]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or kinds[i] != kinds[start]:
            out.append((tokenizer.decode(ids[start:i]), kinds[start]))
            start = i
    return out


def find_tokens(tokenizer, query: str) -> list[tuple[int, str]]:
    """Token rows named by ``query``: comma-separated ids or texts ("<|im_end|>, 42, hello").

    A text that is one vocabulary entry maps to it; any other text maps to the tokens it is
    split into. Raises ``DataError`` for an id outside the vocabulary.
    """
    out: list[tuple[int, str]] = []
    size = len(tokenizer)
    for item in (x.strip() for x in query.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            tid = int(item)
            if not 0 <= tid < size:
                raise DataError(f"Token id {tid} is outside this vocabulary (0 to {size - 1}).")
            ids = [tid]
        else:
            vocab_id = tokenizer.convert_tokens_to_ids(item)
            unk = tokenizer.unk_token_id
            if isinstance(vocab_id, int) and vocab_id != unk and tokenizer.convert_ids_to_tokens(vocab_id) == item:
                ids = [vocab_id]
            else:
                ids = tokenizer(item, add_special_tokens=False)["input_ids"]
        for tid in ids:
            if all(tid != x for x, _ in out):
                out.append((tid, tokenizer.convert_ids_to_tokens(tid)))
    return out


def search_vocab(tokenizer, text: str, limit: int = 100) -> list[tuple[int, str]]:
    """Vocabulary entries whose text contains ``text`` (special tokens first, then by id)."""
    needle = text.strip()
    if not needle:
        return []
    special = set(tokenizer.all_special_ids)
    hits = [(tid, tok) for tok, tid in tokenizer.get_vocab().items() if needle in tok]
    hits.sort(key=lambda x: (x[0] not in special, x[0]))
    return hits[:limit]


def data_tokens(preview: DataPreview | None) -> DataTokens | None:
    """The preview's token lengths as the estimate takes them (None: no data, the worst case)."""
    from ..estimate import DataTokens

    return DataTokens.of(preview.lengths, preview.trained, preview.first_trained) if preview is not None else None


def data_lengths(plan) -> tuple[DataTokens | None, str]:
    """The token lengths of ``plan``'s data (all of it) for the estimate, as a
    ``core.estimate.DataTokens``, or (None, why not) when the data or the model's tokenizer cannot
    be read here."""
    from ..errors import HeadtuneError
    from ..model.sources import load_tokenizer

    if not Path(plan.data.path).is_file():
        return None, f"the data file {plan.data.path} is not here"
    try:
        tokenizer = load_tokenizer(resolve_source(plan.model.name_or_path), plan.model.trust_remote_code)
        e = plan.embeddings
        preview = preview_data(
            plan.data, tokenizer, table_rows=0, max_examples=10**9, new_tokens=e.new_tokens, vocab_tokens=e.vocab_tokens
        )
    except HeadtuneError as exc:
        return None, str(exc)
    return data_tokens(preview), ""
