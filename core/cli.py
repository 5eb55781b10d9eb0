"""The ``headtune`` command.

Exit codes: 0 success (also a run stopped on request), 2 bad input (plan, data, model), 1 a
failure during the run. Errors are one paragraph on stderr; ``--debug`` adds the traceback.
Heavy libraries are imported inside the sub-commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback

from .errors import HeadtuneError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Set by `headtune train`'s own launcher in the processes it starts: the launcher reads stdin
# and signals, and learns each process's exit code from this folder.
SUPERVISED_ENV = "HEADTUNE_LAUNCHER_DIR"


def _rank() -> int:
    """This process's rank under a distributed launcher (0 otherwise): only rank 0 prints."""
    return int(os.environ.get("RANK", "0"))


def _plan_keys_help() -> str:
    from .plan import all_keys, choices_for, help_for

    lines = ["plan keys for --set (values are parsed as YAML):"]
    for key in all_keys():
        if key == "schema_version":
            continue
        choices = choices_for(key)
        extra = f" [{' | '.join(choices)}]" if choices else ""
        lines.append(f"  {key}{extra}\n      {help_for(key)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="headtune",
        formatter_class=fmt,
        description="Fine-tune open LLMs with LoRA/QLoRA, including the token embeddings and the LM head. "
        "Without a command, the window opens on the built-in demo plan.",
        epilog="Run `headtune COMMAND --help` for the options of a command.",
    )
    p.add_argument("--version", action="store_true", help="print the versions of Headtune and its libraries")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_gui,
        _add_train,
        _add_estimate,
        _add_inspect,
        _add_vocab,
        _add_doctor,
        _add_export,
        _add_chat,
        _add_download,
    ):
        command = add(sub, fmt)
        if add is not _add_gui:  # --debug also after the command (hidden: the top-level flag documents it)
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _add_gui(sub, fmt) -> argparse.ArgumentParser:
    g = sub.add_parser(
        "gui",
        help="open the window (optionally on a plan)",
        formatter_class=fmt,
        description="Open the Headtune window, optionally with a saved plan loaded.",
    )
    g.add_argument("plan", nargs="?", help="a plan YAML file to open")
    return g


def _add_train(sub, fmt) -> argparse.ArgumentParser:
    t = sub.add_parser(
        "train",
        help="run a plan (fine-tune) from the command line",
        formatter_class=fmt,
        description="Fine-tune a model as a YAML plan describes. Progress goes to stdout, one line "
        "per step; Ctrl+C (or SIGTERM) stops after the current step and saves a checkpoint and "
        "the adapter (press it twice to abort). One process at a time may write a run folder.",
        epilog=_plan_keys_help(),
    )
    t.add_argument("plan", nargs="?", help="the plan YAML file (omit with --demo or --resume)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a plan key, e.g. --set training.max_steps=20 (repeatable)",
    )
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest complete checkpoint (a checkpoint cut "
        "short by a crash is skipped and removed); only the step budget may change, with --set "
        "training.max_steps=N or training.epochs=N. A run that already finished its budget is left "
        "as it is",
    )
    t.add_argument(
        "--resume-fresh-optimizer",
        action="store_true",
        help="with --resume: continue from a checkpoint that lacks its optimizer, scheduler or "
        "random state, starting those fresh (the results then differ from an uninterrupted run); "
        "without it such a checkpoint is refused",
    )
    t.add_argument(
        "--demo",
        action="store_true",
        help="train the built-in demo plan (SmolLM2-135M-Instruct on the bundled dataset) into ./runs/demo-DATE-TIME",
    )
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.add_argument(
        "--events-json",
        action="store_true",
        help="for programs driving a run (the window does): print every event as one JSON line on "
        "stdout and nothing else there; a line 'stop' on stdin, or stdin closing, stops the "
        "run after the current step with a checkpoint",
    )
    return t


def _add_estimate(sub, fmt) -> argparse.ArgumentParser:
    es = sub.add_parser(
        "estimate",
        help="predict the memory a plan needs, and whether it fits",
        formatter_class=fmt,
        description="Predict the peak memory of a plan before any weights load: a breakdown by "
        "category (GiB), whether it fits the GPU (or this computer's RAM with "
        "--device cpu), and changes that make it fit. Reads only the model's config.",
        epilog="categories: weights_frozen, weights_trainable, gradients, optimizer_states, "
        "activations, logits_loss, transient (they sum to tensors_peak_bytes); the CUDA "
        "overhead and paged optimizer states are reported apart.",
    )
    es.add_argument("plan", nargs="?", help="the plan YAML file (or --demo)")
    es.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a plan key (repeatable), as for train",
    )
    es.add_argument("--demo", action="store_true", help="estimate the built-in demo plan")
    es.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="where the run will train (default: cuda when a GPU is present, else cpu)",
    )
    es.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        help="capacity to check against, e.g. 12GiB (default: the detected GPU's total memory, "
        "or this computer's RAM for cpu)",
    )
    es.add_argument(
        "--worst-case",
        action="store_true",
        help="estimate every batch at data.max_seq_len, without reading the data (by default the "
        "data's token lengths give the figure, when the data file and the model's tokenizer are here)",
    )
    es.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return es


