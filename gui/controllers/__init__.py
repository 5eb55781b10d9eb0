"""Controllers: each owns one slice of the window's behaviour; the panels are their views.

``PlanFileController`` (the plan file and its unsaved state), ``EstimateController`` (validation,
hardware and the memory estimate), ``PreviewController`` (the model's facts, its tokenizer, the
data preview and token search), ``RunController`` (start, stop, resume and the live run),
``ExportController``, ``ChatController``, ``HealthController`` and ``DoctorController`` (the tools
that run as child processes). They talk through the ``PlanModel`` and through signals.
"""
