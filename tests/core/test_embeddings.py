"""Every embeddings mode x {none, 8bit, 4bit}, tied and untied, on tiny real Llama models.

After a few real steps: the trained matrix (or only its selected rows) changed, the frozen one
did not, a tied model is still tied, and the saved adapter reloads with identical logits.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from headtune.core.embeddings.setup import NewRows, init_new_rows
from headtune.core.plan import plan_from_dict
from headtune.core.testing import ALPACA_ROWS, plan_dict, write_jsonl
from headtune.core.training.job import TrainingJob
from headtune.core.training.trained import load_trained


@pytest.fixture(scope="module")
def rows(tokenizer_dir):
    """Three token ids that occur in every training answer (a row only learns when it is used)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return sorted(set(tok("Colour 3 is red.")["input_ids"][:1] + tok(" is.")["input_ids"]))


@pytest.fixture
def tool_file(tmp_path):
    """Answers that use the new tool tags (a row only learns where its token appears)."""
    rows = [{**r, "output": f"<|tool|>{r['output']}<|/tool|>"} for r in ALPACA_ROWS]
    return write_jsonl(tmp_path / "tools.jsonl", rows)


def effective(model):
    """The embedding and head matrices as the (PEFT-wrapped) model actually applies them."""
    with torch.no_grad():
        emb = model.get_input_embeddings()
        vocab = emb.weight.shape[0] if hasattr(emb, "weight") else emb.base_layer.weight.shape[0]
        E = emb(torch.arange(vocab).unsqueeze(0))[0].float()
        head = model.get_output_embeddings()
        H = head(torch.eye(E.shape[1], dtype=E.dtype).unsqueeze(0))[0].T.float()
    return E, H


def base_matrices(folder):
    sd = load_file(str(folder / "model.safetensors"))
    E = sd["model.embed_tokens.weight"].float()
    H = sd.get("lm_head.weight", sd["model.embed_tokens.weight"]).float()
    return E, H


def run(tmp_path, model_dir, data, quant, dtype="float32", **embeddings):
    d = plan_dict(
        model_dir,
        data,
        tmp_path / "run",
        embeddings=embeddings,
        model={"name_or_path": str(model_dir), "quantization": quant, "dtype": dtype},
        training={"max_steps": 3, "learning_rate": 5e-2, "save_every": 0},
    )
    job = TrainingJob(plan_from_dict(d))
    job.run()
    return job


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def check_reload(job, tmp_path, extra_ids=()):
    model = job.model.eval()
    ids = torch.tensor([[1, 5, 17, 42, 99, 7, *extra_ids]])
    before = logits(model, ids)
    reloaded, tok, _ = load_trained(tmp_path / "run")
    after = logits(reloaded, ids)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    return reloaded


def rows_changed(new, old):
    return set(torch.nonzero((new - old).abs().amax(dim=1) > 0).flatten().tolist())


def assert_trained(new, old, mode, rows, at_least):
    """tokens mode changes exactly the selected rows; full and lora change many rows."""
    changed = rows_changed(new, old)
    if mode == "tokens":
        assert changed == set(rows)
    else:
        assert len(changed) > at_least


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
def test_untied_embeddings_trained_head_frozen(tmp_path, tiny_untied, alpaca_file, mode, quant, rows):
    extra = {"token_ids": rows} if mode == "tokens" else {}
    job = run(tmp_path, tiny_untied, alpaca_file, quant, train_embeddings=True, mode=mode, **extra)
    E0, H0 = base_matrices(tiny_untied)
    E, H = effective(job.model)
    assert_trained(E, E0, mode, rows, at_least=10)
    assert torch.equal(H, H0), "the LM head was not asked to train and must stay frozen"
    check_reload(job, tmp_path)


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
def test_tied_matrix_trained_once_and_stays_tied(tmp_path, tiny_tied, alpaca_file, mode, quant, rows):
    extra = {"token_ids": rows} if mode == "tokens" else {}
    job = run(tmp_path, tiny_tied, alpaca_file, quant, train_lm_head=True, mode=mode, **extra)
    E0, _ = base_matrices(tiny_tied)
    E, H = effective(job.model)
    assert_trained(E, E0, mode, rows, at_least=10)
    torch.testing.assert_close(H, E, rtol=0, atol=1e-6)  # input and output still one matrix
    reloaded = check_reload(job, tmp_path)
    E2, H2 = effective(reloaded)
    torch.testing.assert_close(H2, E2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_tied_lora_stays_one_matrix_in_the_default_dtype(tmp_path, tiny_tied, alpaca_file, quant):
    """In bfloat16 (the default) PEFT's upcast of the adapter to fp32 would give the head's LoRA
    factors memory of their own, and the two halves of the tied matrix would train apart."""
    job = run(tmp_path, tiny_tied, alpaca_file, quant, dtype="bfloat16", train_lm_head=True, mode="lora")
    params = dict(job.model.named_parameters())
    emb_a = params["base_model.model.model.embed_tokens.lora_embedding_A.default"]
    head_b = params["base_model.model.lm_head.lora_B.default.weight"]
    assert emb_a.dtype == torch.float32 and emb_a.abs().sum() > 0  # trained (it starts at zero)
    assert head_b.untyped_storage().data_ptr() == emb_a.untyped_storage().data_ptr()
    assert torch.equal(head_b, emb_a.T)
    # Saved and reloaded as trained (logits in bfloat16 differ by rounding between the two
    # models' kernels, so the values are compared).
    reloaded = dict(load_trained(tmp_path / "run")[0].named_parameters())
    for name, value in params.items():
        if value.requires_grad:
            assert torch.equal(reloaded[name], value), name


@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
def test_real_llama3_vocabulary_head_only(tmp_path, tiny_llama3_vocab, alpaca_file, mode, rows):
    extra = {"token_ids": rows} if mode == "tokens" else {}
    job = run(tmp_path, tiny_llama3_vocab, alpaca_file, "none", train_lm_head=True, mode=mode, **extra)
    E0, H0 = base_matrices(tiny_llama3_vocab)
    E, H = effective(job.model)
    assert H.shape[0] == 128_256
    assert torch.equal(E, E0), "embeddings were not asked to train and must stay frozen"
    assert_trained(H, H0, mode, rows, at_least=1000)
    check_reload(job, tmp_path)


def test_frozen_base_layers_do_not_change(tmp_path, tiny_untied, alpaca_file):
    job = run(tmp_path, tiny_untied, alpaca_file, "none", train_embeddings=True, mode="full")
    base = load_file(str(tiny_untied / "model.safetensors"))
    live = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in job.model.named_parameters()}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.equal(live[name].detach().float(), base[name].float()), name


