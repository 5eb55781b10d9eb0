"""bitsandbytes' two 4-bit CPU kernels: the generic one everywhere in training, the packed AVX-512
BF16 one only for chat, and only on layers whose shape it takes.

The tests that run the packed kernel need a CPU that has it (AMD Zen 4/5, Intel Xeon since Cooper
Lake); the rest force bitsandbytes' flag and check what Headtune decides before any native kernel
runs, so they run on every CPU.
"""

from __future__ import annotations

import pytest
import torch

from headtune.core.model import cpu4bit
from headtune.core.model.sources import load_model, resolve_source
from headtune.core.plan import ModelSpec, plan_from_dict
from headtune.core.testing import build_model, plan_dict
from headtune.core.training.job import TrainingJob

needs_packed = pytest.mark.skipif(
    not cpu4bit.packed_kernel_available(),
    reason="this CPU has no AVX-512 BF16, so bitsandbytes has no packed 4-bit kernel",
)


def linear4bit(in_features: int, out_features: int, seed: int = 0):
    import bitsandbytes as bnb

    torch.manual_seed(seed)
    w = torch.randn(out_features, in_features)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True)
    return layer.to("cpu")  # quantises


def four_bit(folder, dtype="float32"):
    return load_model(
        resolve_source(str(folder)), ModelSpec(name_or_path=str(folder), quantization="4bit", dtype=dtype), "cpu"
    )


@pytest.mark.parametrize(
    "shape,ok", [((128, 64), True), ((64, 32), True), ((32, 32), False), ((64, 48), False), ((96, 64), False)]
)
def test_packable_shapes(shape, ok):
    assert cpu4bit.packable(linear4bit(*shape)) is ok


def test_allow_packed_only_where_the_kernel_exists_and_the_shape_fits(monkeypatch):
    layers = torch.nn.Sequential(linear4bit(128, 64), linear4bit(32, 32))
    monkeypatch.setattr(cpu4bit, "packed_kernel_available", lambda: True)  # as on an AVX-512 BF16 CPU
    assert cpu4bit.allow_packed(layers) == 1
    assert [m.support_avx512bf16_for_cpu for m in layers] == [True, False]
    assert cpu4bit.allow_packed(layers, False) == 0
    assert [m.support_avx512bf16_for_cpu for m in layers] == [False, False]
    monkeypatch.setattr(cpu4bit, "packed_kernel_available", lambda: False)  # AVX2, ARM
    assert cpu4bit.allow_packed(layers) == 0
    assert [m.support_avx512bf16_for_cpu for m in layers] == [False, False]


def test_every_4bit_model_loads_on_the_generic_kernel(tiny_untied):
    model = four_bit(tiny_untied)
    layers = cpu4bit._linear4bit_modules(model)
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 17]]))
    assert cpu4bit.packed_layers(model) == 0


@needs_packed
def test_packed_evaluation_would_cut_gradients_and_headtune_keeps_them():
    """What the packed kernel does to training (no backward: the input gets no gradient) and that
    the generic kernel, which Headtune trains on, passes the same gradient before and after an
    evaluation."""
    x = torch.randn(4, 128, dtype=torch.bfloat16, requires_grad=True)

    def grad_after_eval(layer):
        layer.eval()
        with torch.no_grad():
            layer(x.detach())
        layer.train()
        x.grad = None
        layer(x).float().sum().backward()
        return x.grad

    packed = linear4bit(128, 64)
    cpu4bit.allow_packed(packed)
    with pytest.warns(UserWarning, match="autograd kernel was not registered"):
        assert grad_after_eval(packed) is None
    generic = linear4bit(128, 64)
    cpu4bit.allow_packed(generic, False)
    reference = linear4bit(128, 64)
    reference(x).float().sum().backward()
    expected, x.grad = x.grad.clone(), None
    torch.testing.assert_close(grad_after_eval(generic), expected, rtol=0, atol=0)


@needs_packed
def test_unpackable_layers_fall_back_instead_of_crashing(tmp_path, tokenizer_dir):
    """Hidden size 32: rows shorter than a quantisation block, which the packed kernel cannot take."""
    folder = build_model(tmp_path / "narrow", tokenizer_dir, vocab_size=512, tied=False, hidden=32)
    model = four_bit(folder, "bfloat16")
    assert cpu4bit.allow_packed(model) == sum(cpu4bit.packable(m) for m in cpu4bit._linear4bit_modules(model))
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 17]]))


@needs_packed
def test_chat_takes_the_packed_kernel_on_bfloat16(tiny_untied, alpaca_file, tmp_path):
    from headtune.core.tools.chat import ChatPair

    d = plan_dict(
        tiny_untied,
        alpaca_file,
        tmp_path / "run",
        model={"name_or_path": str(tiny_untied), "quantization": "4bit", "dtype": "bfloat16"},
        training={"max_steps": 1, "eval_every": 0, "save_every": 0},
    )
    TrainingJob(plan_from_dict(d)).run()
    pair = ChatPair(tmp_path / "run", device="cpu")
    answer = "".join(pair.stream([{"role": "user", "content": "Name colour number 3."}], max_new_tokens=4))
    assert isinstance(answer, str) and cpu4bit.packed_layers(pair.model) > 0


def test_evaluation_between_steps_leaves_4bit_training_unchanged(tiny_untied, alpaca_file, tmp_path):
    """On every CPU (the packed path included) evaluations between steps do not change the losses."""

    def losses(tag, eval_every):
        d = plan_dict(
            tiny_untied,
            alpaca_file,
            tmp_path / tag,
            model={"name_or_path": str(tiny_untied), "quantization": "4bit", "dtype": "float32"},
            training={"max_steps": 3, "eval_every": eval_every, "save_every": 0},
        )
        job = TrainingJob(plan_from_dict(d))
        job.run()
        assert cpu4bit.packed_layers(job.model) == 0
        return [h["loss"] for h in job.trainer.state.log_history if "loss" in h]

    assert losses("with-eval", 1) == losses("no-eval", 0)
