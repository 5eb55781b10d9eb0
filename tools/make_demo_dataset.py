"""Writes resources/demo/demo_dataset.jsonl, the demo's instruction/response pairs.

The pairs were written for Headtune: a glossary of fine-tuning terms (hand-written answers,
each asked two ways) and small, exactly-answerable tasks (unit conversions, arithmetic,
spelling, formatting) whose answers follow one consistent style, so a short run visibly
lowers the validation loss. Deterministic: running it again gives the same file.

    python tools/make_demo_dataset.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

GLOSSARY = [
    (
        "LoRA",
        "LoRA (low-rank adaptation) freezes the model and trains two small matrices per layer whose product "
        "is added to the frozen weight. It trains well with a fraction of the memory of full fine-tuning.",
    ),
    (
        "QLoRA",
        "QLoRA is LoRA on top of a base model stored in 4-bit NF4. The frozen weights take about a quarter "
        "of their 16-bit size, so larger models fit on one consumer GPU.",
    ),
    (
        "a token embedding",
        "A token embedding is the row of the embedding matrix that turns a token id into the "
        "vector the model reads. Each token in the vocabulary has one row.",
    ),
    (
        "the LM head",
        "The LM head is the final linear layer that turns the last hidden state into one score per "
        "vocabulary token. Those scores become next-token probabilities.",
    ),
    (
        "tied embeddings",
        "With tied embeddings the input embedding matrix and the LM head share one weight, so "
        "training one trains the other. Small models such as SmolLM2 use this to save memory.",
    ),
    (
        "the learning rate",
        "The learning rate sets how far each optimizer step moves the weights. Too high and the "
        "loss jumps or diverges; too low and training barely moves.",
    ),
    (
        "gradient checkpointing",
        "Gradient checkpointing keeps only a few activations during the forward pass and "
        "recomputes the rest in backward. It saves much memory for about a third more compute.",
    ),
    (
        "gradient accumulation",
        "Gradient accumulation adds up gradients over several small batches before one "
        "optimizer step, giving the effect of a larger batch without its memory.",
    ),
    ("an epoch", "An epoch is one full pass over the training data."),
    (
        "the validation loss",
        "The validation loss is the loss on examples held out from training. If it rises "
        "while the training loss falls, the model is starting to overfit.",
    ),
    (
        "overfitting",
        "Overfitting is when a model memorises its training examples instead of learning what "
        "generalises. The validation loss rising is the usual sign.",
    ),
    (
        "a tokenizer",
        "A tokenizer splits text into tokens from a fixed vocabulary and maps each to an id. The "
        "model only ever sees those ids.",
    ),
    (
        "a special token",
        "A special token marks structure rather than text, such as the start of a turn or the "
        "end of a reply. Chat templates are built from them.",
    ),
    (
        "a chat template",
        "A chat template is the recipe that turns a list of messages into the exact text, with "
        "special tokens, that a chat model was trained on.",
    ),
    (
        "the EOS token",
        "The EOS (end of sequence) token tells the model to stop. A fine-tune that never shows it "
        "at the end of replies produces a model that keeps talking.",
    ),
    (
        "AdamW",
        "AdamW is the usual optimizer for language models. It keeps two running averages per trainable "
        "parameter, which is why optimizer state often costs more memory than the weights.",
    ),
    (
        "8-bit Adam",
        "8-bit Adam stores the optimizer's running averages in 8 bits with block-wise scaling, "
        "cutting optimizer memory by about four times with little change in results.",
    ),
    (
        "the LoRA rank",
        "The LoRA rank is the inner size of the two small matrices. A higher rank can learn more "
        "but uses more memory; 8 to 64 is typical.",
    ),
    (
        "LoRA alpha",
        "LoRA alpha scales the low-rank update by alpha divided by the rank. Setting alpha to twice "
        "the rank is a common starting point.",
    ),
    (
        "a warm-up",
        "A warm-up raises the learning rate from zero over the first steps, so early, noisy gradients "
        "do not push the weights too far.",
    ),
    (
        "a cosine schedule",
        "A cosine schedule lowers the learning rate along a half cosine from its peak to near "
        "zero by the end of training.",
    ),
    (
        "bfloat16",
        "bfloat16 is a 16-bit number format with the same range as 32-bit floats and less precision. "
        "It halves memory and rarely overflows during training.",
    ),
    (
        "NF4",
        "NF4 (4-bit NormalFloat) is a 4-bit format whose levels follow a normal distribution, which suits "
        "neural network weights. QLoRA stores the frozen model in it.",
    ),
    ("weight decay", "Weight decay gently pulls weights toward zero at each step, a simple guard against overfitting."),
    (
        "gradient clipping",
        "Gradient clipping rescales the gradients when their overall norm exceeds a limit, "
        "which keeps one bad batch from wrecking the weights.",
    ),
    (
        "the logits",
        "The logits are the raw scores the LM head gives every vocabulary token at every position. "
        "With a large vocabulary they are one of the biggest tensors in training.",
    ),
    (
        "an untrained token",
        "An untrained token has an embedding row that barely moved from its initial value, "
        "often a reserved or special token. Using it without training its row confuses the model.",
    ),
    (
        "packing",
        "Packing joins several short examples into one sequence of the maximum length, so less compute "
        "is spent on padding.",
    ),
    (
        "a checkpoint",
        "A checkpoint saves the trainable weights, the optimizer state and the step, so a stopped "
        "run can continue exactly where it left off.",
    ),
    (
        "an adapter",
        "An adapter is the small set of trained weights saved apart from the base model. Loading it "
        "on top of the base model gives the fine-tuned model.",
    ),
    (
        "merging an adapter",
        "Merging adds the adapter's update into the base weights, giving an ordinary model "
        "that runs without the adapter library.",
    ),
    (
        "GGUF",
        "GGUF is the single-file model format of llama.cpp, also used by Ollama and LM Studio, often with "
        "quantized weights.",
    ),
    (
        "VRAM",
        "VRAM is the memory on the graphics card. Weights, gradients, optimizer state and activations must "
        "all fit in it at the peak of a training step.",
    ),
    (
        "masking the prompt",
        "Masking the prompt sets the labels of prompt tokens to -100, so the loss is computed "
        "only on the reply the model should learn to write.",
    ),
    ("a batch", "A batch is the group of examples processed together in one forward and backward pass."),
    (
        "the sequence length",
        "The sequence length is the number of tokens in one example. Longer sequences use "
        "more activation memory, and attention cost grows with it.",
    ),
    (
        "perplexity",
        "Perplexity is the exponential of the average loss per token. Lower means the model is less "
        "surprised by the text.",
    ),
    (
        "fine-tuning",
        "Fine-tuning continues training a pretrained model on a smaller, focused dataset so it "
        "adopts a task, a style or a format.",
    ),
    (
        "a base model",
        "A base model is pretrained on raw text and continues text. An instruct model is a base "
        "model fine-tuned further to follow instructions and chat.",
    ),
    (
        "the trainable tokens mode",
        "The trainable tokens mode trains only selected rows of the embedding matrix, "
        "such as new or special tokens, and keeps every other row frozen.",
    ),
]
ASK = ["What is {}?", "Explain {} in two sentences."]

UNITS = [
    ("km", "miles", 0.621371),
    ("miles", "km", 1.609344),
    ("kg", "pounds", 2.204623),
    ("pounds", "kg", 0.453592),
    ("litres", "US gallons", 0.264172),
    ("inches", "cm", 2.54),
    ("metres", "feet", 3.28084),
    ("feet", "metres", 0.3048),
]
ITEMS = [
    ("box", "eggs", "holds"),
    ("crate", "bottles", "holds"),
    ("shelf", "books", "holds"),
    ("bag", "apples", "holds"),
    ("row", "seats", "has"),
    ("pack", "pencils", "has"),
]
WORDS = [
    "garden",
    "planet",
    "window",
    "silver",
    "orange",
    "rocket",
    "candle",
    "forest",
    "bridge",
    "pencil",
    "marble",
    "anchor",
    "button",
    "castle",
    "dragon",
    "falcon",
    "guitar",
    "harbor",
    "island",
    "jacket",
    "kettle",
    "lantern",
    "meadow",
    "nectar",
    "oyster",
    "parrot",
    "quartz",
    "ribbon",
    "saddle",
    "tunnel",
    "velvet",
    "walnut",
    "yogurt",
    "zipper",
    "banana",
    "cobalt",
    "dinner",
    "engine",
    "flower",
    "ginger",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def rows(rng: random.Random) -> list[dict]:
    out = []
    for term, answer in GLOSSARY:
        for ask in ASK:
            out.append({"instruction": ask.format(term), "input": "", "output": answer})
    for _ in range(60):
        src, dst, factor = rng.choice(UNITS)
        value = rng.randint(2, 250)
        out.append(
            {
                "instruction": f"Convert {value} {src} to {dst}.",
                "input": "",
                "output": f"{value} {src} is {value * factor:.2f} {dst} (1 {src} = {factor:g} {dst}).",
            }
        )
    for _ in range(60):
        holder, things, verb = rng.choice(ITEMS)
        per, count = rng.randint(2, 12), rng.randint(2, 15)
        out.append(
            {
                "instruction": f"A {holder} {verb} {per} {things}. How many {things} are in {count} {holder}s?",
                "input": "",
                "output": f"{count} × {per} = {count * per}, so there are {count * per} {things}.",
            }
        )
    for word in WORDS:
        out.append(
            {
                "instruction": "Reverse the letters of the word.",
                "input": word,
                "output": f"'{word}' reversed is '{word[::-1]}'.",
            }
        )
        vowels = sum(c in "aeiou" for c in word)
        out.append(
            {
                "instruction": f"How many vowels are in '{word}'?",
                "input": "",
                "output": f"'{word}' has {vowels} vowel{'s' if vowels != 1 else ''}: "
                f"{', '.join(c for c in word if c in 'aeiou')}.",
            }
        )
    for _ in range(40):
        y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        out.append(
            {
                "instruction": "Write this date in words.",
                "input": f"{y}-{m:02d}-{d:02d}",
                "output": f"{ordinal(d)} {MONTHS[m - 1]} {y}.",
            }
        )
    for _ in range(30):
        picked = rng.sample(WORDS, rng.randint(3, 6))
        out.append(
            {
                "instruction": "Sort these words alphabetically and join them with commas.",
                "input": " ".join(picked),
                "output": ", ".join(sorted(picked)) + ".",
            }
        )
    rng.shuffle(out)
    return out


def main() -> None:
    path = Path(__file__).resolve().parents[1] / "resources" / "demo" / "demo_dataset.jsonl"
    data = rows(random.Random(2026))
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    print(f"{len(data)} rows -> {path}")


if __name__ == "__main__":
    main()
