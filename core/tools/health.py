"""Token health: embedding (and LM-head) rows that look untrained, and who uses those tokens.

Base models ship rows that were never or barely trained (Llama 3's reserved and some special
tokens among them): their norms sit far below a typical row, or many of them are identical
(left at one init value). Chat fine-tuning then leans on exactly those tokens. This module finds
them from the weights alone (read straight from safetensors, no model is built), counts how
often the chat template and a dataset use them, and ``core.embeddings.untrained`` can reset them to the
mean of the healthy rows before training (``embeddings.init_untrained: mean``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.examples import tokenize_example
from ..data.reading import IGNORE_INDEX, load_examples
from ..embeddings.untrained import untrained_rows
from ..errors import ModelError
from ..model.sources import load_tokenizer, resolve_source
from ..model.templates import SAMPLE_CONVERSATION, resolve_template, template_end_token

EMBEDDING_KEYS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")
HEAD_KEYS = ("lm_head.weight", "output.weight", "embed_out.weight")


@dataclass
class FlaggedRow:
    id: int
    token: str
    matrix: str  # "embeddings" or "lm_head"
    reasons: list[str]
    norm: float


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def read_matrices(folder: str | Path):
    """(embedding matrix, LM head matrix or None when tied) read from a model folder's safetensors."""
    from safetensors import safe_open

    folder = Path(folder)
    files = _safetensors_files(folder)
    if not files:
        raise ModelError(f"{folder} has no .safetensors weights; token health reads them directly.")
    emb = head = None
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if emb is None and key.endswith(EMBEDDING_KEYS):
                    emb = st.get_tensor(key)
                elif head is None and (key in HEAD_KEYS or key.endswith(tuple("." + k for k in HEAD_KEYS))):
                    head = st.get_tensor(key)
    if emb is None:
        raise ModelError(f"No token embedding matrix found in {folder} (looked for {', '.join(EMBEDDING_KEYS)}).")
    return emb, head


@dataclass
class TemplateReport:
    end_token: str | None
    end_token_in_eos: bool | None  # None when the model has no generation_config
    eos_ids: list[int]
    rows_checked: int = 0
    responses_without_end: list[int] = field(default_factory=list)  # dataset lines
    truncated: int = 0
    trained_tokens: int = 0
    masked_tokens: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class NewToken:
    """A token the plan adds (``embeddings.new_tokens`` / ``vocab_tokens``), with its row and use."""

    id: int
    token: str
    pieces: list[str]  # what the base tokenizer split it into (its row starts from theirs)
    data_uses: int = 0
    data_trained_uses: int = 0


@dataclass
class HealthReport:
    model: str
    vocab: int
    tied: bool
    flagged: list[FlaggedRow]
    template_counts: dict[int, int]  # flagged id -> uses in a rendered template sample
    data_counts: dict[int, int]  # flagged id -> uses in the dataset (all tokens)
    data_trained_counts: dict[int, int]  # flagged id -> uses among trained (label) tokens
    verdict: str
    recommendation: str
    template: TemplateReport | None = None
    new_tokens: list[NewToken] = field(default_factory=list)  # the plan's, in the extended tokenizer

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def used_ids(self) -> list[int]:
        used = set(self.template_counts) | set(self.data_counts)
        return sorted(i for i in used if self.template_counts.get(i) or self.data_counts.get(i))


def check_template(tokenizer, data_spec, generation_eos: list[int] | None, max_rows: int = 500) -> TemplateReport:
    """Render a sample of rows and report replies without the end token, an end token missing
    from generation_config's EOS ids, examples cut by max_seq_len and the trained share."""
    examples, fmt = load_examples(data_spec.path, data_spec.format)
    template = "" if fmt == "text" else resolve_template(tokenizer, data_spec.chat_template)[0]
    end = tokenizer.eos_token if fmt == "text" else template_end_token(tokenizer, template)
    end_id = tokenizer.convert_tokens_to_ids(end) if end else None
    eos = list(generation_eos or [])
    report = TemplateReport(
        end_token=end, end_token_in_eos=(end_id in eos) if generation_eos is not None else None, eos_ids=eos
    )
    name = Path(data_spec.path).name
    for ex in examples[:max_rows]:
        f = tokenize_example(tokenizer, ex, template, data_spec.max_seq_len, f"{name}, line {ex.line}")
        report.rows_checked += 1
        report.truncated += f["truncated"]
        trained = [t for t, lab in zip(f["input_ids"], f["labels"]) if lab != IGNORE_INDEX]
        report.trained_tokens += len(trained)
        report.masked_tokens += len(f["labels"]) - len(trained)
        if end_id is not None and (not trained or end_id not in trained[-2:]) and not f["truncated"]:
            report.responses_without_end.append(ex.line)
    if end is None:
        report.problems.append(
            "The chat template puts no token after the assistant's reply: the model cannot "
            "learn to stop. Use a template with an end-of-turn token (e.g. chatml)."
        )
    if report.end_token_in_eos is False:
        report.problems.append(
            f"The template's end token {end!r} (id {end_id}) is not among generation_config's "
            f"EOS ids {eos}: generation will not stop at the end of a turn."
        )
    if report.responses_without_end:
        report.problems.append(
            f"{len(report.responses_without_end)} of {report.rows_checked} replies are not "
            f"trained to end with {end!r} (first at line {report.responses_without_end[0]})."
        )
    if report.truncated:
        report.problems.append(
            f"{report.truncated} of {report.rows_checked} examples are cut by data.max_seq_len={data_spec.max_seq_len}."
        )
    return report


