"""Validation, hardware and the memory estimate.

On every plan change the plan is validated (the problem shown inline, the field it names
highlighted, Start enabled or not) and the estimate recomputed: ``headtune.core.estimate.estimate``
is a pure function taking well under a millisecond, so this runs on the UI thread. The GPU is
detected once, off the UI thread. The device a run's estimate is made for comes from that
detection (data), never from what a combo box shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal, Slot

from headtune.core.errors import HeadtuneError, PlanError

from ..memory_panel import MemoryPanel
from ..plan_model import PlanModel
from ..plan_panels import set_error


@dataclass(frozen=True)
class PlanChecked:
    """The outcome of validating the plan: None when it can run, else the message and its key."""

    problem: str | None
    key: str | None = None


@dataclass(frozen=True)
class Hardware:
    gpu: tuple[int, str] | None  # (total bytes, name)
    ram_bytes: int
    gpu_count: int = 0


def detect_hardware() -> Hardware:
    """The GPU (if any) and the RAM; also warms bitsandbytes' import check."""
    from headtune.core.estimate import detect_capacity
    from headtune.core.plan import bitsandbytes_problem

    gpu_bytes, gpu_name = detect_capacity("cuda")
    ram_bytes, _ = detect_capacity("cpu")
    bitsandbytes_problem()
    import torch

    count = torch.cuda.device_count() if gpu_bytes else 0
    return Hardware((gpu_bytes, gpu_name) if gpu_bytes else None, ram_bytes, count)


class EstimateController(QObject):
    """Validates the plan and keeps the Memory panel's estimate current."""

    plan_checked = Signal(object)  # PlanChecked

    def __init__(self, model: PlanModel, memory_panel: MemoryPanel, training_panel, tasks, host):
        super().__init__(host)
        self._model = model
        self._panel = memory_panel
        self._training_panel = training_panel
        self._tasks = tasks
        self._host = host
        self.summary = None  # the model's ModelSummary, once read
        self.data = None  # the DataPreview of the plan's data (its token lengths), once read
        self.hardware: Hardware | None = None
        self.last_estimate = None
        self.last_check = PlanChecked(None)
        import psutil

        memory_panel.set_targets(None, int(psutil.virtual_memory().total), preferred=self._preferred_target())
        model.changed.connect(self._on_model_changed)
        memory_panel.advice_applied.connect(self._on_memory_panel_advice_applied)
        memory_panel.target_changed.connect(self._on_memory_panel_target_changed)

    def _preferred_target(self) -> str | None:
        return self._host.settings.value("memory/target", None, str)

    @property
    def run_device(self) -> str:
        """Where a run started now would train: the detected GPU, else the CPU."""
        return "cuda" if self.hardware is not None and self.hardware.gpu is not None else "cpu"

    def detect(self) -> None:
        self._tasks.run(
            "hardware",
            detect_hardware,
            self._on_hardware_detected,
            lambda m: self._host.show_status(m),
            needs_transformers=False,
        )

    def set_summary(self, summary) -> None:
        self.summary = summary
        self.refresh()

    @Slot(object)
    def set_data(self, preview) -> None:
        """The data preview whose token lengths the estimate uses (None: the worst case)."""
        self.data = preview
        self.update_estimate()

    def _data(self):
        if self.data is None:  # no import on the start-up path before any data is read
            return None
        from headtune.core.tools.preview import data_tokens

        return data_tokens(self.data)

    @Slot(str)
    def _on_model_changed(self, _key: str) -> None:
        self.refresh()  # well under a millisecond: no need to defer

    def refresh(self) -> None:
        """Validate the plan (inline message, highlighted field) and re-estimate memory."""
        error = None
        try:
            self._model.plan(check=True)
        except PlanError as exc:
            error = exc
        check = PlanChecked(str(error), error.key) if error is not None else PlanChecked(None)
        set_error(self._training_panel.plan_error, f"Plan: {check.problem}" if check.problem else None)
        self._model.mark_error(error)
        self.last_check = check
        self.update_estimate()
        self.plan_checked.emit(check)

    def update_estimate(self) -> None:
        from headtune.core.estimate import estimate

        if self.summary is None:
            self.last_estimate = None
            self._panel.show_message(
                "Estimated peak memory: waiting for the model's configuration…"
                if self._model.value("model.name_or_path")
                else "Estimated peak memory: choose a model first."
            )
            return
        try:
            plan = self._model.plan(check=False)
            device, capacity, _ = self._panel.target()
            est = estimate(plan, self.summary.shape, device, capacity or None, data=self._data())
        except HeadtuneError as exc:
            self.last_estimate = None
            self._panel.show_message(f"No estimate: {exc}")
            return
        self.last_estimate = est
        self._panel.show_estimate(
            est, self._devices_note(plan, est), rows=self.data.rows if self.data is not None else 0
        )

    def _devices_note(self, plan, est) -> str:
        """Beside the estimate: the GPUs found, and with training.devices other than 1 the memory
        per device (data parallel with its gradient buckets, or sharded under training.sharding: fsdp)
        and the global batch."""
        from headtune.core.estimate import per_device

        gpus = self.hardware.gpu_count if self.hardware is not None else 0
        found = f"{gpus} GPU{'s' if gpus != 1 else ''} here" if self.hardware is not None else ""
        n = plan.training.devices or max(1, gpus)
        if n == 1:
            return f"({found})" if gpus > 1 else ""
        pd = per_device(plan, self.summary.shape, est, n)
        fsdp = plan.training.sharding == "fsdp"
        each = pd.fsdp_total_bytes if fsdp else pd.ddp_total_bytes
        how = " (FSDP)" if fsdp else ""
        return f"Per device on {n}{how}: {each / 2**30:.2f} GiB; global batch {pd.global_batch}" + (
            f" ({found})" if found else ""
        )

    def run_estimate_bytes(self, plan) -> int | None:
        """The estimate for a run of ``plan`` on the device it will train on."""
        from headtune.core.estimate import estimate

        if self.summary is None:
            return None
        return estimate(plan, self.summary.shape, self.run_device, data=self._data()).total_bytes

    def _on_hardware_detected(self, hardware: Hardware) -> None:
        self.hardware = hardware
        self._panel.set_targets(hardware.gpu, hardware.ram_bytes, preferred=self._preferred_target())
        self.update_estimate()

    @Slot(dict)
    def _on_memory_panel_advice_applied(self, change: dict) -> None:
        self._model.update(change)
        self._host.show_status("Applied: " + ", ".join(f"{k} = {v}" for k, v in change.items()), 5000)

    @Slot()
    def _on_memory_panel_target_changed(self) -> None:
        self._host.settings.setValue("memory/target", self._panel.target_key())
        self.update_estimate()
