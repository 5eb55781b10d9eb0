"""Proposing new tokens from the training data: the words the base tokenizer handles worst.

A BPE model is trained (``tokenizers``) on the text the run trains on (the assistant's replies,
or raw text), behind the base tokenizer's own pre-tokenizer, so every candidate lies within one
pre-token (a word with its leading space, a number, a run of punctuation). Its vocabulary entries
that the base tokenizer splits into two or more pieces are the candidates. They are picked
greedily by the tokens they save, as BPE itself picks merges: the best candidate is taken, its
pieces are joined wherever they occur in the data, and the others' savings are counted again on
the shortened text, until ``count`` tokens are taken or the next saves less than ``min_share``
of the data's tokens. The total saving is then measured, not estimated: the data is encoded with
the base tokenizer and with the extended one, and every text must decode back to itself.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import asdict, dataclass, field

from ..data.reading import example_texts, load_examples
from ..embeddings import vocab as vocab_mod
from ..errors import DataError


@dataclass(frozen=True)
class Candidate:
    text: str  # the token's text (a leading space is part of it)
    count: int  # occurrences in the trained text once the tokens ranked before it are in
    pieces: int  # how many tokens the base tokenizer splits it into
    saved: int  # tokens saved, counted after the tokens ranked before it
    share: float  # saved / the trained text's tokens under the base tokenizer


@dataclass
class Proposal:
    candidates: list[Candidate]
    examples: int
    base_tokens: int  # trained text, base tokenizer
    new_tokens: int  # trained text, extended with every candidate (measured)
    all_base_tokens: int  # every text of the data (prompts too), base tokenizer
    all_new_tokens: int
    new_rows: int  # vocabulary entries added (candidates and the intermediate pieces their merges need)
    notes: list[str] = field(default_factory=list)

    @property
    def share_saved(self) -> float:
        return 1 - self.new_tokens / self.base_tokens if self.base_tokens else 0.0

    @property
    def tokens(self) -> list[str]:
        return [c.text for c in self.candidates]

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "share_saved": self.share_saved,
            "tokens_per_example_before": self.all_base_tokens / max(1, self.examples),
            "tokens_per_example_after": self.all_new_tokens / max(1, self.examples),
        }


def _texts(examples) -> tuple[list[str], list[str]]:
    trained: list[str] = []
    every: list[str] = []
    for ex in examples:
        t, e = example_texts(ex)
        trained += t
        every += e
    return trained, every


def _word_counts(tokenizer, texts: list[str]) -> Counter:
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    counts: Counter = Counter()
    for text in texts:
        counts.update(p for p, _ in pre.pre_tokenize_str(text))
    return counts


def _train_bpe(tokenizer, texts: list[str], size: int) -> list[str]:
    """Vocabulary entries of a BPE trained on ``texts`` behind the base pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=size, min_frequency=2, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    return list(bpe.get_vocab())


def _occurrences(seg: tuple[str, ...], run: tuple[str, ...]) -> int:
    n, i, k = 0, 0, len(run)
    while i + k <= len(seg):
        if seg[i : i + k] == run:
            n += 1
            i += k
        else:
            i += 1
    return n


def _join(seg: tuple[str, ...], run: tuple[str, ...]) -> tuple[str, ...]:
    out, i, k = [], 0, len(run)
    while i < len(seg):
        if seg[i : i + k] == run:
            out.append("".join(run))
            i += k
        else:
            out.append(seg[i])
            i += 1
    return tuple(out)


