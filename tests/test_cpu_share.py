"""CpuShare: one torch thread while other processes hold a core, all threads back after."""

from __future__ import annotations

import torch

from napari_medsegdiff import cpu_share


def test_drops_to_one_thread_under_load_and_comes_back(monkeypatch):
    clock = {"wall": 0.0, "machine": 0.0, "ours": 0.0, "cores": 2.0}
    monkeypatch.setattr(
        cpu_share, "_busy_and_total", lambda: (clock["machine"], clock["cores"] * clock["wall"])
    )
    monkeypatch.setattr(cpu_share.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(cpu_share.time, "process_time", lambda: clock["ours"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        share = cpu_share.CpuShare("cpu")
        assert share.enabled and share.full == 2

        def window(ours: float, others: float, seconds: float = 1.0) -> int:
            clock["wall"] += seconds
            clock["ours"] += ours * seconds
            clock["machine"] += (ours + others) * seconds
            return share.adjust()

        assert window(ours=2.0, others=0.0) == 2  # alone: both threads
        assert window(ours=1.3, others=0.7) == 1  # another process took most of a core
        assert abs(share.others - 0.7) < 1e-9
        assert window(ours=1.0, others=0.5) == 1  # hysteresis: not quiet enough yet
        assert window(ours=1.0, others=0.1) == 2  # it left
        clock["wall"] += 0.1  # windows shorter than INTERVAL_S are not measured
        clock["machine"] += 0.2
        assert share.adjust() == 2
        window(ours=1.0, others=1.0)
        share.restore()
        assert torch.get_num_threads() == 2
        clock["cores"] = 64.0  # a big shared server: others busy on other cores
        assert window(ours=2.0, others=20.0) == 2
    finally:
        torch.set_num_threads(before)


def test_the_users_thread_choice_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not cpu_share.CpuShare("cpu").enabled
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not cpu_share.CpuShare("cuda").enabled