@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
@pytest.mark.parametrize("tied", [False, True])
def test_new_tokens_added_mean_initialised_and_trained(tmp_path, tiny_untied, tiny_tied, tool_file, mode, tied):
    folder = tiny_tied if tied else tiny_untied
    new = ["<|tool|>", "<|/tool|>"]
    job = run(
        tmp_path, folder, tool_file, "none", train_embeddings=True, mode=mode, new_tokens=new, new_token_init="mean"
    )
    tok = load_trained(tmp_path / "run")[1]
    ids = tok.convert_tokens_to_ids(new)
    # The tokenizer had 400 tokens and the model 512 rows: new tokens land on spare rows.
    assert ids == [400, 401] and tok.tokenize("a <|tool|> b").count("<|tool|>") == 1
    E0, H0 = base_matrices(folder)
    mean_e = E0[:400].mean(dim=0)
    E, H = effective(job.model)
    assert E.shape[0] == 512
    for i in ids:  # started at the mean, then trained
        assert not torch.allclose(E[i], mean_e, atol=1e-6)
    check_reload(job, tmp_path, extra_ids=ids)


def test_new_tokens_train_even_without_embedding_training(tmp_path, tiny_untied, tool_file):
    job = run(tmp_path, tiny_untied, tool_file, "none", new_tokens=["<|tool|>"])
    E0, H0 = base_matrices(tiny_untied)
    E, H = effective(job.model)
    assert rows_changed(E, E0) == {400} and rows_changed(H, H0) == {400}
    assert not torch.allclose(H[400], H0[:400].mean(dim=0), atol=1e-6)
    check_reload(job, tmp_path, extra_ids=(400,))


def test_new_rows_start_at_the_mean(tiny_untied):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32)
    E0 = model.get_input_embeddings().weight.detach().clone()
    H0 = model.get_output_embeddings().weight.detach().clone()
    # 510 real tokens + 5 new: two land on spare rows (510, 511), three need a resize.
    init_new_rows(model, 515, NewRows([3, 510, 511, 512, 513, 514], original_len=510), "mean")
    E, H = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert E.shape[0] == 515 and torch.equal(E[:510], E0[:510])  # id 3 existed already: untouched
    torch.testing.assert_close(E[510:], E0[:510].mean(0).expand(5, -1))
    torch.testing.assert_close(H[510:], H0[:510].mean(0).expand(5, -1))


def test_embedding_learning_rate_is_its_own_group(tmp_path, tiny_untied, alpaca_file):
    d = plan_dict(
        tiny_untied,
        alpaca_file,
        tmp_path / "run",
        embeddings={"train_embeddings": True, "mode": "full", "learning_rate": 1e-4},
        training={"max_steps": 1, "learning_rate": 1e-2},
    )
    job = TrainingJob(plan_from_dict(d))
    job.run()
    groups = job.trainer.optimizer.param_groups
    emb_ids = {id(p) for n, p in job.model.named_parameters() if "embed_tokens" in n and p.requires_grad}
    emb_groups = [g for g in groups if {id(p) for p in g["params"]} & emb_ids]
    body_groups = [g for g in groups if not {id(p) for p in g["params"]} & emb_ids]
    assert emb_groups and body_groups
    assert all(g["initial_lr"] == 1e-4 for g in emb_groups)
    assert all(g["initial_lr"] == 1e-2 for g in body_groups)
