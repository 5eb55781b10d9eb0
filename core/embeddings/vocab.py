"""Ordinary new tokens: growing a byte-level BPE tokenizer's own vocabulary and merges.

A word the base tokenizer splits into several pieces becomes one token by adding it to the BPE
model's vocabulary together with merges that join its pieces, ranked after every existing merge.
Text the base tokenizer encodes is first split exactly as before; only then do the new merges
join pieces, so the new token appears wherever its word does (inside longer words too), and
decoding stays exact because the token is stored in the byte-level alphabet the decoder reads.

Tokens added as "added tokens" instead (``tokenizer.add_tokens``) are matched in the raw text
before pre-tokenisation: a word stored without a leading space then leaves that space as a token
of its own, and a word whose characters all belong to the byte-level alphabet (``fällig``)
decodes to broken UTF-8. That is why ordinary tokens go through the merges here, and typed
special tokens (``embeddings.new_tokens``) stay added tokens.

Each new vocabulary entry joins two existing entries, so a word of k pieces needs k - 1 merges;
the intermediate strings become tokens too unless the vocabulary already has them. The merge
tree is chosen to reuse existing tokens (and earlier new ones) as intermediates where it can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import PlanError

KEY = "embeddings.vocab_tokens"


@dataclass
class Extension:
    """What ``extend`` added: the ids of every new vocabulary entry (words and intermediates),
    in id order, and for each the text of the pieces the base tokenizer split it into."""

    ids: list[int] = field(default_factory=list)
    words: dict[str, int] = field(default_factory=dict)  # requested text -> its id
    pieces: dict[int, list[int]] = field(default_factory=dict)  # new id -> base ids it was split into


def why_not_extensible(tokenizer) -> str | None:
    """Why new ordinary tokens cannot be added to this tokenizer, or None when they can."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        return "it has no fast (Rust) version (the model's repository has no tokenizer.json)"
    state = json.loads(backend.to_str())
    model = state.get("model") or {}
    if model.get("type") != "BPE":
        return f"it is a {model.get('type', 'unknown')} tokenizer, and only BPE vocabularies can grow by merges"
    if not _has_byte_level(state.get("pre_tokenizer")) or not _has_byte_level(state.get("decoder")):
        return (
            "it is not a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen, SmolLM2 style); "
            "SentencePiece-style tokenizers (Llama 2, Mistral, Gemma) are not supported"
        )
    if model.get("dropout"):
        return "its BPE model uses dropout"
    return None


def require_extensible(tokenizer) -> None:
    reason = why_not_extensible(tokenizer)
    if reason:
        raise PlanError(
            f"{KEY}: this model's tokenizer cannot take new ordinary tokens: {reason}. Clear "
            f"{KEY} (typed special tokens in embeddings.new_tokens still work).",
            KEY,
        )


def _has_byte_level(part) -> bool:
    if not isinstance(part, dict):
        return False
    if part.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in part.get("pretokenizers", part.get("decoders", [])) or [])


@lru_cache(maxsize=4)
def _byte_level():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def model_form(text: str) -> str:
    """``text`` in the byte-level alphabet the vocabulary stores (a space becomes ``Ġ``)."""
    return "".join(piece for piece, _ in _byte_level().pre_tokenize_str(text))


def surface_form(token: str) -> str:
    """The text a byte-level vocabulary entry stands for ("" when it is not whole UTF-8)."""
    from tokenizers import decoders

    try:
        return decoders.ByteLevel().decode([token])
    except Exception:  # noqa: BLE001 - an entry outside the alphabet
        return ""


def check_word(tokenizer, text: str) -> str | None:
    """Why ``text`` cannot be one new ordinary token of this tokenizer, or None."""
    if not text:
        return "it is empty"
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    pieces = [p for p, _ in pre.pre_tokenize_str(text)] if pre is not None else [text]
    if len(pieces) != 1:
        shown = ", ".join(repr(surface_form(p)) for p in pieces[:4])
        return f"the tokenizer always splits it before BPE ({shown}), so no merge can join it"
    return None


def base_pieces(backend, form: str) -> list[str]:
    """The vocabulary entries ``backend``'s BPE model splits the byte-level string ``form`` into."""
    return [t.value for t in backend.model.tokenize(form)]


