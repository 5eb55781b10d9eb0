"""bitsandbytes' two 4-bit paths on the CPU, and when each is used.

On CPUs with AVX-512 BF16 (AMD Zen 4/5, Intel Xeon since Cooper Lake) a ``Linear4bit`` that runs
without gradients (evaluation, generation) repacks its weight in place into a layout for a faster
kernel, and keeps it packed. Two things follow, both checked by the tests:

- The repacking needs whole blocks: out features a multiple of 32 and in features a multiple of
  the quantisation block (64). Other shapes crash inside bitsandbytes.
- The packed kernel has no backward. A weight packed by an evaluation and then used in training
  passes no gradient to the layers below it (PyTorch only warns), so LoRA stops learning through
  every 4-bit layer. It also computes in bfloat16 with bfloat16 block scales, whatever the model's
  dtype, so its numbers differ from the generic kernel's.

So every model Headtune loads in 4-bit starts on the generic kernel (``allow_packed(model, False)``
in ``core.model.sources.load_model``): training, evaluation and reloading give the same numbers
on every CPU. Chat on a bfloat16 model, which only generates, opts into the packed kernel for the
layers whose shape fits (``allow_packed(model)``).

Elsewhere (AVX2-only CPUs, ARM, CUDA) the packed path does not exist and nothing here changes.
"""

from __future__ import annotations

import functools

PACK_BLOCK_N = 32  # bitsandbytes packs output rows in groups of this many

# The flag bitsandbytes' Linear4bit reads before packing (set per module at construction).
_FLAG = "support_avx512bf16_for_cpu"


@functools.lru_cache(maxsize=1)
def packed_kernel_available() -> bool:
    """Whether bitsandbytes has its packed AVX-512 BF16 CPU kernel on this machine."""
    try:
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())
    except Exception:  # bitsandbytes missing or its native library refusing to load: no packed path
        return False


def packable(module) -> bool:
    """Whether a ``Linear4bit``'s weight shape fits the packed layout."""
    state = getattr(module.weight, "quant_state", None)
    blocksize = getattr(state, "blocksize", 64) or 64
    return module.out_features % PACK_BLOCK_N == 0 and module.in_features % blocksize == 0


def _linear4bit_modules(model):
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def allow_packed(model, allowed: bool = True) -> int:
    """Let each 4-bit layer of ``model`` use the packed CPU kernel when ``allowed`` and its shape
    fits; otherwise keep the generic kernel. Returns how many layers may pack."""
    on = 0
    for m in _linear4bit_modules(model):
        ok = allowed and packed_kernel_available() and packable(m)
        setattr(m, _FLAG, ok)
        on += ok
    return on


def packed_layers(model) -> int:
    """How many 4-bit layers of ``model`` hold a packed weight now."""
    return sum(
        bool(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False))
        for m in _linear4bit_modules(model)
    )


def cpu_features() -> dict[str, bool | str]:
    """The CPU features that decide bitsandbytes' 4-bit CPU path: architecture, AVX2, AVX-512,
    AVX-512 BF16, AMX (read from /proc/cpuinfo on Linux, else from what torch detected)."""
    import platform

    arch = platform.machine().lower()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not flags:  # not Linux: torch's own reading of the CPU ("AVX2", "AVX512", ...)
        try:
            import torch

            cap = torch.backends.cpu.get_cpu_capability().lower()
        except Exception:
            cap = ""
        flags = {"avx2"} if cap.startswith("avx2") else ({"avx2", "avx512f"} if cap.startswith("avx512") else set())
    return {
        "arch": arch,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags or packed_kernel_available(),
        "amx": bool({"amx_bf16", "amx_tile"} & flags),
    }


def path_description() -> str:
    """Which bitsandbytes 4-bit CPU kernels Headtune uses on this machine, in one sentence."""
    if packed_kernel_available():
        return (
            "training, evaluation and reloading use bitsandbytes' generic 4-bit kernel; chat on bfloat16 models "
            "uses its packed AVX-512 BF16 kernel for layers whose shape fits"
        )
    return "bitsandbytes' generic 4-bit kernel for everything (this CPU has no packed AVX-512 BF16 path)"