def inspect_model(
    name_or_path: str,
    data_spec=None,
    new_tokens: list[str] | tuple[str, ...] = (),
    vocab_tokens: list[str] | tuple[str, ...] = (),
) -> HealthReport:
    """The token-health report of a model (and, with ``data_spec``, of its use by a dataset).

    With the plan's ``new_tokens``/``vocab_tokens`` the tokenizer is extended as training extends
    it: the data is counted in its tokens, and a row that looks untrained but is taken by a new
    token (a spare row) is listed with the new tokens, whose rows are started when training begins.
    """
    source = resolve_source(name_or_path)
    tokenizer = load_tokenizer(source)
    added = None
    if new_tokens or vocab_tokens:
        from ..embeddings.setup import add_new_tokens

        added = add_new_tokens(tokenizer, list(new_tokens), list(vocab_tokens))
    folder = Path(source.folder)
    if source.kind == "hub":
        folder = _hub_folder(name_or_path)
    emb, head = read_matrices(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    tied = bool(cfg.get("tie_word_embeddings", head is None)) or head is None
    flagged: dict[int, FlaggedRow] = {}
    for matrix, w in (("embeddings", emb), ("lm_head", None if tied else head)):
        if w is None:
            continue
        for i, reasons in untrained_rows(w).items():
            row = flagged.get(i)
            norm = float(w[i].float().norm())
            if row is None:
                flagged[i] = FlaggedRow(
                    id=i, token=_token(tokenizer, i), matrix=matrix, reasons=list(reasons), norm=norm
                )
            else:
                row.matrix = "embeddings+lm_head"
                row.reasons += [f"lm_head: {r}" for r in reasons]
    news = []
    if added is not None:
        for i in added.ids:
            flagged.pop(i, None)
            pieces = [_token(tokenizer, p) for p in added.pieces.get(i, [])]
            news.append(NewToken(id=i, token=_token(tokenizer, i), pieces=pieces))
    new_by_id = {t.id: t for t in news}
    ids = set(flagged)
    template_counts: dict[int, int] = {}
    template = getattr(tokenizer, "chat_template", None)
    if template:
        rendered = tokenizer.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False)
        for t in tokenizer(rendered, add_special_tokens=False)["input_ids"]:
            if t in ids:
                template_counts[t] = template_counts.get(t, 0) + 1
    data_counts: dict[int, int] = {}
    trained_counts: dict[int, int] = {}
    report_t = None
    if data_spec is not None:
        examples, fmt = load_examples(data_spec.path, data_spec.format)
        tmpl = "" if fmt == "text" else resolve_template(tokenizer, data_spec.chat_template)[0]
        for ex in examples:
            f = tokenize_example(tokenizer, ex, tmpl, 10**9)
            for t, lab in zip(f["input_ids"], f["labels"]):
                if t in ids:
                    data_counts[t] = data_counts.get(t, 0) + 1
                    if lab != IGNORE_INDEX:
                        trained_counts[t] = trained_counts.get(t, 0) + 1
                elif t in new_by_id:
                    new_by_id[t].data_uses += 1
                    new_by_id[t].data_trained_uses += lab != IGNORE_INDEX
        report_t = check_template(tokenizer, data_spec, _generation_eos(folder))
    report = HealthReport(
        model=name_or_path,
        vocab=int(emb.shape[0]),
        tied=tied,
        flagged=sorted(flagged.values(), key=lambda r: r.id),
        template_counts=template_counts,
        data_counts=data_counts,
        data_trained_counts=trained_counts,
        verdict="",
        recommendation="",
        template=report_t,
        new_tokens=news,
    )
    report.verdict, report.recommendation = _verdict(report)
    return report


def _token(tokenizer, i: int) -> str:
    return tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else "(no token: spare row)"


def _hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))


def _generation_eos(folder: Path) -> list[int] | None:
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def _verdict(r: HealthReport) -> tuple[str, str]:
    used = r.used_ids
    if not r.flagged:
        return (
            "healthy",
            "No untrained-looking rows: LoRA alone is fine for the vocabulary (train the embeddings "
            "and head anyway when you add new tokens).",
        )
    if not used:
        return "unused", (
            f"{len(r.flagged)} rows look untrained, but neither the chat template nor the data "
            "uses them: nothing to fix for this run."
        )
    ids = ", ".join(str(i) for i in used[:20]) + (" …" if len(used) > 20 else "")
    return "attention", (
        f"{len(used)} untrained-looking tokens are used by the template or the data ({ids}). "
        f"Train their rows: embeddings.mode: tokens with embeddings.token_ids: [{ids}] and "
        "train_embeddings/train_lm_head on, and/or set embeddings.init_untrained: mean so they "
        "start from the average row instead of near zero."
    )
