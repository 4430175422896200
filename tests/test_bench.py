"""The benchmark runs end to end on the toy model: every table line it promises is printed, the profile
included (its numbers are the machine's, so only their presence and form are checked)."""

from __future__ import annotations

import re

from e2e import TRAIN

from ablation import bench


def test_the_bench_prints_its_table_on_the_toy_model(toy, capsys, monkeypatch):
    conf, cache, sweep = toy
    # the peak and the probe on the toy's scale: the table's form is checked here, not the machine
    monkeypatch.setattr(bench, "PEAK_SHAPES", ((256, 256, 256),))
    monkeypatch.setattr(bench, "cpu_bf16_speedup", lambda cache: (2.0, False))
    store = sweep.parent / "store"  # the toy sweep's training: the bench reuses it
    bench.main(
        ["--skip-overhead", "--skip-kinds", "--skip-placement", f"hydra.searchpath=[file://{conf}]",
         "model=tiny", "task=toy", *TRAIN, f"paths.store={store}", f"paths.cache={cache}"]
    )  # fmt: skip
    out = capsys.readouterr().out
    for line in (
        "matmul peak fp32 / bf16",
        "full validation pass fp32",
        "full validation pass bf16",
        "train step fp32 (batch",
        "train step bf16 (batch",
        "full validation pass bf16: weights cast / held",
        "train step bf16: weights cast / held",
        "profile, validation pass bf16: matmuls' own rate",
        "profile, train step bf16: matmuls' own rate",
        "profile, validation pass bf16: matmuls' share",
        "profile, train step bf16: matmuls' share",
        "6-cell evaluation",
        "memory peaks",
    ):
        assert line in out, line
    shares = [float(x) for x in re.findall(r"^  \S+.*?\s([\d.]+)% \(\d+ calls\)$", out, re.M)]
    assert len(shares) == 16 and all(0 <= s <= 100 for s in shares), out
    rates = re.findall(r"matmuls' own rate\s+(\d+) GFLOP/s = (\d+)% of peak", out)
    assert len(rates) == 2 and all(int(r) > 0 for r, _ in rates), out
    assert "[train] reusing" in out  # the toy sweep's adapters, not a new training
