"""Lean memory (core.training.lean): the chunked loss, no frozen duplicate, no upcast, 8-bit matrix states
and the fused step, on tiny real Llama models. Each would fail if its technique broke: the loss
and gradients must equal transformers' own, the frozen original must really be gone, the saved
run must reload (core.training.trained.load_trained) with the trained model's logits, and
merge_and_unload must carry the trained matrices."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from headtune.core.plan import plan_from_dict
from headtune.core.testing import plan_dict
from headtune.core.training import lean
from headtune.core.training.job import TrainingJob
from headtune.core.training.trained import load_trained

STOCK = {"loss": "standard", "frozen_copy": True, "matrix_dtype": "peft", "matrix_states": "trainer"}
FULL = {"train_embeddings": True, "train_lm_head": True, "mode": "full"}


def stock_loss(logits, labels, num_items=None):
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss(logits, labels, logits.shape[-1], num_items_in_batch=num_items)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [5, 64])
def test_chunked_loss_and_gradients_equal_transformers(dtype, chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 900, bias=False).to(dtype)
    hidden = torch.randn(2, 33, 16, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 900, (2, 33))
    labels[0, :7] = -100  # a masked prompt
    ref = stock_loss(head(hidden), labels)
    ref.backward()
    g_h, g_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    out = lean.causal_lm_loss(head, hidden, labels, kind="chunked", chunk=chunk)
    out.backward()
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, g_h, rtol=tol, atol=tol)
    torch.testing.assert_close(head.weight.grad, g_w, rtol=tol, atol=tol)


def test_chunked_loss_honours_num_items_in_batch_and_other_heads():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 300, bias=True)  # a bias: not a plain matrix, checkpointed chunks instead
    hidden = torch.randn(1, 20, 8, requires_grad=True)
    labels = torch.randint(0, 300, (1, 20))
    ref = stock_loss(head(hidden), labels, num_items=torch.tensor(50))
    ref.backward()
    g = hidden.grad.clone()
    hidden.grad = None
    out = lean.causal_lm_loss(head, hidden, labels, num_items_in_batch=torch.tensor(50), kind="chunked", chunk=6)
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(hidden.grad, g)
    assert lean.plain_head_weight(head) is None


def test_chunked_loss_keeps_only_one_chunk_of_logits():
    """The tracker's peak inside the loss stays near one chunk's logits, far below all of them."""
    from headtune.core.training.memtrack import LiveTensorTracker

    torch.manual_seed(2)
    V, T, H, chunk = 20_000, 512, 8, 64
    head = torch.nn.Linear(H, V, bias=False)
    hidden = torch.randn(1, T, H, requires_grad=True)
    labels = torch.randint(0, V, (1, T))
    tracker = LiveTensorTracker()
    with tracker:
        lean.causal_lm_loss(head, hidden, labels, kind="chunked", chunk=chunk).backward()
    extra = tracker.peak - (V * H * 4 + T * H * 4)  # beyond the weight and the hidden states
    assert extra < chunk * V * 4 * 1.5 + V * H * 4 + 4 * T * H * 4  # one chunk + the head's gradient
    assert extra < T * V * 4 / 3  # the full logits would be T x V x 4 (x 3 in backward)


def run(tmp_path, folder, data, name, quant="none", memory=None, training=None, embeddings=None):
    d = plan_dict(
        folder,
        data,
        tmp_path / name,
        embeddings=embeddings or FULL,
        model={"name_or_path": str(folder), "quantization": quant, "dtype": "float32"},
        training={"max_steps": 3, "learning_rate": 5e-2, "save_every": 0, **(training or {})},
        memory=memory or {},
    )
    job = TrainingJob(plan_from_dict(d))
    job.run()
    return job


def losses(job):
    return [h["loss"] for h in job.trainer.state.log_history if "loss" in h]


def test_lean_defaults_match_stock_loss_and_drop_the_duplicate(tmp_path, tiny_untied, alpaca_file):
    stock = run(tmp_path, tiny_untied, alpaca_file, "stock", memory=STOCK)
    # The exact defaults (chunked loss, no frozen copy); 8-bit matrix states, also a default, are not
    # exact, so the matrices keep the stock run's state precision here.
    lean_job = run(tmp_path, tiny_untied, alpaca_file, "lean", memory={"matrix_states": STOCK["matrix_states"]})
    assert lean_job.lean.loss == "chunked" and not lean_job.lean.frozen_copy
    assert losses(lean_job) == pytest.approx(losses(stock), rel=1e-4, abs=1e-4)
    # With every default, 8-bit states included, the loss stays close (measured on a real model in
    # docs/matrix-states-loss.md).
    defaults = run(tmp_path, tiny_untied, alpaca_file, "defaults")
    assert defaults.lean.matrix_states == "8bit"
    assert losses(defaults) == pytest.approx(losses(stock), rel=1e-2, abs=1e-2)
    # One storage per matrix: the wrapper's original is the trained copy itself.
    from peft.utils.other import ModulesToSaveWrapper

    wrappers = [m for m in lean_job.model.modules() if isinstance(m, ModulesToSaveWrapper)]
    assert len(wrappers) == 2
    for w in wrappers:
        assert w.original_module.weight is w.modules_to_save["default"].weight
        assert w.original_module.weight.requires_grad
    stock_wrappers = [m for m in stock.model.modules() if isinstance(m, ModulesToSaveWrapper)]
    assert all(w.original_module.weight is not w.modules_to_save["default"].weight for w in stock_wrappers)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_lean_run_reloads_and_merges_with_the_trained_matrices(
    tmp_path, tiny_untied, tiny_tied, alpaca_file, tied, quant
):
    """The export contract: load_trained gives the trained logits; merge_and_unload carries the
    trained embedding/head matrices (still tied on a tied model)."""
    folder = tiny_tied if tied else tiny_untied
    mem = {"matrix_states": "8bit", "fused_step": True}
    job = run(tmp_path, folder, alpaca_file, "run", quant=quant, memory=mem, training={"max_grad_norm": 0.0})
    assert job.lean.fused_step and not job.lean.frozen_copy
    ids = torch.tensor([[1, 5, 17, 42, 99, 7]])
    with torch.no_grad():
        before = job.model.eval()(input_ids=ids).logits.float()
    model, _, plan = load_trained(tmp_path / "run")
    assert plan.memory.fused_step
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits.float(), before, rtol=0, atol=1e-5)
    merged = model.merge_and_unload()
    base = load_file(str(folder / "model.safetensors"))
    E = merged.get_input_embeddings().weight.detach().float()
    assert not torch.allclose(E, base["model.embed_tokens.weight"].float()), "trained embedding lost in merge"
    trained_E = lean.active_weight(job.model.get_input_embeddings()).detach().float()
    torch.testing.assert_close(E, trained_E, rtol=0, atol=1e-6)
    H = merged.get_output_embeddings().weight
    if tied:
        assert H is merged.get_input_embeddings().weight or torch.equal(H, merged.get_input_embeddings().weight)
    else:
        assert not torch.allclose(H.detach().float(), base["lm_head.weight"].float())
    if quant == "none":
        with torch.no_grad():
            torch.testing.assert_close(merged(input_ids=ids).logits.float(), before, rtol=0, atol=1e-4)


def test_fused_step_is_exact(tmp_path, tiny_untied, alpaca_file):
    """Stepping the matrices inside backward gives the same run as stepping them after it."""
    no_clip = {"max_grad_norm": 0.0}
    plain = run(tmp_path, tiny_untied, alpaca_file, "plain", training=no_clip)
    fused = run(tmp_path, tiny_untied, alpaca_file, "fused", memory={"fused_step": True}, training=no_clip)
    assert fused.lean.fused_step and fused.trainer.fused_step is not None
    assert losses(fused) == pytest.approx(losses(plain), rel=1e-6, abs=1e-6)
    a = lean.active_weight(plain.model.get_output_embeddings())
    b = lean.active_weight(fused.model.get_output_embeddings())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The main optimizer never stepped the matrices: their state lives in the fused optimizers.
    assert all(len(plain.trainer.optimizer.state[p]) > 0 for p in lean.trained_matrix_parameters(plain.model))
    assert all(len(fused.trainer.optimizer.state[p]) == 0 for p in lean.trained_matrix_parameters(fused.model))


def test_fused_step_falls_back_with_clipping_and_says_so(tmp_path, tiny_untied, alpaca_file):
    events = []
    d = plan_dict(
        tiny_untied,
        alpaca_file,
        tmp_path / "run",
        embeddings=FULL,
        memory={"fused_step": True},
        training={"max_steps": 1},
    )
    job = TrainingJob(plan_from_dict(d), sinks=[events.append])
    job.run()
    assert not job.lean.fused_step and job.trainer.fused_step is None
    assert any("fused_step is off" in getattr(e, "message", "") for e in events)


def test_eight_bit_states_for_both_matrices(tmp_path, tiny_llama3_vocab, alpaca_file):
    """8-bit states for the embedding too (the Trainer's rule keeps it 32-bit), on a 128k vocabulary."""
    job = run(
        tmp_path, tiny_llama3_vocab, alpaca_file, "run", memory={"matrix_states": "8bit"}, training={"max_steps": 1}
    )
    opt = job.trainer.optimizer
    for p in lean.trained_matrix_parameters(job.model):
        assert p.shape[0] == 128_256
        assert opt.state[p]["state1"].dtype == torch.uint8
    stock = run(
        tmp_path,
        tiny_llama3_vocab,
        alpaca_file,
        "stock",
        memory={**STOCK},
        training={"max_steps": 1, "optimizer": "adamw_8bit"},
    )
    emb = lean.active_weight(stock.model.get_input_embeddings())
    assert stock.trainer.optimizer.state[emb]["state1"].dtype == torch.float32  # the Trainer's rule


def test_no_upcast_under_4bit_and_fp32_master(tmp_path, tiny_untied, alpaca_file):
    from transformers import AutoModelForCausalLM

    from headtune.core.embeddings.setup import resolve_embeddings
    from headtune.core.training.adapters import build_peft_model

    d = plan_dict(
        tiny_untied,
        alpaca_file,
        tmp_path / "x",
        embeddings=FULL,
        model={"name_or_path": str(tiny_untied), "quantization": "4bit", "dtype": "bfloat16"},
    )

    def build(**memory):
        from headtune.core.model.sources import load_model, resolve_source

        p = plan_from_dict({**d, "memory": memory})
        model = load_model(resolve_source(str(tiny_untied)), p.model, "cpu")
        return build_peft_model(model, p, resolve_embeddings(model, p.embeddings, []))

    def dtypes(m):
        emb, head = m.get_input_embeddings(), m.get_output_embeddings()
        return (
            emb.original_module.weight.dtype,
            lean.active_weight(emb).dtype,
            head.original_module.weight.dtype,
            lean.active_weight(head).dtype,
        )

    assert dtypes(build(matrix_dtype="peft", frozen_copy=True)) == (torch.float32,) * 4  # PEFT's upcast
    assert dtypes(build(matrix_dtype="model", frozen_copy=True)) == (torch.bfloat16,) * 4
    assert dtypes(build(matrix_dtype="float32", frozen_copy=True)) == (torch.bfloat16, torch.float32) * 2
    del AutoModelForCausalLM


def test_memory_section_validation():
    from headtune.core.errors import PlanError
    from headtune.core.plan import Plan, help_for, with_overrides

    p = Plan()
    p.model.name_or_path, p.data.path = "m", "d.jsonl"
    with pytest.raises(PlanError, match="memory.loss_chunk_tokens"):
        with_overrides(p, ["memory.loss_chunk_tokens=4"])
    with pytest.raises(PlanError, match="memory.loss"):
        with_overrides(p, ["memory.loss=magic"])
    assert "logits" in help_for("memory.loss") and "clipping" in help_for("memory.fused_step")


def test_aliased_parameters_take_one_step_on_their_summed_gradient():
    """PEFT's LoRA on a tied head is a second Parameter over the embedding's factors, transposed."""
    from headtune.core.training.adapters import aliased_parameters, fold_aliased_gradients

    m = torch.nn.Module()
    m.first = torch.nn.Parameter(torch.randn(3, 5))
    m.alias = torch.nn.Parameter(m.first.data.t())
    a, b = torch.randn(3, 5), torch.randn(5, 3)
    ((m.first * a).sum() + (m.alias * b).sum()).backward()
    aliases = aliased_parameters(m)
    assert [(a.first, a.alias) for a in aliases] == [("first", "alias")]
    fold_aliased_gradients(m, aliases)
    torch.testing.assert_close(m.first.grad, a + b.t())
    assert m.alias.grad is None
    # A move that copies each parameter on its own parts them; restoring points the alias back.
    from headtune.core.training.adapters import restore_aliases

    m.alias.data = m.alias.data.clone()
    restore_aliases(m, aliases)
    assert m.alias.untyped_storage().data_ptr() == m.first.untyped_storage().data_ptr()
    # One optimizer step moves the shared values once, and both views see it.
    before = m.first.detach().clone()
    torch.optim.AdamW(m.parameters(), lr=0.1).step()
    assert not torch.equal(m.first, before)
    torch.testing.assert_close(m.alias, m.first.t())
