"""Try a run: the same prompt answered by the base model and by the fine-tuned one.

One model is loaded: the run's adapter on its base. The base model's answer is generated with
the adapter switched off (PEFT's ``disable_adapter``), so trying a run costs one model's memory.
Generation is a plain token loop with a KV cache, so callers can stream tokens, interleave the
two answers, and stop between tokens. Greedy by default: the comparison is the same every time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


class ChatPair:
    """A run's base and fine-tuned model, for side-by-side answers."""

    def __init__(self, run_dir: str | Path, device: str | None = None):
        import torch

        from ..model.templates import end_of_turn_ids, training_template
        from ..runfolder import RunFolder
        from ..training.trained import load_trained
        run = RunFolder(run_dir).require_adapter().path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer, self.plan = load_trained(run, device=self.device)
        if self.plan.model.quantization == "4bit" and self.plan.model.dtype == "bfloat16":
            from ..model.cpu4bit import allow_packed
            allow_packed(self.model)  # generation only: the faster CPU kernel where layers fit (AVX-512 BF16)
        self.template = training_template(self.plan, self.tokenizer)
        self.stop_ids = set(end_of_turn_ids(self.tokenizer, self.template))
        self.run_dir = run

    def prompt_ids(self, messages: list[dict]):
        ids = self.tokenizer.apply_chat_template(messages, chat_template=self.template, add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)["input_ids"]
        return ids.to(self.device)

    def stream(self, messages: list[dict], tuned: bool = True, max_new_tokens: int = 128,
               temperature: float = 0.0, seed: int = 0) -> Iterator[str]:
        """Yield the answer's text piece by piece (greedy when ``temperature`` is 0)."""
        import torch
        ids = self.prompt_ids(messages)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        cache, new, shown = None, [], ""
        for _ in range(max_new_tokens):
            with torch.no_grad(), (contextlib.nullcontext() if tuned else self.model.disable_adapter()):
                out = self.model(input_ids=ids, cache=cache, use_cache=True)
            cache = out.cache
            logits = out.logits[0, -1].float().cpu()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=gen))
            else:
                token = int(logits.argmax())
            if token in self.stop_ids:
                break
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=False)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text[len(shown):]
                shown = text
            ids = torch.tensor([[token]], device=self.device)
        text = self.tokenizer.decode(new, skip_special_tokens=False)
        if len(text) > len(shown):
            yield text[len(shown):]

    def answer(self, messages: list[dict], tuned: bool = True, **kw) -> str:
        return "".join(self.stream(messages, tuned=tuned, **kw))