def _add_inspect(sub, fmt) -> argparse.ArgumentParser:
    ins = sub.add_parser(
        "inspect",
        help="token health: untrained embedding/head rows, who uses them, template check",
        formatter_class=fmt,
        description="Find embedding (and untied LM-head) rows that look untrained: norms far below "
        "a typical row, or rows identical to others. Lists them with ids and strings, "
        "counts their use by the chat template and (with --data) the dataset, checks "
        "that replies end with the end-of-turn token, and says what to do. Reads the "
        "weights' two matrices directly; no model is built.",
    )
    ins.add_argument("model", help="hub id, model folder or .gguf file")
    ins.add_argument("--data", metavar="DATASET", help="a dataset file or hub id to count token use and check labels")
    ins.add_argument("--format", default="auto", help="the dataset's format (default: detect)")
    ins.add_argument("--chat-template", default="model", help="model, chatml, llama3, or a Jinja file")
    ins.add_argument("--max-seq-len", type=int, default=1024, help="for the truncation check (default 1024)")
    ins.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the plan's added tokens, counted as training adds them: embeddings.new_tokens=[...] or "
        "embeddings.vocab_tokens=[...] (repeatable)",
    )
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    return ins


def _add_vocab(sub, fmt) -> argparse.ArgumentParser:
    from .plan.schema import help_for

    voc = sub.add_parser(
        "vocab",
        help="propose new tokens from a dataset: the words its model's tokenizer splits most",
        formatter_class=fmt,
        description="Train a BPE on the dataset's trained text (replies, or raw text) and list the "
        "words and word parts the model's tokenizer splits into several pieces, best first by "
        "tokens saved: each with its count, its pieces and its share of the tokens saved, then "
        "the measured total (every text must decode back to itself). The list goes into a plan "
        "as embeddings.vocab_tokens (the last line is the --set for `headtune train`).",
    )
    voc.add_argument("data", help="a dataset file or hub id")
    voc.add_argument("--model", required=True, help="hub id, model folder or .gguf file (its tokenizer is used)")
    voc.add_argument("--format", default="auto", help="the dataset's format (default: detect)")
    voc.add_argument("--count", type=int, default=50, help=help_for("embeddings.vocab_count") + " (default 50)")
    voc.add_argument(
        "--min-share",
        type=float,
        default=0.001,
        help=help_for("embeddings.vocab_min_share").replace("%", "%%") + " (default 0.001)",
    )
    voc.add_argument("--exclude", action="append", default=[], metavar="TEXT", help="never propose this token (repeat)")
    voc.add_argument("--json", action="store_true", help="print one JSON object")
    return voc


def _add_doctor(sub, fmt) -> argparse.ArgumentParser:
    doc = sub.add_parser(
        "doctor",
        help="system check: GPU, drivers, bitsandbytes 4/8-bit, bf16, free RAM and disk",
        formatter_class=fmt,
        description="Check whether this computer can train: library versions, the GPU torch sees "
        "(name, total and free memory, compute capability, driver and CUDA versions), "
        "a real bitsandbytes 4-bit and 8-bit matmul and 8-bit optimizer step, bf16, "
        "free RAM and free disk in the output folder. Each problem comes with a fix. "
        "Exit code 1 when a check fails (a missing GPU is a warning, not a failure).",
    )
    doc.add_argument(
        "--output",
        default="runs",
        metavar="DIR",
        help="the folder runs are written to, whose free disk is checked (default: ./runs)",
    )
    doc.add_argument("--json", action="store_true", help="print one JSON object")
    return doc