def propose(
    spec,
    tokenizer,
    count: int = 100,
    min_share: float = 0.0,
    exclude: list[str] | tuple[str, ...] = (),
    progress=None,
) -> Proposal:
    """Up to ``count`` new tokens for ``spec`` (the plan's ``data`` section) and ``tokenizer``,
    best first; a candidate that saves less than ``min_share`` (a fraction) of the trained text's
    tokens ends the list. ``exclude`` holds texts never to propose (the user's unticked ones)."""
    import copy

    vocab_mod.require_extensible(tokenizer)
    say = progress or (lambda _m: None)
    say(f"Reading {spec.path}")
    examples, _fmt = load_examples(spec.path, spec.format)
    trained, every = _texts(examples)
    if not any(trained):
        raise DataError(f"{spec.path} has no trained text to learn new tokens from.")
    backend = tokenizer.backend_tokenizer
    words = _word_counts(tokenizer, trained)
    segs = {w: tuple(vocab_mod.base_pieces(backend, w)) for w in words}
    base_total = sum(len(segs[w]) * f for w, f in words.items())

    say("Training a BPE on the data")
    size = min(60000, 256 + max(2000, 8 * count))
    excluded = set(exclude)
    runs: dict[tuple[str, ...], str] = {}
    for entry in _train_bpe(tokenizer, trained, size):
        text = vocab_mod.surface_form(entry)
        if not text or vocab_mod.model_form(text) != entry or text in excluded:
            continue  # part of a character, or unticked
        pieces = tuple(vocab_mod.base_pieces(backend, entry))
        if len(pieces) >= 2:
            runs[pieces] = text

    # Lazy greedy: savings only fall as tokens are taken, so a stale top is re-counted before use.
    containing: dict[str, set[str]] = {}
    for w, seg in segs.items():
        for p in seg:
            containing.setdefault(p, set()).add(w)

    def saving(run: tuple[str, ...]) -> tuple[int, int]:
        n = sum(_occurrences(segs[w], run) * words[w] for w in containing.get(run[0], ()))
        return n, n * (len(run) - 1)

    heap = [(-saving(r)[1], r) for r in runs]
    heapq.heapify(heap)
    current = {r: r for r in runs}  # each candidate's run in the current segmentation
    chosen: list[Candidate] = []
    say(f"Ranking {len(runs)} candidates")
    while heap and len(chosen) < count:
        neg, r = heapq.heappop(heap)
        run = current[r]
        n, saved = saving(run)
        if saved <= 0:
            continue
        if heap and saved < -heap[0][0]:
            heapq.heappush(heap, (-saved, r))
            continue
        if saved / base_total < min_share:
            break
        chosen.append(Candidate(runs[r], n, len(r), saved, saved / base_total))
        joined = "".join(run)
        touched = {w for w in containing.get(run[0], ()) if _occurrences(segs[w], run)}
        for w in touched:
            segs[w] = _join(segs[w], run)
            containing.setdefault(joined, set()).add(w)
        for other in current:
            if _occurrences(current[other], run) and other != r:
                current[other] = _join(current[other], run)

    say("Measuring the extended tokenizer on the data")
    base_trained = _count_tokens(tokenizer, trained)
    base_every = _count_tokens(tokenizer, every)
    grown = copy.deepcopy(tokenizer)
    ext = vocab_mod.extend(grown, [c.text for c in chosen])
    bad = vocab_mod.round_trip_failures(grown, every)
    if bad:  # by construction this cannot happen; never hand out tokens that would corrupt text
        raise DataError(f"The extended tokenizer does not decode {bad[0][:80]!r} back to itself; nothing proposed.")
    return Proposal(
        candidates=chosen,
        examples=len(examples),
        base_tokens=base_trained,
        new_tokens=_count_tokens(grown, trained),
        all_base_tokens=base_every,
        all_new_tokens=_count_tokens(grown, every),
        new_rows=len(ext.ids),
    )


def _count_tokens(tokenizer, texts: list[str]) -> int:
    total = 0
    for start in range(0, len(texts), 512):
        total += sum(len(ids) for ids in tokenizer(texts[start : start + 512], add_special_tokens=False)["input_ids"])
    return total


def format_proposal(p: Proposal) -> str:
    """A table for the terminal."""
    lines = [f"{'#':>3}  {'token':<28} {'count':>7} {'pieces':>6} {'saved':>8} {'share':>7}"]
    for i, c in enumerate(p.candidates, 1):
        lines.append(f"{i:>3}  {c.text!r:<28} {c.count:>7} {c.pieces:>6} {c.saved:>8} {c.share:>7.2%}")
    n = max(1, p.examples)
    lines += [
        "",
        f"{len(p.candidates)} tokens ({p.new_rows} new vocabulary rows with the pieces their merges need)",
        f"trained text: {p.base_tokens:,} -> {p.new_tokens:,} tokens ({p.share_saved:.1%} fewer, measured)",
        f"tokens per example (prompts included): {p.all_base_tokens / n:,.1f} -> {p.all_new_tokens / n:,.1f}",
        "every text decodes back to itself with the extended tokenizer",
    ]
    return "\n".join(lines)
