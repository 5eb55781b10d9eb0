"""``adapter``: the PEFT adapter (LoRA plus trained embedding/head modules or rows), the tokenizer
with the chat template used in training, and the plan. Small, and needs no merge."""

from __future__ import annotations

import shutil

from ...model.templates import training_template
from ...runfolder import RunFolder
from .base import ExportJob


class AdapterFormat:
    name = "adapter"
    label = "Adapter only (PEFT)"
    merges = False

    def default_dtype(self, gguf_type: str) -> str:
        return "bfloat16"

    def extra_disk_bytes(self, params: int, gguf_type: str) -> int:
        return 0

    def write(self, job: ExportJob) -> str:
        from transformers import AutoTokenizer

        job.report(0.1, "Copying the adapter")
        adapter_dir = RunFolder(job.run).adapter_dir
        for f in adapter_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, job.tmp / f.name)
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        tokenizer.chat_template = training_template(job.plan, tokenizer)
        tokenizer.save_pretrained(job.tmp)
        return "PEFT adapter; load it onto the base model with peft.PeftModel.from_pretrained"


FORMAT = AdapterFormat()