def _add_export(sub, fmt) -> argparse.ArgumentParser:
    from .tools.export import DTYPES, FORMATS, GGUF_TYPES

    ex = sub.add_parser(
        "export",
        help="export a finished or stopped run (adapter, merged model, GGUF)",
        formatter_class=fmt,
        description="Export a run folder's result: the PEFT adapter, a merged model (the base in "
        "16-bit with the adapter and trained embeddings/head merged in), or a GGUF file "
        "for llama.cpp, Ollama and LM Studio (with an Ollama Modelfile). Every export "
        "has a model card (README.md) with the loss curve. The export is written to a "
        "temporary folder and renamed into place, so a failure leaves nothing behind.",
    )
    ex.add_argument("run", metavar="RUN_DIR", help="the run folder (the plan's output.dir)")
    ex.add_argument(
        "--format",
        required=True,
        choices=tuple(FORMATS),
        help="; ".join(f"{f.name}: {f.label}" for f in FORMATS.values()),
    )
    ex.add_argument("--out", required=True, metavar="PATH", help="the folder to create")
    ex.add_argument(
        "--dtype", choices=DTYPES, help="weights of the merged model (default bfloat16; float16 for --gguf-type f16)"
    )
    ex.add_argument("--gguf-type", choices=GGUF_TYPES, default="q8_0", help="GGUF weights (default q8_0)")
    ex.add_argument(
        "--overwrite", action="store_true", help="replace PATH if it exists (only once the new export is complete)"
    )
    ex.add_argument(
        "--progress-json",
        action="store_true",
        help="for programs driving an export (the window does): print progress and the result as JSON lines on stdout",
    )
    return ex


def _add_chat(sub, fmt) -> argparse.ArgumentParser:
    ch = sub.add_parser(
        "chat",
        help="chat with a run: the base model and the fine-tuned one side by side",
        formatter_class=fmt,
        description="Answer prompts with the run's base model and with the fine-tuned model, one "
        "after the other, tokens streaming. Type a prompt and press Enter; an empty "
        "line or Ctrl+D quits. Greedy decoding unless --temperature is given.",
    )
    ch.add_argument("run", metavar="RUN_DIR", help="the run folder")
    ch.add_argument("--prompt", action="append", default=[], help="answer this prompt and exit (repeatable)")
    ch.add_argument("--system", help="a system message for every prompt")
    ch.add_argument("--max-new-tokens", type=int, default=128)
    ch.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ch.add_argument("--tuned-only", action="store_true", help="answer with the fine-tuned model only")
    ch.add_argument(
        "--json-lines",
        action="store_true",
        help="for programs driving a chat (the window does): read one JSON request per stdin line, "
        '{"messages": [...], "max_new_tokens": N}, or {"stop": true} to end the current '
        "answer; print JSON events (loaded, piece, answered, failed) on stdout; the model stays "
        "loaded until stdin closes",
    )
    return ch


def _add_download(sub, fmt) -> argparse.ArgumentParser:
    dl = sub.add_parser(
        "download",
        help="download a hub model into the Hugging Face cache, with progress (training never does)",
        formatter_class=fmt,
        description="Download what training loads of a hub model (config, tokenizer, safetensors weights) "
        "into the Hugging Face cache, with a progress bar. It first checks that the hub can be reached, "
        "that the model is not gated for you (then it says how to accept the licence and log in) and that "
        "the disk has room. Ctrl+C pauses: the partial file is kept and the next download of the model "
        "continues it; --cancel deletes what a paused download left.",
    )
    dl.add_argument("model", help="the hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct")
    dl.add_argument("--revision", help="a branch, tag or commit (default: main)")
    dl.add_argument(
        "--cancel", action="store_true", help="delete the partial files a paused download of MODEL left, and exit"
    )
    dl.add_argument(
        "--progress-json",
        action="store_true",
        help="for programs driving a download (the window does): print the plan, progress and the result "
        "as JSON lines on stdout; a line 'pause' or 'cancel' on stdin stops (stdin closing pauses)",
    )
    return dl


def _print_event(event, quiet: bool) -> None:
    from . import events as ev

    if isinstance(event, ev.Step) and not quiet:
        gn = f" grad_norm {event.grad_norm:.3f}" if event.grad_norm is not None else ""
        rewards = (
            f"  reward_margin {event.reward_margin:+.4f}  reward_accuracy {event.reward_accuracy:.2f}"
            if event.reward_margin is not None and event.reward_accuracy is not None
            else ""
        )
        print(
            f"step {event.step}/{event.total_steps}  loss {event.loss:.4f}  lr {event.learning_rate:.2e}"
            f"{gn}{rewards}  {event.tokens_per_s:.0f} tok/s",
            flush=True,
        )
    elif isinstance(event, ev.Eval) and not quiet:
        acc = (
            f"  eval_reward_accuracy {event.eval_reward_accuracy:.2f}" if event.eval_reward_accuracy is not None else ""
        )
        print(f"eval  step {event.step}  eval_loss {event.eval_loss:.4f}{acc}", flush=True)
    elif isinstance(event, ev.Checkpoint) and not quiet:
        print(f"checkpoint saved: {event.path}", flush=True)
    elif isinstance(event, (ev.Log, ev.Started)) and not quiet:
        print(event.message, file=sys.stderr, flush=True)


def _print_json(event) -> None:
    print(json.dumps(event.to_dict(), allow_nan=True), flush=True)


def _stop_on_stdin(job) -> None:
    """--events-json: a 'stop' line on stdin, or stdin closing (the driving program is gone), stops."""
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    job.request_stop()


