"""The model card (``README.md``) and loss curve (``loss.png``) every export carries."""

from __future__ import annotations

from pathlib import Path

from ... import events as ev
from ...runfolder import RunFolder


def loss_curve_png(run: Path, path: Path) -> bool:
    """Draw the run's train (and eval) loss with matplotlib's Agg backend (no Qt). False if no steps."""
    steps, losses, esteps, elosses = [], [], [], []
    events = RunFolder(run).events_file
    if events.is_file():
        for e in ev.read_events(events):
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
    summary = ev.summarize_run(run)
    started = None
    events = RunFolder(run).events_file
    if events.is_file():
        started = next((e for e in ev.read_events(events) if isinstance(e, ev.Started)), None)
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
    what = (
        f"LoRA r={plan.adapter.r} alpha={plan.adapter.alpha} on {plan.adapter.target_modules}"
        + (f"; {' and '.join(trained)} trained ({e.mode} mode)" if trained else "")
        + (f"; new tokens {', '.join(e.new_tokens)}" if e.new_tokens else "")
        + (f"; {len(e.vocab_tokens)} new ordinary tokens from the data" if e.vocab_tokens else "")
    )
    data = f"`{plan.data.path}` ({plan.data.format}, max {plan.data.max_seq_len} tokens)"
    if started is not None:
        data += f": {started.train_examples} training and {started.val_examples} validation examples"
    lines = [
        f"# Fine-tuned {plan.model.name_or_path}",
        "",
        f"Exported by Headtune as **{fmt}** ({detail}).",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{plan.model.name_or_path}` (trained in {plan.model.quantization}, {plan.model.dtype}) |",
        f"| Training | {what} |",
        f"| Data | {data} |",
        f"| Run | {status} |",
        f"| Final train loss | {fmt_loss(summary.last_loss if summary else None)} |",
        f"| Final eval loss | {fmt_loss(summary.eval_loss if summary else None)} |",
        "",
    ]
    if has_curve:
        lines += ["![Loss curve](loss.png)", ""]
    lines += ["## Plan", "", "```yaml", plan.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
