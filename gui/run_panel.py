"""The Run panel: Start / Stop / Resume, progress with ETA and tokens/s, live plots of loss,
learning rate and memory, a log, and the list of past runs (their plots reopen from
``events.jsonl``).

Events arrive as signals from the training worker; the panel only records them. Curves are
redrawn by a timer once a second, only the plot on screen, so a run never floods the event loop
(benchmarks/window.py measures what that costs a CPU training run).
The plots themselves (pyqtgraph, about 0.8 s to import) are built by ``build_plots`` right after
the window is first shown, so the window appears without waiting for them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from headtune.core import events as ev
from headtune.core.estimate import GiB
from headtune.core.runfolder import RunFolder

SMOOTHING = 0.9  # weight of the exponential moving average drawn over the raw loss


def _plot(name: str, accessible: str, left: str, bottom: str):
    import pyqtgraph as pg

    w = pg.PlotWidget(background="w")
    w.setObjectName(name)
    w.setAccessibleName(accessible)
    w.setLabel("left", left)
    w.setLabel("bottom", bottom)
    w.addLegend(offset=(-10, 10))
    w.setMinimumHeight(160)
    return w


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average (as TensorBoard draws it)."""
    out, s = [], 0.0
    for i, v in enumerate(values, 1):
        s = weight * s + (1 - weight) * v
        out.append(s / (1 - weight**i))
    return out


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _host() -> QWidget:
    """A tab page that receives its plot once the plots are built."""
    w = QWidget()
    lay = QVBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    return w