def _cmd_train(args) -> int:
    from .training.job import TrainingJob, resume_plan

    if args.resume:
        if args.plan or args.demo:
            raise _usage("--resume takes the run folder only; the plan is the one saved in it.")
        plan = resume_plan(args.resume, args.overrides)
    else:
        if args.resume_fresh_optimizer:
            raise _usage("--resume-fresh-optimizer goes with --resume RUN_DIR.")
        plan = _plan_from_args(args, "give a plan file, --demo, or --resume RUN_DIR.")
    options = dict(resume=bool(args.resume), resume_fresh_state=args.resume_fresh_optimizer)
    if "WORLD_SIZE" not in os.environ:
        from .tools.launch import launch_if_wanted

        code = launch_if_wanted(plan, args.argv, events_json=args.events_json)
        if code is not None:
            return code
    supervised = SUPERVISED_ENV in os.environ or _rank() != 0  # another process reads stdin

    if args.events_json:
        # The driving program decides when to stop (stdin); a Ctrl+C meant for it (same terminal,
        # same process group) must not kill the run without its checkpoint. SIGTERM (logout, a
        # service or container stopping) stops like the stop line.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        job = TrainingJob(plan, sinks=[_print_json], **options)
        signal.signal(signal.SIGTERM, lambda signum, frame: job.request_stop())
        if not supervised:
            threading.Thread(target=_stop_on_stdin, args=(job,), daemon=True).start()
        job.run()
        return EXIT_OK
    job = TrainingJob(plan, sinks=[lambda e: _print_event(e, args.quiet)], **options)
    presses: list[float] = []

    def on_sigint(signum, frame):
        # SIGTERM (logout, systemd, a container stopping) is handled like Ctrl+C. Under torchrun
        # by hand, one Ctrl+C reaches a process twice (from the terminal, and forwarded by
        # torchrun): signals within a second of the first are the same press.
        now = time.time()
        if presses and "LOCAL_RANK" in os.environ and now - presses[0] < 1.0:
            return
        presses.append(now)
        if len(presses) > 1:
            raise KeyboardInterrupt
        if _rank() != 0:
            job.request_stop()
            return
        print(
            "\nStopping after this step (a checkpoint and the adapter are saved). Press Ctrl+C again to "
            "abort without saving.",
            file=sys.stderr,
            flush=True,
        )
        job.request_stop()

    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = job.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    from . import events as ev

    assert isinstance(result, (ev.Stopped, ev.Finished))
    if _rank() != 0:
        return EXIT_OK
    if job.already_finished:
        print(
            f"Nothing to do: the run already finished {result.step} steps and its adapter is unchanged "
            f"({result.adapter_path}). To train further, resume with a larger budget: --set "
            "training.max_steps=N."
        )
    elif isinstance(result, ev.Stopped) and not result.adapter_path:
        print("Stopped before training started; nothing was written.")
    elif isinstance(result, ev.Stopped):
        print(
            f"Stopped at step {result.step}. Adapter: {result.adapter_path or '(none)'}. Resume with "
            f"`headtune train --resume {plan.output.dir}`."
        )
    else:
        losses = f" train loss {result.train_loss:.4f}" if result.train_loss is not None else ""
        if result.eval_loss is not None:
            losses += f", eval loss {result.eval_loss:.4f}"
        print(f"Finished {result.step} steps{':' if losses else ''}{losses}. Adapter: {result.adapter_path}")
    return EXIT_OK


class _UsageError(HeadtuneError):
    exit_code = EXIT_BAD_INPUT


def _usage(msg: str) -> _UsageError:
    return _UsageError(msg)


def _plan_from_args(args, missing: str):
    """The plan named by ``PLAN`` or ``--demo`` (exactly one), with ``--set`` overrides."""
    from .plan import load_plan
    from .tools.demo import demo_plan

    if args.plan and args.demo:
        raise _usage("give either a plan file or --demo, not both.")
    if args.demo:
        return demo_plan(args.overrides)
    if args.plan:
        return load_plan(args.plan, args.overrides)
    raise _usage(missing)


