"""Paired comparisons of twin sweeps (issue 40: each bf16 training against its fp32 twin of the same seed):
`compare --paired` and `claims --paired` resample one set of seeds and examples for both sides, so their
intervals are those of the per-seed differences."""

from __future__ import annotations

import pytest
from test_report import Sweep as SweepDir
from test_report import ablation_sweep, wrong

from analysis.__main__ import main
from analysis.claims import paired_claims
from analysis.collect import load_runs
from analysis.stats import difference_intervals

SHARES = (0.15, 0.25, 0.35)  # each seed's intact model: wrong on this share (seeds differ a lot)
LOST = (0, 50, 100)  # cell 0..0 of each seed: this many more examples wrong in A


def twin(path, extra: int, seeds=(0, 1, 2)) -> SweepDir:
    """One cell (0..0) per seed; B's twin loses `extra` more examples than A in every seed."""
    sweep = SweepDir(path, "layer_ablation")
    for seed in seeds:
        intact = wrong(sweep.truth, SHARES[seed])
        ablated = intact.copy()
        lost = LOST[seed] + extra
        ablated[400 : 400 + lost] = 1 - ablated[400 : 400 + lost]  # right in the intact model
        sweep.job(intact, ablated, seed=seed, first=0, last=0)
    return sweep


def test_a_sweep_paired_with_itself_differs_by_exactly_zero(tmp_path):
    sweep = ablation_sweep(tmp_path / "a", lambda f, la: 0.01 * (la - f + 1), n_layers=4).path
    df = load_runs([sweep]).table
    cells = difference_intervals(df, df, paired=True)
    assert (cells[["difference", "lo", "hi"]].to_numpy() == 0).all()
    claims = paired_claims(df, df)
    assert {"single-layer removal costs little", "lower layers matter less"} <= set(claims["claim"])
    assert (claims[["difference", "lo", "hi"]].to_numpy() == 0).all() and (claims["seeds"] == 2).all()


def test_pairing_removes_the_seeds_spread_from_a_constant_shift(tmp_path):
    a = load_runs([twin(tmp_path / "a", 0).path]).table
    b = load_runs([twin(tmp_path / "b", 12).path]).table
    paired = difference_intervals(a, b, paired=True).iloc[0]
    apart = difference_intervals(a, b).iloc[0]
    assert paired["difference"] == apart["difference"] < 0  # one estimate, two intervals
    assert paired["hi"] < 0 and not paired["includes_zero"]  # B loses more in every seed: beyond its interval
    assert apart["includes_zero"]  # resampled apart, the seeds' spread (0 to 15% lost) hides it
    assert paired["hi"] - paired["lo"] < (apart["hi"] - apart["lo"]) / 4


def test_twins_must_hold_the_same_seeds_and_examples(tmp_path):
    a = load_runs([twin(tmp_path / "a", 0).path]).table
    b = load_runs([twin(tmp_path / "b", 0, seeds=(0, 1)).path]).table
    with pytest.raises(ValueError, match=r"A holds seeds \[0, 1, 2\], B \[0, 1\]"):
        difference_intervals(a, b, paired=True)
    other = SweepDir(tmp_path / "c", "layer_ablation")
    other.truth = other.truth[::-1].copy()  # the same seeds, scored on other examples
    for seed in (0, 1, 2):
        other.job(wrong(other.truth, 0.2), seed=seed, first=0, last=0)
    with pytest.raises(ValueError, match="different validation examples"):
        difference_intervals(a, load_runs([other.path]).table, paired=True)


def test_the_commands_print_the_paired_tables(tmp_path, capsys):
    a, b = twin(tmp_path / "a", 0).path, twin(tmp_path / "b", 12).path
    assert main(["compare", str(a), str(b), "--paired", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 spans differ beyond their 95% interval" in out and "paired by seed and example" in out
    assert "share beyond: 100.0% [2.5, 100.0]" in out
    full = [ablation_sweep(tmp_path / n, lambda f, la: 0.01 * (la - f + 1), n_layers=4).path for n in "cd"]
    assert main(["claims", str(full[0]), str(full[1]), "--paired"]) == 0
    out = capsys.readouterr().out
    assert "A minus B, paired by seed and example" in out and "paired intervals inside ±1" in out
