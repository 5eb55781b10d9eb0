"""Tiny local models, a real tokenizer, datasets and plans, for the tests and the benchmarks.

Everything is built on the spot (no hub): a byte-level BPE tokenizer trained on a few words with
ChatML special tokens, small Llama models tied or untied, JSON Lines files and plan mappings.
Heavy libraries are imported inside the functions."""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3-8B's config.json, the numbers the memory estimate reads (no weights needed).
LLAMA3_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "model_type": "llama",
    "max_position_embeddings": 8192,
}

WORDS = (
    "the a model learns to answer short questions about colours numbers animals and places with one "
    "clear sentence red blue green cat dog bird one two three four five paris rome tokyo river hill"
).split()

ALPACA_ROWS = [
    {
        "instruction": f"Name colour number {i}.",
        "input": "" if i % 3 else "Be brief.",
        "output": f"Colour {i} is {WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}.",
    }
    for i in range(40)
]

# Preference pairs: the chosen reply answers in a full sentence, the rejected one in a bare word.
PREFERENCE_ROWS = [
    {
        "prompt": f"Name colour number {i}.",
        "chosen": f"Colour {i} is {WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}.",
        "rejected": f"{WORDS[(i * 3) % len(WORDS)]}",
    }
    for i in range(24)
]


def build_tokenizer(folder: Path) -> Path:
    """A real byte-level BPE tokenizer (trained here) with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [" ".join(WORDS)] * 5 + [json.dumps(r) for r in ALPACA_ROWS]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return folder


def llama_config(vocab_size: int, tied: bool, hidden: int = 64, layers: int = 2, **geometry):
    """The ``LlamaConfig`` of a tiny test Llama (``geometry`` overrides other fields)."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaConfig(**{**fields, **geometry})


def build_model(
    folder: Path,
    tokenizer_dir: Path,
    vocab_size: int,
    tied: bool,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    weights: bool = True,
    **geometry,
) -> Path:
    """A tiny Llama. The default width keeps every linear layer within what all of bitsandbytes'
    4-bit CPU kernels take (in features a multiple of 64, out features of 32); ``geometry``
    overrides other ``LlamaConfig`` fields (e.g. ``intermediate_size``, ``num_attention_heads``).
    Without ``weights`` only its config and tokenizer are written (enough for the estimate)."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(vocab_size, tied, hidden, layers, **geometry)
    if not weights:
        config.save_pretrained(folder)
    elif vocab_size * hidden > 10**8:  # a wide model is made in bf16 directly: no fp32 copy in RAM
        torch.manual_seed(seed)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            LlamaForCausalLM(config).save_pretrained(folder)
        finally:
            torch.set_default_dtype(default)
    else:
        torch.manual_seed(seed)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)  # type: ignore[arg-type]
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def write_jsonl(path: Path, rows, raw_lines: list[str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows] + (raw_lines or [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plan_dict(model_path: Path, data_path: Path, out: Path, **sections) -> dict:
    """A small fast plan; ``sections`` update whole sections, e.g. training={"max_steps": 3}."""
    d: dict[str, dict] = {
        "model": {"name_or_path": str(model_path), "dtype": "float32"},
        "data": {"path": str(data_path), "max_seq_len": 64, "val_fraction": 0.1},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "batch_size": 2,
            "max_steps": 3,
            "learning_rate": 1e-2,
            "eval_every": 0,
            "save_every": 0,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
        },
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        d.setdefault(key, {}).update(value)
    return d


def small_report(*checks):
    """A system-check report with the given checks and nothing measured (for tests of how the
    window shows one)."""
    from headtune.core.tools import doctor

    return doctor.Report(
        versions={"headtune": "0"},
        platform="x",
        torch_build="cpu",
        gpus=[],
        driver=None,
        cuda_driver=None,
        device="cpu",
        ram_total_bytes=1,
        ram_available_bytes=1,
        output_dir=".",
        disk_free_bytes=1,
        disk_total_bytes=1,
        checks=list(checks),
    )
