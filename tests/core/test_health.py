"""Token health: planted untrained rows are flagged exactly; templates without an end token are."""

from __future__ import annotations

import shutil

import pytest
import torch

from headtune.core.embeddings.untrained import init_untrained_mean, untrained_rows
from headtune.core.model.sources import load_tokenizer, resolve_source
from headtune.core.plan import DataSpec
from headtune.core.testing import ALPACA_ROWS, write_jsonl
from headtune.core.tools.health import check_template, inspect_model


def test_random_matrix_is_healthy_and_planted_rows_are_found():
    torch.manual_seed(0)
    w = torch.randn(1000, 64) * 0.02
    assert untrained_rows(w) == {}
    w[[5, 17]] = 0.0  # never trained: zeros
    w[[100, 200, 300]] = 1e-3  # one tiny init value, shared
    w[400] = w[401] = torch.randn(64) * 0.02  # two identical rows of normal size
    flagged = untrained_rows(w)
    assert sorted(flagged) == [5, 17, 100, 200, 300, 400, 401]
    assert "norm" in flagged[5][0] and any("identical to 1 other row" in r for r in flagged[400])


@pytest.fixture
def planted(tmp_path, tiny_untied):
    """A copy of the tiny untied model with rows 300-302 zeroed and 303-304 duplicated, in both matrices."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "planted"
    shutil.copytree(tiny_untied, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            w[[300, 301, 302]] = 0.0
            w[304] = w[303]
    model.save_pretrained(folder)
    return folder


def test_inspect_flags_exactly_the_planted_rows_and_counts_their_use(planted, tmp_path):
    report = inspect_model(str(planted))
    ids = [r.id for r in report.flagged]
    # Row 0 is the padding row, zero by construction in this tiny model: rightly flagged too.
    assert ids == [0, 300, 301, 302, 303, 304]
    assert all(r.matrix == "embeddings+lm_head" for r in report.flagged if r.id >= 300)
    assert report.verdict in ("unused", "attention")
    # A dataset that uses token 300 (its text) makes it "used" with counts and a recommendation.
    tok = load_tokenizer(resolve_source(str(planted)))
    text = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(300)])
    rows = [dict(r, output=r["output"] + text) for r in ALPACA_ROWS[:10]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    report = inspect_model(str(planted), DataSpec(path=str(data), max_seq_len=64))
    assert report.data_counts.get(300, 0) >= 10 and report.data_trained_counts.get(300, 0) >= 10
    assert report.verdict == "attention" and "300" in report.recommendation
    assert report.template is not None and report.template.rows_checked == 10


def test_healthy_tiny_model_flags_only_its_padding_row(tiny_tied):
    assert [r.id for r in inspect_model(str(tiny_tied)).flagged] == [0]


def test_init_untrained_mean_changes_exactly_the_flagged_rows(planted):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(planted, dtype=torch.float32)
    before = [m.weight.clone() for m in (model.get_input_embeddings(), model.get_output_embeddings())]
    changed = init_untrained_mean(model)
    assert changed == [0, 300, 301, 302, 303, 304]  # row 0: the embedding's zero padding row
    for old, layer in zip(before, (model.get_input_embeddings(), model.get_output_embeddings())):
        new = layer.weight
        keep = torch.ones(new.shape[0], dtype=torch.bool)
        keep[sorted(untrained_rows(old))] = False  # each matrix: its own flagged rows
        assert torch.equal(new[keep], old[keep])
        assert torch.allclose(new[300], old[keep].mean(dim=0)) and torch.equal(new[300], new[304])
    assert untrained_rows(model.get_input_embeddings().weight).keys() >= {300}  # now identical to each other


def test_template_without_end_token_is_flagged(tiny_untied, tmp_path):
    tok = load_tokenizer(resolve_source(str(tiny_untied)))
    data = write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS[:8])
    no_end = tmp_path / "no_end.jinja"
    no_end.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    good = check_template(tok, DataSpec(path=str(data), max_seq_len=64), generation_eos=[2])
    assert good.end_token == "<|im_end|>" and good.end_token_in_eos is True and not good.problems
    bad = check_template(tok, DataSpec(path=str(data), chat_template=str(no_end), max_seq_len=64), generation_eos=[2])
    assert bad.problems and (bad.end_token_in_eos is False or bad.responses_without_end)
    wrong_eos = check_template(tok, DataSpec(path=str(data), max_seq_len=64), generation_eos=[0])
    assert any("not among generation_config" in p for p in wrong_eos.problems)
    cut = check_template(tok, DataSpec(path=str(data), max_seq_len=16), generation_eos=[2])
    assert cut.truncated == 8 and any("cut by data.max_seq_len" in p for p in cut.problems)


def test_inspect_command_and_init_untrained_in_a_run(planted, tmp_path, capsys):
    import json

    import yaml

    from headtune.core.cli import main
    from headtune.core.testing import plan_dict

    assert main(["inspect", str(planted)]) == 0
    out = capsys.readouterr().out
    assert "6 rows look untrained" in out and "    300  " in out
    assert main(["inspect", str(planted), "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["flagged"]] == [0, 300, 301, 302, 303, 304]
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    data = write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            plan_dict(planted, data, tmp_path / "run", training={"max_steps": 1}, embeddings={"init_untrained": "mean"})
        )
    )
    assert main(["train", str(plan), "--quiet"]) == 0
    record = json.loads((tmp_path / "run" / "init_untrained.json").read_text())
    assert record == {"method": "mean", "rows": [0, 300, 301, 302, 303, 304]}


def test_inspect_counts_the_data_in_the_plans_extended_tokenizer(planted, tmp_path, capsys):
    from headtune.core.cli import main

    rows = [dict(r, output=r["output"] + " Kühlkreislauf") for r in ALPACA_ROWS[:6]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = DataSpec(path=str(data), max_seq_len=64)
    report = inspect_model(str(planted), spec, vocab_tokens=[" Kühlkreislauf"])
    # The word's token (with the BPE's intermediate merges it needs, unused in the data).
    (new,) = [t for t in report.new_tokens if t.data_uses]
    tok = load_tokenizer(resolve_source(str(planted)))
    assert new.id >= len(tok) and len(new.pieces) == len(tok.tokenize(" Kühlkreislauf")) > 1
    assert new.data_uses == 6 and new.data_trained_uses == 6
    assert [r.id for r in report.flagged] == [0, 300, 301, 302, 303, 304]  # the base rows, as before
    key = 'embeddings.vocab_tokens=[" Kühlkreislauf"]'
    assert main(["inspect", str(planted), "--data", str(data), "--set", key]) == 0
    out = capsys.readouterr().out
    assert f"{len(report.new_tokens)} tokens added by the plan" in out and "data x6 (6 trained)" in out
    assert main(["inspect", str(planted), "--set", "training.max_steps=3"]) == 2
    assert "inspect takes only" in capsys.readouterr().err
