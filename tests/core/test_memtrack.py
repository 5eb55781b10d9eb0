"""The live-tensor tracker that the memory benchmark measures with."""

from __future__ import annotations

import torch

from headtune.core.training.memtrack import LiveTensorTracker, measure_peak


def test_counts_each_storage_once_and_notices_release():
    existing = torch.zeros(1000)  # 4,000 bytes alive before tracking starts
    with LiveTensorTracker() as tracker:
        base = tracker.current
        assert base >= existing.nbytes
        a = torch.ones(2**20)  # 4 MiB
        view = a[:10]  # a view shares the storage: not counted again
        b = a * 2  # another 4 MiB
        assert tracker.current - base == 8 * 2**20
        del b
        assert tracker.current - base == 4 * 2**20
        c = torch.ones(2**19)  # 2 MiB, while a is alive
        assert tracker.peak - base == 8 * 2**20
        del a, view, c
        assert tracker.current == base


def test_measure_peak_runs_a_plan(tmp_path, tiny_untied, alpaca_file):
    from headtune.core.plan import plan_from_dict
    from headtune.core.testing import plan_dict

    plan = plan_from_dict(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"))
    result = measure_peak(plan, steps=2)
    weights = (tiny_untied / "model.safetensors").stat().st_size  # bf16 on disk, float32 in the run
    assert result["device"] == "cpu" and result["peak_bytes"] > 2 * weights * 0.9
    assert result["trainable_params"] > 0
