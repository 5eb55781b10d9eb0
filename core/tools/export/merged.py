"""``merged``: the base model in 16 or 32 bits with the adapter merged in, as sharded safetensors.

Also the tokenizer, the chat template used in training and a ``generation_config`` whose EOS ids
include the template's end-of-turn token. Tied models stay tied.
"""

from __future__ import annotations

from .base import ExportJob
from .merge import merge, save_merged


class MergedFormat:
    name = "merged"
    label = "Merged model (safetensors)"
    merges = True

    def default_dtype(self, gguf_type: str) -> str:
        return "bfloat16"

    def extra_disk_bytes(self, params: int, gguf_type: str) -> int:
        return 0

    def write(self, job: ExportJob) -> str:
        merged, tokenizer, job.plan = merge(job.run, job.dtype, job.report)
        job.report(0.6, "Writing safetensors shards")
        save_merged(merged, tokenizer, job.tmp)
        return f"{job.dtype} safetensors, adapter merged"


FORMAT = MergedFormat()
