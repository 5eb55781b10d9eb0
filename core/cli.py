"""The ``headtune`` command.

Exit codes: 0 success (also a run stopped on request), 2 bad input (plan, data, model), 1 a
failure during the run. Errors are one paragraph on stderr; ``--debug`` adds the traceback.
Heavy libraries are imported inside the sub-commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from . import __version__
from .errors import HeadtuneError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


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
        prog="headtune", formatter_class=fmt,
        description="Fine-tune open LLMs with LoRA/QLoRA, including the token embeddings and the LM head.",
        epilog="Run `headtune COMMAND --help` for the options of a command.")
    p.add_argument("--version", action="store_true", help="print the versions of Headtune and its libraries")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("gui", help="open the window (optionally on a plan)", formatter_class=fmt,
                       description="Open the Headtune window, optionally with a saved plan loaded.")
    g.add_argument("plan", nargs="?", help="a plan YAML file to open")

    t = sub.add_parser("train", help="run a plan (fine-tune) from the command line", formatter_class=fmt,
                       description="Fine-tune a model as a YAML plan describes. Progress goes to stdout, one line "
                                   "per step; Ctrl+C stops after the current step and saves a checkpoint and the "
                                   "adapter (press it twice to abort).",
                       epilog=_plan_keys_help())
    t.add_argument("plan", nargs="?", help="the plan YAML file (omit with --demo or --resume)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a plan key, e.g. --set training.max_steps=20 (repeatable)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint (only the step budget "
                        "may change, with --set training.max_steps=N or training.epochs=N)")
    t.add_argument("--demo", action="store_true",
                   help="train the built-in demo plan (SmolLM2-135M-Instruct on the bundled dataset) into "
                        "./runs/demo-DATE-TIME")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    for name, text in (("estimate", "predict the memory a plan needs"),
                       ("export", "export a finished run (adapter, merged model, GGUF)"),
                       ("inspect", "inspect a model's tokens and embeddings")):
        s = sub.add_parser(name, help=f"{text} (not in this version yet)",
                           description=f"{text[0].upper()}{text[1:]}. Not available in this version of Headtune yet.")
        s.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    return p


def versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform
    out = {"headtune": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        import torch
        out["cuda"] = torch.version.cuda or "none (CPU build)"
    except Exception:
        pass
    return out


def _print_event(event, quiet: bool) -> None:
    from . import events as ev
    if isinstance(event, ev.Step) and not quiet:
        gn = f" grad_norm {event.grad_norm:.3f}" if event.grad_norm is not None else ""
        print(f"step {event.step}/{event.total_steps}  loss {event.loss:.4f}  lr {event.learning_rate:.2e}"
              f"{gn}  {event.tokens_per_s:.0f} tok/s", flush=True)
    elif isinstance(event, ev.Eval) and not quiet:
        print(f"eval  step {event.step}  eval_loss {event.eval_loss:.4f}", flush=True)
    elif isinstance(event, ev.Checkpoint) and not quiet:
        print(f"checkpoint saved: {event.path}", flush=True)
    elif isinstance(event, (ev.Log, ev.Started)) and not quiet:
        print(event.message, file=sys.stderr, flush=True)


def _cmd_train(args) -> int:
    from .job import TrainingJob, resume_plan
    from .plan import load_plan
    from .demo import demo_plan

    if args.resume:
        if args.plan or args.demo:
            raise _usage("--resume takes the run folder only; the plan is the one saved in it.")
        plan = resume_plan(args.resume, args.overrides)
    elif args.demo:
        plan = demo_plan(args.overrides)
    elif args.plan:
        plan = load_plan(args.plan, args.overrides)
    else:
        raise _usage("give a plan file, --demo, or --resume RUN_DIR.")

    job = TrainingJob(plan, sinks=[lambda e: _print_event(e, args.quiet)], resume=bool(args.resume))
    presses = []

    def on_sigint(signum, frame):
        presses.append(time.time())
        if len(presses) > 1:
            raise KeyboardInterrupt
        print("\nStopping after this step (a checkpoint and the adapter are saved). Press Ctrl+C again to "
              "abort without saving.", file=sys.stderr, flush=True)
        job.request_stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = job.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    from . import events as ev
    if isinstance(result, ev.Stopped):
        print(f"Stopped at step {result.step}. Adapter: {result.adapter_path or '(none)'}. Resume with "
              f"`headtune train --resume {plan.output.dir}`.")
    else:
        losses = f" train loss {result.train_loss:.4f}" if result.train_loss is not None else ""
        if result.eval_loss is not None:
            losses += f", eval loss {result.eval_loss:.4f}"
        print(f"Finished {result.step} steps:{losses}. Adapter: {result.adapter_path}")
    return EXIT_OK


class _UsageError(HeadtuneError):
    exit_code = EXIT_BAD_INPUT


def _usage(msg: str) -> _UsageError:
    return _UsageError(msg)


def _cmd_gui(args) -> int:
    try:
        from headtune.gui.app import main as gui_main  # imported only here: core stays Qt-free
    except ImportError as exc:
        raise HeadtuneError(f"The window cannot start: {exc}. Install PySide6-Essentials and pyqtgraph.") from exc
    return gui_main([args.plan] if args.plan else [])


def _quiet_libraries() -> None:
    import logging
    import warnings
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(peft|transformers|torch|bitsandbytes)")
    for name in ("transformers", "peft", "accelerate", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if args.version:
        for k, v in versions().items():
            print(f"{k} {v}")
        return EXIT_OK
    if args.command is None:
        # The window issue makes this open the window on the demo plan.
        parser.print_help()
        return EXIT_OK
    if not debug:
        _quiet_libraries()
    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "gui":
            return _cmd_gui(args)
        print(f"headtune {args.command}: not available in this version of Headtune yet.", file=sys.stderr)
        return EXIT_FAILED
    except HeadtuneError as exc:
        if debug:
            traceback.print_exc()
        print(f"headtune: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("headtune: aborted.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: keep the message short unless --debug
        if debug:
            traceback.print_exc()
        print(f"headtune: unexpected error: {exc.__class__.__name__}: {exc}. Run again with --debug for "
              "details, and please report it.", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