def _merge_tree(pieces: list[str], vocab: dict) -> list[tuple[str, str]]:
    """Merges that join ``pieces`` into one string, choosing the binary tree whose intermediate
    strings are most often already in ``vocab`` (fewest new entries); left to right on ties."""
    k = len(pieces)
    text = [[""] * (k + 1) for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k + 1):
            text[i][j] = "".join(pieces[i:j])
    cost: dict[tuple[int, int], int] = {}
    split: dict[tuple[int, int], int] = {}
    for length in range(1, k + 1):
        for i in range(k - length + 1):
            j = i + length
            if length == 1:
                cost[i, j] = 0
                continue
            own = 0 if (j - i == k or text[i][j] in vocab) else 1
            best = min(range(i + 1, j), key=lambda m: (cost[i, m] + cost[m, j], -m))
            cost[i, j] = cost[i, best] + cost[best, j] + own
            split[i, j] = best
    merges: list[tuple[str, str]] = []

    def walk(i: int, j: int) -> None:
        if j - i < 2:
            return
        m = split[i, j]
        walk(i, m)
        walk(m, j)
        merges.append((text[i][m], text[m][j]))

    walk(0, k)
    return merges


def extend(tokenizer, words: list[str]) -> Extension:
    """Add ``words`` (surface text, e.g. ``" Überprüfung"``) to ``tokenizer`` as ordinary tokens.

    The tokenizer's backend is replaced by one whose BPE vocabulary and merges include them; each
    word then encodes as one token wherever it is a whole pre-token. Words already in the vocabulary
    keep their id. Raises ``PlanError`` naming the word that cannot be added, or the tokenizer.
    """
    from tokenizers import Tokenizer

    out = Extension()
    if not words:
        return out
    require_extensible(tokenizer)
    base = tokenizer.backend_tokenizer
    state = json.loads(base.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges: list = state["model"]["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)
    known = {tuple(m.split(" ", 1)) if as_strings else tuple(m) for m in merges}
    next_id = max([len(tokenizer) - 1, *vocab.values(), *(t["id"] for t in state.get("added_tokens", []))]) + 1
    added_text = {t["content"] for t in state.get("added_tokens", [])}
    forms: dict[str, str] = {}
    for word in words:
        why = check_word(tokenizer, word)
        if why is None and word in added_text:
            why = "it is already an added (special) token"
        if why:
            raise PlanError(f"{KEY}: {word!r} cannot be a new token: {why}. Remove it from the list.", KEY)
        forms[word] = model_form(word)

    def add_merge(a: str, b: str) -> None:
        nonlocal next_id
        if (a, b) not in known:
            known.add((a, b))
            merges.append(f"{a} {b}" if as_strings else [a, b])
        if a + b not in vocab:
            vocab[a + b] = next_id
            out.ids.append(next_id)
            next_id += 1

    # Shorter words first, so longer ones can reuse them as intermediates.
    todo = sorted((f for f in dict.fromkeys(forms.values()) if f not in vocab), key=lambda f: (len(f), f))
    for form in todo:
        for a, b in _merge_tree(base_pieces(base, form), vocab):
            add_merge(a, b)
    # A merge added for one word can fire first inside another and leave it in two pieces; join
    # whatever pieces remain (a few rounds settle it), then check that every word is one token.
    for _ in range(8):
        grown = Tokenizer.from_str(json.dumps(state))
        split = {f: base_pieces(grown, f) for f in todo}
        split = {f: p for f, p in split.items() if len(p) > 1}
        if not split:
            break
        for pieces in split.values():
            for a, b in _merge_tree(pieces, vocab):
                add_merge(a, b)
    else:
        raise PlanError(f"{KEY}: the new tokens could not all be made single tokens ({len(split)} left).", KEY)
    if todo:
        _install(tokenizer, grown)
    out.words = {word: vocab[form] for word, form in forms.items()}
    by_id = {i: t for t, i in vocab.items()}
    out.pieces = {i: [base.token_to_id(p) for p in base_pieces(base, by_id[i])] for i in out.ids}
    return out


def _install(tokenizer, backend) -> None:
    """Give a transformers fast tokenizer a new backend (its added tokens keep their ids)."""
    tokenizer._tokenizer = backend
    if hasattr(tokenizer, "_update_trie"):
        tokenizer._update_trie()


def round_trip_failures(tokenizer, texts, limit: int = 3) -> list[str]:
    """Texts (up to ``limit``) that do not decode back to themselves after encoding."""
    bad: list[str] = []
    batch = list(texts)
    for start in range(0, len(batch), 256):
        chunk = batch[start : start + 256]
        enc = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for text, ids in zip(chunk, enc):
            if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != text:
                bad.append(text)
                if len(bad) >= limit:
                    return bad
    return bad