def _cmd_inspect(args) -> int:
    from .plan import plan_from_dict
    from .plan.loading import apply_overrides
    from .tools.health import inspect_model

    tokens_keys = ("embeddings.new_tokens", "embeddings.vocab_tokens")
    for o in args.overrides:
        if o.split("=", 1)[0].strip() not in tokens_keys:
            raise _usage(f"--set {o}: inspect takes only {' and '.join(tokens_keys)}.")
    data = {"format": args.format, "chat_template": args.chat_template, "max_seq_len": args.max_seq_len}
    # Validated like a plan's data and embeddings sections (format and template names, length range).
    plan = plan_from_dict(apply_overrides({"data": {"path": args.data or "", **data}}, args.overrides), check=False)
    spec = plan.data if args.data else None
    if spec is not None and spec.max_seq_len < 16:
        raise _usage("--max-seq-len must be at least 16.")
    e = plan.embeddings
    r = inspect_model(args.model, spec, e.new_tokens, e.vocab_tokens)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return EXIT_OK
    print(f"{r.model}: vocabulary {r.vocab:,}, embeddings and head {'tied' if r.tied else 'untied'}")
    print(f"{len(r.flagged)} rows look untrained" + (":" if r.flagged else "."))
    for row in r.flagged[:50]:
        uses = []
        if r.template_counts.get(row.id):
            uses.append(f"template x{r.template_counts[row.id]}")
        if r.data_counts.get(row.id):
            uses.append(f"data x{r.data_counts[row.id]} ({r.data_trained_counts.get(row.id, 0)} trained)")
        print(
            f"  {row.id:>7}  {row.token!r:28} {row.matrix:19} {'; '.join(row.reasons)}"
            + (f"  [used: {', '.join(uses)}]" if uses else "")
        )
    if len(r.flagged) > 50:
        print(f"  … and {len(r.flagged) - 50} more (--json lists all)")
    if r.new_tokens:
        print(f"{len(r.new_tokens)} tokens added by the plan (their rows are started when training begins):")
        for nt in r.new_tokens[:50]:
            seen = f"  [data x{nt.data_uses} ({nt.data_trained_uses} trained)]" if spec is not None else ""
            print(f"  {nt.id:>7}  {nt.token!r:28} from {' + '.join(map(repr, nt.pieces)) or '(no pieces)'}{seen}")
    if r.template is not None:
        t = r.template
        share = t.trained_tokens / max(1, t.trained_tokens + t.masked_tokens)
        print(f"Template check on {t.rows_checked} rows: end token {t.end_token!r}; {share:.0%} of tokens trained.")
        for p in t.problems or ["no problems found"]:
            print(f"  - {p}")
    print(f"Verdict: {r.verdict}. {r.recommendation}")
    return EXIT_OK


def _cmd_vocab(args) -> int:
    from .model.sources import load_tokenizer, resolve_source
    from .plan import plan_from_dict
    from .tools.vocab import format_proposal, propose

    # Validated like a plan's keys (format name, count and share ranges).
    plan = plan_from_dict(
        {
            "data": {"path": args.data, "format": args.format},
            "embeddings": {"vocab_count": args.count, "vocab_min_share": args.min_share},
        },
        check=False,
    )
    from .plan.checks import range_problem
    from .plan.schema import range_for

    for flag, key in (("--count", "embeddings.vocab_count"), ("--min-share", "embeddings.vocab_min_share")):
        problem = range_problem(plan.get(key), range_for(key) or {})
        if problem:
            raise _usage(f"{flag} {problem}")
    tokenizer = load_tokenizer(resolve_source(args.model))
    say = (lambda _m: None) if args.json else (lambda m: print(m + "…", file=sys.stderr, flush=True))
    p = propose(plan.data, tokenizer, args.count, args.min_share, args.exclude, progress=say)
    if args.json:
        print(json.dumps(p.to_dict(), indent=2, ensure_ascii=False))
        return EXIT_OK
    print(format_proposal(p))
    if p.candidates:
        print(
            "\nUse them: --set "
            + json.dumps("embeddings.vocab_tokens=" + json.dumps(p.tokens, ensure_ascii=False), ensure_ascii=False)
        )
    return EXIT_OK


