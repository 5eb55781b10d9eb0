"""TensorBoard event files in the run folder (``output.tensorboard``): a sink of the job's events.

The job's events are the one record of a run; this sink copies them as scalars where TensorBoard
(``tensorboard --logdir <run folder>``) and the tools built on it look, with no account and no
network. tensorboardX writes the files (numpy and protobuf only; the ``tensorboard`` extra).
A resumed run adds a new event file beside the first, which TensorBoard joins by step.
"""

from __future__ import annotations

from pathlib import Path

from .. import events as ev
from ..errors import PlanError

GiB = 1024**3


def require() -> None:
    """Refuse a plan asking for TensorBoard files when tensorboardX is missing, before any write."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise PlanError(
            "output.tensorboard: writing TensorBoard event files needs the tensorboardX package: "
            "pip install 'headtune[tensorboard]' (or turn output.tensorboard off).",
            "output.tensorboard",
        ) from None


class TensorBoardSink:
    """Writes Step, Eval and Memory events as scalars; closes on the run's last event."""

    def __init__(self, folder: str | Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(folder), flush_secs=10)

    def __call__(self, event: ev.Event) -> None:
        w = self.writer
        if isinstance(event, ev.Step):
            w.add_scalar("train/loss", event.loss, event.step)
            w.add_scalar("train/learning_rate", event.learning_rate, event.step)
            if event.grad_norm is not None:
                w.add_scalar("train/grad_norm", event.grad_norm, event.step)
            w.add_scalar("train/tokens_per_s", event.tokens_per_s, event.step)
            for name in ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"):
                value = getattr(event, name)
                if value is not None:  # preference tuning
                    w.add_scalar(f"train/{name}", value, event.step)
        elif isinstance(event, ev.Eval):
            w.add_scalar("eval/loss", event.eval_loss, event.step)
            if event.eval_reward_accuracy is not None:
                w.add_scalar("eval/reward_accuracy", event.eval_reward_accuracy, event.step)
            if event.eval_reward_margin is not None:
                w.add_scalar("eval/reward_margin", event.eval_reward_margin, event.step)
        elif isinstance(event, ev.Memory):
            w.add_scalar("memory/process_gib", event.rss_bytes / GiB, event.step)
            if event.cuda_max_allocated_bytes is not None:
                w.add_scalar("memory/cuda_peak_allocated_gib", event.cuda_max_allocated_bytes / GiB, event.step)
        elif isinstance(event, (ev.Finished, ev.Stopped, ev.Failed)):
            self.close()

    def close(self) -> None:
        self.writer.close()
