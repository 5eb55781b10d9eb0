"""Try a run: the same prompt answered by the base model and by the fine-tuned one.

One model is loaded: the run's adapter on its base. The base model's answer is generated with
the adapter switched off (PEFT's ``disable_adapter``), so trying a run costs one model's memory.
Generation is a plain token loop with a KV cache, so callers can stream tokens, interleave the
two answers, and stop between tokens. Greedy by default: the comparison is the same every time.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


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
        ids = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        return ids.to(self.device)

    def stream(
        self,
        messages: list[dict],
        tuned: bool = True,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece (greedy when ``temperature`` is 0)."""
        import torch

        ids = self.prompt_ids(messages)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        cache, new, shown = None, [], ""
        for _ in range(max_new_tokens):
            with torch.no_grad(), contextlib.nullcontext() if tuned else self.model.disable_adapter():
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
                yield text[len(shown) :]
                shown = text
            ids = torch.tensor([[token]], device=self.device)
        text = self.tokenizer.decode(new, skip_special_tokens=False)
        if len(text) > len(shown):
            yield text[len(shown) :]

    def answer(self, messages: list[dict], tuned: bool = True, **kw) -> str:
        return "".join(self.stream(messages, tuned=tuned, **kw))


def serve_json_lines(load_pair, lines: Iterable[str], write: Callable[[dict], None], tuned_only: bool = False) -> None:
    """``headtune chat --json-lines``: answer JSON requests read from ``lines`` until they end.

    ``load_pair()`` loads the model once (``{"type": "loaded"}`` follows); each request
    ``{"messages": [...], "max_new_tokens": N, "temperature": T}`` is answered by the base and the
    fine-tuned model alternately, token by token (``{"type": "piece", "tuned": bool, "text": s}``),
    then ``{"type": "answered", "stopped": bool}``. ``{"stop": true}`` ends the answer being
    written (or the next one) after the current token. Requests are read on a thread, so a stop
    arrives while an answer streams.
    """
    requests: queue.Queue = queue.Queue()
    stop_upto = [0]  # every request numbered up to this one is to stop

    def read() -> None:
        n = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError:
                continue  # not a request; the driving program only writes JSON
            if request.get("stop"):
                stop_upto[0] = n
            else:
                n += 1
                requests.put((n, request))
        requests.put(None)

    threading.Thread(target=read, daemon=True).start()
    pair = load_pair()
    write({"type": "loaded"})
    sides = (True,) if tuned_only else (False, True)
    while (item := requests.get()) is not None:
        n, request = item
        streams = {
            tuned: pair.stream(
                request["messages"],
                tuned=tuned,
                max_new_tokens=int(request.get("max_new_tokens", 128)),
                temperature=float(request.get("temperature", 0.0)),
            )
            for tuned in sides
        }
        while streams and stop_upto[0] < n:
            for tuned in list(streams):
                try:
                    write({"type": "piece", "tuned": tuned, "text": next(streams[tuned])})
                except StopIteration:
                    del streams[tuned]
                if stop_upto[0] >= n:
                    break
        write({"type": "answered", "stopped": bool(streams)})