def _cmd_estimate(args) -> int:
    import json

    from . import estimate as memory
    from .tools.preview import data_lengths

    plan = _plan_from_args(args, "give a plan file or --demo.")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    capacity: int | None
    if args.gpu_memory:
        capacity, where = memory.parse_size(args.gpu_memory), f"{args.gpu_memory} given"
    else:
        capacity, where = memory.detect_capacity(device)
    data, no_data = (None, "--worst-case given") if args.worst_case else data_lengths(plan)
    est, shape = memory.plan_estimate(plan, device, capacity, data=data)
    gpus = {f"{size}GiB": memory.fit_verdict(est.total_bytes, size * memory.GiB) for size in memory.COMMON_GPUS_GIB}
    ram, ram_where = memory.detect_capacity("cpu")
    cpu_total = memory.estimate(plan, shape, "cpu", advise=False, data=data).total_bytes
    parallel = memory.per_device(plan, shape, est, _devices_for_estimate(plan, device))
    if args.json:
        print(
            json.dumps(
                {
                    **est.to_dict(),
                    "common_gpus": gpus,
                    "per_device": parallel.to_dict(),
                    "cpu_training": {
                        "total_bytes": cpu_total,
                        "ram_bytes": ram,
                        "fit": memory.fit_verdict(cpu_total, ram) if ram else None,
                    },
                },
                indent=2,
            )
        )
        return EXIT_OK
    g = memory.gib
    print(
        f"Memory estimate for {plan.model.name_or_path} on {device}: {shape.total_params / 1e9:.2f} B parameters, "
        f"vocabulary {shape.vocab:,}, {'tied' if shape.tied else 'untied'} embeddings; "
        f"{est.trainable_params:,} trainable."
    )
    print(f"  {'category':<22}{'GiB':>8}")
    for name in memory.CATEGORIES:
        print(f"  {name:<22}{g(est.breakdown[name]):8.2f}")
    print(f"  {'tensors at the peak':<22}{g(est.tensors_peak_bytes):8.2f}   (phase: {est.peak_phase})")
    if est.overhead_bytes:
        print(f"  {'CUDA overhead':<22}{g(est.overhead_bytes):8.2f}   (context, workspaces, allocator slack)")
    print(f"  {'total':<22}{g(est.total_bytes):8.2f}")
    _print_data_fit(est, no_data)
    if est.paged_optimizer_states_bytes:
        print(
            f"  {'paged optimizer states':<22}{g(est.paged_optimizer_states_bytes):8.2f}   (pageable to CPU "
            "memory, outside the total)"
        )
    if not capacity:
        print(f"No capacity to check against: {where}. Give one with --gpu-memory.")
    if capacity:
        verdict = {"fits": "fits", "tight": "fits, but tightly (within 10%)", "no": "does NOT fit"}[est.fit or "no"]
        print(f"Capacity {g(capacity):.2f} GiB ({where}): {verdict}.")
        for i, adv in enumerate(est.advice[:6], 1):
            change = ", ".join(f"{k}={v}" for k, v in adv.set.items())
            mark = "fits" if adv.total_bytes <= capacity else "still too big"
            print(f"  {i}. {change}: {g(adv.total_bytes):.2f} GiB ({mark}) - {adv.why}")
    t = plan.training
    ddp_runs = t.sharding != "fsdp"
    if parallel.devices > 1:
        print(
            f"On {parallel.devices} devices (training.devices): global batch {parallel.global_batch} "
            f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} x {parallel.devices}), up to "
            f"{parallel.tokens_per_step:,} tokens per step. Per device: {g(parallel.ddp_total_bytes):.2f} GiB "
            f"data parallel (DDP{', what runs' if ddp_runs else ''}; its gradient buckets "
            f"{g(parallel.ddp_buckets_bytes):.2f} GiB included); {g(parallel.fsdp_total_bytes):.2f} GiB fully "
            f"sharded (FSDP, training.sharding: fsdp{'' if ddp_runs else ', what runs'})."
        )
    else:
        print(f"Global batch {parallel.global_batch} (batch_size {t.batch_size} x grad_accum {t.grad_accum}).")
    sizes = [f"{size.replace('GiB', ' GiB')} {verdict}" for size, verdict in gpus.items()]
    print(
        "Common GPUs: " + ", ".join(sizes) + f"; CPU training in {ram_where}: "
        f"{memory.fit_verdict(cpu_total, ram) if ram else 'unknown'}."
    )
    return EXIT_OK


def _print_data_fit(est, no_data: str) -> None:
    """The data's figure beside the worst case, the long examples that set the peak, and the
    memory-saving defaults at work (``headtune estimate``)."""
    from .estimate import gib

    d = est.data
    if d is None:
        print(f"Every batch estimated at data.max_seq_len (worst case): {no_data}.")
    elif d.packed:
        print("Packed data: every sequence is up to data.max_seq_len, so this is also the worst case.")
    else:
        print(
            f"For this data ({d.examples:,} examples; the longest batch {d.seq_len:,} tokens a row, the most "
            f"labelled tokens in a batch {d.loss_tokens:,}): "
            f"{gib(est.total_bytes):.2f} GiB; worst case at data.max_seq_len {d.max_seq_len:,}: "
            f"{gib(d.worst_case_bytes):.2f} GiB."
        )
        if d.cut_at is not None and d.cut_bytes is not None:
            print(
                f"  {d.cut_examples} of {d.examples:,} examples are longer than {d.cut_at:,} tokens and set "
                f"the peak: data.max_seq_len={d.cut_at} would give {gib(d.cut_bytes):.2f} GiB (cutting them)."
            )
    if est.saved_by_defaults:
        print(
            "Memory-saving defaults at work: "
            + "; ".join(f"{x['label']} ({x['key']}) saves {gib(x['bytes']):.2f} GiB" for x in est.saved_by_defaults)
            + "."
        )