class RunCurves:
    """The series one run produces, fed event by event (live or from a file)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.lr: list[float] = []
        self.eval_steps: list[int] = []
        self.eval_loss: list[float] = []
        # Preference tuning (dpo / orpo): the steps' reward margin and accuracy, and validation's.
        self.reward_steps: list[int] = []
        self.reward_margin: list[float] = []
        self.reward_accuracy: list[float] = []
        self.eval_reward_steps: list[int] = []
        self.eval_reward_accuracy: list[float] = []
        self.mem_t: list[float] = []
        self.rss: list[float] = []
        self.allocated: list[float] = []
        self.reserved: list[float] = []
        self._t0: float | None = None

    def add(self, e: ev.Event) -> bool:
        """Record ``e``; True when a curve changed."""
        if isinstance(e, ev.Step):
            if self.steps and e.step <= self.steps[-1]:  # a resumed run replays nothing, but be safe
                return False
            if math.isfinite(e.loss):
                self.steps.append(e.step)
                self.loss.append(e.loss)
                self.lr.append(e.learning_rate)
            if e.reward_margin is not None and e.reward_accuracy is not None:
                self.reward_steps.append(e.step)
                self.reward_margin.append(e.reward_margin)
                self.reward_accuracy.append(e.reward_accuracy)
            return True
        if isinstance(e, ev.Eval):
            self.eval_steps.append(e.step)
            self.eval_loss.append(e.eval_loss)
            if e.eval_reward_accuracy is not None:
                self.eval_reward_steps.append(e.step)
                self.eval_reward_accuracy.append(e.eval_reward_accuracy)
            return True
        if isinstance(e, ev.Memory):
            if self._t0 is None:
                self._t0 = e.time
            self.mem_t.append(e.time - self._t0)
            self.rss.append(e.rss_bytes / GiB)
            self.allocated.append((e.cuda_allocated_bytes or 0) / GiB)
            self.reserved.append((e.cuda_reserved_bytes or 0) / GiB)
            return True
        return False

    @property
    def has_cuda(self) -> bool:
        return any(self.reserved)


class RunPanel(QWidget):
    """Controls and plots of a run. The window owns the worker; the panel shows what it reports."""

    open_run_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        buttons = QHBoxLayout()
        self.start_button = self._button("startButton", "Start training", "Start", "Start a new run with this plan.")
        self.stop_button = self._button(
            "stopButton",
            "Stop training",
            "Stop",
            "Stop after the current step: a checkpoint and the adapter are saved.",
        )
        self.resume_button = self._button(
            "resumeButton",
            "Resume run",
            "Resume",
            "Continue the selected run (or the last one) from its newest checkpoint.",
        )
        self.export_button = self._button(
            "exportButton",
            "Export model",
            "Export…",
            "Export the selected run (or the last one): adapter, merged model, or GGUF.",
        )
        self.start_button.setDefault(True)
        self.stop_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.export_button.setEnabled(False)
        for b in (self.start_button, self.stop_button, self.resume_button, self.export_button):
            buttons.addWidget(b)
        self.state_label = QLabel("Ready")
        self.state_label.setObjectName("runStateLabel")
        self.state_label.setAccessibleName("Run state")
        buttons.addWidget(self.state_label, 1)
        lay.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setObjectName("progressBar")
        self.progress.setAccessibleName("Training progress")
        self.progress.setTextVisible(True)
        self.progress.setFormat("No run yet")
        self.progress.setValue(0)
        lay.addWidget(self.progress)

        self.tabs = QTabWidget()
        self.tabs.setObjectName("runTabs")
        self.loss_tab, self.lr_tab, self.memory_tab = _host(), _host(), _host()
        self.reward_tab = _host()
        self.plots_built = False
        self._estimate_gib: float | None = None
        self.log_view = QPlainTextEdit()
        self.log_view.setObjectName("logView")
        self.log_view.setAccessibleName("Run log")
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        runs = QWidget()
        rl = QVBoxLayout(runs)
        self.runs_label = QLabel()
        self.runs_label.setWordWrap(True)
        rl.addWidget(self.runs_label)
        self.runs_list = QListWidget()
        self.runs_list.setObjectName("runsList")
        self.runs_list.setAccessibleName("Past runs")
        self.runs_list.itemDoubleClicked.connect(self._on_runs_list_activated)
        rl.addWidget(self.runs_list)
        row = QHBoxLayout()
        self.open_run_button = self._button(
            "openRunButton",
            "Show the selected run's plots",
            "Show plots",
            "Show the loss and memory plots of the selected run.",
        )
        self.open_run_button.clicked.connect(lambda: self._on_runs_list_activated(self.runs_list.currentItem()))
        refresh = self._button("refreshRunsButton", "Refresh the runs list", "Refresh", "Look for runs again.")
        refresh.clicked.connect(self.refresh_runs)
        row.addWidget(self.open_run_button)
        row.addWidget(refresh)
        row.addStretch(1)
        rl.addLayout(row)
        self.tabs.addTab(self.loss_tab, "Loss")
        self.tabs.addTab(self.reward_tab, "Rewards")
        self.tabs.addTab(self.lr_tab, "Learning rate")
        self.tabs.addTab(self.memory_tab, "Memory")
        self.tabs.addTab(self.log_view, "Log")
        self.tabs.addTab(runs, "Runs")
        lay.addWidget(self.tabs, 1)
        self.tabs.currentChanged.connect(self._on_tabs_current_changed)

        self.curves = RunCurves()
        self._dirty = False
        self._runs_folder: Path | None = None
        self._first_step: tuple[float, int] | None = None
        self._redraw_timer = QTimer(self)
        # Once a second, and only the plot on screen: repainting a plot costs ~10 ms of UI-thread
        # Python, which competes for the GIL (and the cores) with a CPU training run.
        self._redraw_timer.setInterval(1000)
        self._redraw_timer.timeout.connect(self._redraw_if_dirty)
        self._redraw_timer.start()

    def _button(self, name: str, accessible: str, text: str, tip: str) -> QPushButton:
        b = QPushButton(text)
        b.setObjectName(name)
        b.setAccessibleName(accessible)
        b.setToolTip(tip)
        return b

    def build_plots(self) -> None:
        """Create the pyqtgraph plots (once) and draw whatever has been recorded so far."""
        if self.plots_built:
            return
        import pyqtgraph as pg

        self.loss_plot = _plot("lossPlot", "Loss plot", "loss", "step")
        self.loss_raw = self.loss_plot.plot([], [], pen=pg.mkPen("#9ecae1", width=1), name="train loss")
        self.loss_smooth = self.loss_plot.plot([], [], pen=pg.mkPen("#08519c", width=2), name="smoothed")
        self.loss_eval = self.loss_plot.plot(
            [], [], pen=pg.mkPen("#e6550d", width=2), symbol="o", symbolSize=7, symbolBrush="#e6550d", name="eval loss"
        )
        # Preference tuning: how far apart the chosen and rejected replies are, and how often right.
        self.reward_plot = _plot("rewardPlot", "Reward plot", "reward margin / accuracy", "step")
        self.reward_margin_curve = self.reward_plot.plot(
            [], [], pen=pg.mkPen("#08519c", width=2), name="reward margin (chosen - rejected)"
        )
        self.reward_accuracy_curve = self.reward_plot.plot(
            [], [], pen=pg.mkPen("#31a354", width=2), name="reward accuracy"
        )
        self.eval_reward_curve = self.reward_plot.plot(
            [],
            [],
            pen=pg.mkPen("#e6550d", width=2),
            symbol="o",
            symbolSize=7,
            symbolBrush="#e6550d",
            name="eval reward accuracy",
        )
        self.lr_plot = _plot("lrPlot", "Learning rate plot", "learning rate", "step")
        self.lr_curve = self.lr_plot.plot([], [], pen=pg.mkPen("#31a354", width=2), name="learning rate")
        self.memory_plot = _plot("memoryPlot", "Memory plot", "GiB", "seconds")
        self.mem_rss = self.memory_plot.plot([], [], pen=pg.mkPen("#756bb1", width=2), name="process RSS")
        self.mem_alloc = self.memory_plot.plot([], [], pen=pg.mkPen("#e6550d", width=2), name="CUDA allocated")
        self.mem_reserved = self.memory_plot.plot([], [], pen=pg.mkPen("#fdae6b", width=2), name="CUDA reserved")
        self.estimate_line = pg.InfiniteLine(
            angle=0,
            movable=False,
            pen=pg.mkPen("#c0392b", width=1.5, style=Qt.PenStyle.DashLine),
            label="estimate {value:.2f} GiB",
            labelOpts={"position": 0.1, "color": "#c0392b"},
        )
        self.memory_plot.addItem(self.estimate_line)
        for host, plot in (
            (self.loss_tab, self.loss_plot),
            (self.reward_tab, self.reward_plot),
            (self.lr_tab, self.lr_plot),
            (self.memory_tab, self.memory_plot),
        ):
            host.layout().addWidget(plot)
        self.plots_built = True
        self._show_estimate_line()
        self._dirty = True
        self._redraw_if_dirty()

    # -- a run's events ------------------------------------------------------------------
    def reset(self, title: str = "") -> None:
        self.curves = RunCurves()
        self._first_step = None
        self._dirty = True
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(title or "Starting…")
        self._redraw_if_dirty()

    def set_estimate(self, total_bytes: int | None) -> None:
        self._estimate_gib = None if total_bytes is None else total_bytes / GiB
        self._show_estimate_line()

    def _show_estimate_line(self) -> None:
        if self.plots_built:
            self.estimate_line.setVisible(self._estimate_gib is not None)
            if self._estimate_gib is not None:
                self.estimate_line.setValue(self._estimate_gib)

    def add_event(self, e: ev.Event) -> None:
        if self.curves.add(e):
            self._dirty = True
        if isinstance(e, ev.Started):
            self.progress.setRange(0, max(1, e.total_steps))
            self.progress.setValue(e.resumed_from_step)
            self.progress.setFormat(f"Step {e.resumed_from_step} / {e.total_steps}")
        elif isinstance(e, ev.Step):
            self._show_progress(e)

    def _show_progress(self, e: ev.Step) -> None:
        self.progress.setRange(0, max(1, e.total_steps))
        self.progress.setValue(min(e.step, e.total_steps))
        if self._first_step is None:
            self._first_step = (e.time, e.step)
        t0, s0 = self._first_step
        left = e.total_steps - e.step
        eta = ""
        if e.step > s0 and left > 0:
            eta = f" · ETA {_duration((e.time - t0) / (e.step - s0) * left)}"
        self.progress.setFormat(
            f"Step {e.step} / {e.total_steps} · loss {e.loss:.4f}"
            + (f" · reward accuracy {e.reward_accuracy:.0%}" if e.reward_accuracy is not None else "")
            + f" · {e.tokens_per_s:,.0f} tokens/s{eta}"
        )

    def log(self, text: str) -> None:
        self.log_view.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def _on_tabs_current_changed(self, _index: int) -> None:
        self._dirty = True
        self._redraw_if_dirty()

    def _redraw_if_dirty(self) -> None:
        if not self._dirty or not self.plots_built:
            return
        self._dirty = False
        c = self.curves
        page = self.tabs.currentWidget()
        if page is self.loss_tab:
            self.loss_raw.setData(c.steps, c.loss)
            self.loss_smooth.setData(c.steps, smooth(c.loss))
            self.loss_eval.setData(c.eval_steps, c.eval_loss)
        elif page is self.reward_tab:
            self.reward_margin_curve.setData(c.reward_steps, c.reward_margin)
            self.reward_accuracy_curve.setData(c.reward_steps, c.reward_accuracy)
            self.eval_reward_curve.setData(c.eval_reward_steps, c.eval_reward_accuracy)
        elif page is self.lr_tab:
            self.lr_curve.setData(c.steps, c.lr)
        elif page is self.memory_tab:
            self.mem_rss.setData(c.mem_t, c.rss)
            cuda = c.has_cuda
            self.mem_alloc.setData(c.mem_t if cuda else [], c.allocated if cuda else [])
            self.mem_reserved.setData(c.mem_t if cuda else [], c.reserved if cuda else [])
            top = max(c.rss + c.reserved + [self._estimate_gib or 0.0], default=0.0)
            if top > 0:  # from zero, so the scale does not exaggerate small changes
                self.memory_plot.setYRange(0, top * 1.1, padding=0)
        else:
            self._dirty = True  # a plot is not on screen: draw it when it is

    def show_failed(self) -> None:
        self.progress.setFormat("Failed: see the message and the log")

    def load_run(self, run_dir: str) -> int:
        """Show a past run's plots from its events file; returns how many events were read."""
        self.reset(f"Run {Path(run_dir).name}")
        n = 0
        last_step = None
        for e in ev.read_events(RunFolder(run_dir).events_file):
            n += 1
            self.add_event(e)
            if isinstance(e, ev.Step):
                last_step = e
        summary = ev.summarize_run(run_dir)
        if summary is not None:
            total = max(1, summary.total_steps)
            self.progress.setRange(0, total)
            self.progress.setValue(min(summary.step, total))
            self.progress.setFormat(
                f"{Path(run_dir).name}: {summary.state} at step {summary.step} / "
                f"{summary.total_steps}" + (f" · loss {last_step.loss:.4f}" if last_step else "")
            )
        self._redraw_if_dirty()
        return n

    # -- runs list -----------------------------------------------------------------------
    def set_runs_folder(self, folder: str | Path) -> None:
        folder = Path(folder)
        if folder != self._runs_folder:
            self._runs_folder = folder
            self.refresh_runs()

    def refresh_runs(self) -> None:
        self.runs_list.clear()
        folder = self._runs_folder
        self.runs_label.setText(f"Runs in {folder}" if folder else "")
        if folder is None or not folder.is_dir():
            return
        found = []
        for sub in folder.iterdir():
            if sub.is_dir():
                summary = ev.summarize_run(sub)
                if summary is not None:
                    found.append(summary)
        found.sort(key=lambda s: s.started or 0, reverse=True)
        for s in found:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started)) if s.started else ""
            loss = f", eval loss {s.eval_loss:.4f}" if s.eval_loss is not None else ""
            item = QListWidgetItem(
                f"{Path(s.path).name}  ·  {s.state} at step {s.step}/{s.total_steps}{loss}  ·  {when}"
            )
            item.setData(Qt.ItemDataRole.UserRole, s.path)
            item.setToolTip(s.message or s.path)
            self.runs_list.addItem(item)

    def selected_run(self) -> str | None:
        item = self.runs_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _on_runs_list_activated(self, item) -> None:
        if item is not None:
            self.open_run_requested.emit(item.data(Qt.ItemDataRole.UserRole))