def _devices_for_estimate(plan, device: str) -> int:
    """The processes the plan asks for (training.devices; 0 = every GPU here, 1 on the CPU)."""
    if plan.training.devices:
        return plan.training.devices
    if device == "cpu":
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def _cmd_export(args) -> int:
    from .tools.export import export_run, result_json

    def progress(fraction: float, message: str) -> None:
        if args.progress_json:
            print(json.dumps({"progress": fraction, "message": message}), flush=True)
        else:
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    result = export_run(
        args.run,
        args.format,
        args.out,
        dtype=args.dtype,
        gguf_type=args.gguf_type,
        overwrite=args.overwrite,
        progress=progress,
    )
    if args.progress_json:
        print(result_json(result), flush=True)
        return EXIT_OK
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"Exported {result.format} to {result.path} in {result.seconds:.1f} s (peak RAM "
        f"{result.peak_rss_bytes / 2**30:.2f} GiB): {', '.join(result.files)}"
    )
    return EXIT_OK


def _cmd_chat(args) -> int:
    from .tools.chat import ChatPair

    if args.max_new_tokens < 1:
        raise _usage("--max-new-tokens must be at least 1.")
    if args.json_lines:
        from .tools.chat import serve_json_lines

        serve_json_lines(
            lambda: ChatPair(args.run),
            sys.stdin,
            lambda data: print(json.dumps(data), flush=True),
            tuned_only=args.tuned_only,
        )
        return EXIT_OK
    print("Loading the model and the adapter...", file=sys.stderr, flush=True)
    pair = ChatPair(args.run)
    sides = [(True, "fine-tuned")] if args.tuned_only else [(False, "base"), (True, "fine-tuned")]

    def answer(prompt: str) -> None:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}
        ]
        for tuned, label in sides:
            print(f"[{label}] ", end="", flush=True)
            for piece in pair.stream(
                messages, tuned=tuned, max_new_tokens=args.max_new_tokens, temperature=args.temperature
            ):
                print(piece, end="", flush=True)
            print(flush=True)

    if args.prompt:
        for prompt in args.prompt:
            answer(prompt)
        return EXIT_OK
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            break
        if not prompt.strip():
            break
        answer(prompt)
    return EXIT_OK


def _cmd_download(args) -> int:
    from .tools import download as dl

    if args.cancel:
        left = dl.partial_files(args.model)
        for path in left:
            path.unlink(missing_ok=True)
        print(f"Deleted {len(left)} partial file(s) of {args.model}." if left else f"No partial files of {args.model}.")
        return EXIT_OK
    control = dl.Control()
    if args.progress_json:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driving program stops it through stdin
        threading.Thread(target=_download_control_from_stdin, args=(control, args.model), daemon=True).start()

        def report_json(event) -> None:
            if isinstance(event, dl.DownloadPlan):
                data = {
                    "type": "download_started",
                    "repo_id": event.repo_id,
                    "commit": event.commit,
                    "total": event.total_bytes,
                    "files": [[f.name, f.size] for f in event.files],
                    "cache_dir": event.cache_dir,
                    "gated": event.gated,
                }
            else:
                data = event.to_dict()
            print(json.dumps(data), flush=True)

        result = dl.download(args.model, report_json, control, args.revision)
        control.finished = True
        print(json.dumps(result.to_dict()), flush=True)
        return EXIT_OK

    def on_sigint(signum, frame):
        if control.state is not None:
            raise KeyboardInterrupt
        control.request(dl.PAUSE)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = dl.download(args.model, _print_download_progress, control, args.revision)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(file=sys.stderr)
    if result.outcome == "paused":
        print(
            f"Paused {args.model} after {result.bytes / 1e9:.2f} GB; the partial file is kept. Run `headtune "
            f"download {args.model}` again to continue, or add --cancel to delete it."
        )
    else:
        print(f"Downloaded {args.model} ({result.total / 1e9:.2f} GB) in {result.seconds:.0f} s to {result.path}")
    return EXIT_OK


def _download_control_from_stdin(control, model: str) -> None:
    """--progress-json: 'pause' or 'cancel' lines (or JSON {"stop": ...}) on stdin; stdin closing
    pauses. A download stuck in a network read that does not stop within a few seconds is ended
    here (a pause keeps the partial file as written; a cancel deletes it)."""
    from .tools import download as dl

    how = dl.PAUSE
    for line in sys.stdin:
        text = line.strip()
        if text.startswith("{"):
            try:
                text = str(json.loads(text).get("stop", ""))
            except (ValueError, AttributeError):
                continue
        if text in (dl.PAUSE, dl.CANCEL):
            how = text
            break
    control.request(how)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if control.finished:
            return
        time.sleep(0.1)
    left = dl.partial_files(model)
    if how == dl.CANCEL:
        for path in left:
            path.unlink(missing_ok=True)
    outcome = "paused" if how == dl.PAUSE else "cancelled"
    partial = [str(p) for p in left] if how == dl.PAUSE else []
    data = {"type": "download_ended", "repo_id": model, "outcome": outcome, "partial_files": partial}
    print(json.dumps({**data, "path": "", "bytes": 0, "total": 0, "seconds": 0.0}), flush=True)
    os._exit(EXIT_OK)


def _print_download_progress(event) -> None:
    from .tools.download import DownloadPlan

    if isinstance(event, DownloadPlan):
        print(
            f"Downloading {event.repo_id} ({len(event.files)} files, {event.total_bytes / 1e9:.2f} GB) into "
            f"{event.cache_dir}. Ctrl+C pauses.",
            file=sys.stderr,
            flush=True,
        )
        return
    share = event.bytes / event.total if event.total else 1.0
    bar = "#" * int(share * 30)
    eta = f"{int(event.eta_s // 60)}:{int(event.eta_s % 60):02d}" if event.eta_s is not None else "--:--"
    name = event.file if len(event.file) <= 40 else "…" + event.file[-39:]
    print(
        f"\r[{bar:<30}] {share:4.0%} {event.bytes / 1e9:6.2f}/{event.total / 1e9:.2f} GB "
        f"{event.speed / 1e6:6.1f} MB/s ETA {eta}  {name:<40}",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _cmd_doctor(args) -> int:
    from .tools.doctor import run_checks

    report = run_checks(args.output)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    return EXIT_OK if report.ok else EXIT_FAILED


def _speaks_json(args) -> bool:
    """Whether a program reads this command's stdout as JSON (it then gets failures there too)."""
    return any(getattr(args, name, False) for name in ("events_json", "progress_json", "json", "json_lines"))


def _print_failure_json(message: str, error_type: str) -> None:
    """The last stdout line of a failed command in a JSON mode: the same ``failed`` event
    ``train --events-json`` writes, so a driving program needs no stderr scraping."""
    from . import events as ev

    _print_json(ev.Failed(message=message, error_type=error_type))


def quiet_libraries(transformers: bool = True) -> None:
    """Silence the libraries' warnings and progress bars (``transformers=False``: leave transformers
    unimported, for commands that never load a model)."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(peft|transformers|torch|bitsandbytes)")
    for name in ("transformers", "peft", "accelerate", "datasets", "huggingface_hub", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not transformers:
        return
    from transformers.utils import logging as hf_logging  # a dependency: always there

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    folder = os.environ.get(SUPERVISED_ENV)
    if folder:  # the launcher that started this process reads every rank's exit code here
        with open(os.path.join(folder, f"rank-{_rank()}.exit"), "w", encoding="utf-8") as f:
            f.write(str(code))
    return code


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    debug = bool(getattr(args, "debug", False))
    if args.version:
        from .tools.doctor import version_lines

        print("\n".join(version_lines()))
        return EXIT_OK
    if args.command in (None, "gui"):  # the window belongs to the `headtune` program (headtune.gui.launcher)
        print(
            "headtune: this command line runs sub-commands only; the window opens with `headtune` or `headtune gui`.",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if not debug:
        quiet_libraries(transformers=args.command != "download")
    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "estimate":
            return _cmd_estimate(args)
        if args.command == "inspect":
            return _cmd_inspect(args)
        if args.command == "vocab":
            return _cmd_vocab(args)
        if args.command == "doctor":
            return _cmd_doctor(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "chat":
            return _cmd_chat(args)
        if args.command == "download":
            return _cmd_download(args)
        print(f"headtune {args.command}: not available in this version of Headtune yet.", file=sys.stderr)
        return EXIT_FAILED
    except HeadtuneError as exc:
        if debug:
            traceback.print_exc()
        # Under a launcher every process refuses bad input alike; rank 0 says it once.
        if _rank() == 0 or exc.exit_code != EXIT_BAD_INPUT:
            print(f"headtune: {exc}" if _rank() == 0 else f"headtune (process {_rank()}): {exc}", file=sys.stderr)
        if _speaks_json(args) and _rank() == 0 and not getattr(exc, "reported", False):
            _print_failure_json(str(exc), type(exc).__name__)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `headtune estimate --json | head`): nothing left to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("headtune: aborted.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: keep the message short unless --debug
        if debug:
            traceback.print_exc()
        message = (
            f"unexpected error: {exc.__class__.__name__}: {exc}. Run again with --debug for details, and "
            "please report it."
        )
        print(f"headtune: {message}", file=sys.stderr)
        if _speaks_json(args) and _rank() == 0 and not getattr(exc, "reported", False):
            _print_failure_json(message[0].upper() + message[1:], type(exc).__name__)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
