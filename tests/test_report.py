"""The report's statistics and verdicts on synthetic sweeps built to pass and to fail each claim.

Each synthetic job writes what a real one writes (a results.csv row and predictions.npz), with predictions
constructed so that the answer is known: identical predictions give a difference of exactly zero, flipping
a fixed share of examples gives that share.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis.claims import CLAIMS, evaluate_claims, lower_block, verdict
from analysis.collect import load_runs
from analysis.plots import heatmap
from analysis.report import build_report
from analysis.stats import Group, bootstrap_replicates, cell_intervals, difference_intervals, interval

N = 1000
MAJORITY = 0.6


def labels(n: int = N) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    out[int(MAJORITY * n) :] = 1
    return np.random.default_rng(0).permutation(out)


def wrong(truth: np.ndarray, share: float, offset: int = 0) -> np.ndarray:
    """truth with the examples offset..offset+share*n flipped: accuracy exactly 1 - share."""
    pred = truth.copy()
    k = int(round(share * len(truth)))
    pred[offset : offset + k] = 1 - pred[offset : offset + k]
    return pred


class Sweep:
    """A sweep dir written job by job as the Hydra multirun leaves it: <job>/predictions.npz, results.csv.

    `defaults` are row fields every job gets unless it gives them; `deferred`: results.csv is written by
    `save()` only, not after every job (sweeps of hundreds of jobs)."""

    def __init__(self, path: Path, study: str | None, task: str = "sst", model: str = "tiny",
                 defaults: dict | None = None, deferred: bool = False):  # fmt: skip
        self.path, self.study, self.task, self.model, self.rows = path, study, task, model, []
        self.defaults, self.deferred = defaults or {}, deferred
        path.mkdir(parents=True)
        self.truth = labels()

    def job(self, intact: np.ndarray, ablated: np.ndarray | None = None, **fields) -> None:
        ablated = intact if ablated is None else ablated
        job = str(len(self.rows))
        (self.path / job).mkdir()
        np.savez(self.path / job / "predictions.npz", labels=self.truth, intact=intact, ablated=ablated)
        acc, base = (float((p == self.truth).mean()) for p in (ablated, intact))
        row = {"study": self.study, "task": self.task, "model": self.model, "method": "adapters",
               "variant": "plain", "adapter_size": 64, "init_std": 1e-3, "seed": 0, "positions": "both",
               "accuracy": acc, "intact_accuracy": base, "relative_decrease": 1 - acc / base,
               "majority_rate": MAJORITY, "n_eval": N, "diverged": False, "trained_params": 1000,
               "lr": 1e-3, "train_steps": 10, "job_seconds": 1.0, "job_dir": job, "code_version": "abc"}  # fmt: skip
        self.rows.append({**row, **self.defaults, **fields})
        if not self.deferred:
            self.save()

    def save(self) -> Path:
        """Write results.csv (every job so far); the sweep's folder."""
        pd.DataFrame(self.rows).to_csv(self.path / "results.csv", index=False)
        return self.path


def ablation_sweep(
    path: Path, drop, n_layers: int = 6, seeds=(0, 1), study: str | None = "layer_ablation"
) -> Sweep:
    """Every span first..last; drop(first, last) is the share of examples the ablated model gets wrong."""
    sweep = Sweep(path, study)
    for seed in seeds:
        intact = wrong(sweep.truth, 0.1, offset=seed)
        for first in range(n_layers):
            for last in range(first, n_layers):
                ablated = wrong(intact, drop(first, last), offset=200)
                sweep.job(intact, ablated, seed=seed, first=first, last=last)
    return sweep


def claim(table: pd.DataFrame, name: str) -> pd.DataFrame:
    return table[table["claim"] == name]


def verdicts(path: Path, name: str) -> list[str]:
    return claim(evaluate_claims(load_runs([path]).table), name)["verdict"].tolist()


# --- the bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_is_exact_when_every_example_agrees():
    right, none = np.ones((1, 50)), np.zeros((1, 50))
    reps = bootstrap_replicates([Group(right), Group(none)], n_boot=200)
    assert np.all(reps[:, 0] == 1.0) and np.all(reps[:, 1] == 0.0)
    assert interval(1.0, reps[:, 0] - reps[:, 1]) == (1.0, 1.0, 1.0)


def test_bootstrap_spread_matches_the_binomial_standard_error():
    """One seed, accuracy p on n examples: replicates have sd sqrt(p(1-p)/n)."""
    n, p = 4000, 0.7
    correct = np.zeros((1, n))
    correct[0, : int(p * n)] = 1
    reps = bootstrap_replicates([Group(correct)], n_boot=4000, seed=1)[:, 0]
    assert reps.mean() == pytest.approx(p, abs=0.002)
    assert reps.std() == pytest.approx(np.sqrt(p * (1 - p) / n), rel=0.08)


def test_bootstrap_resamples_seeds_when_examples_carry_no_spread():
    """Two runs, one right everywhere, one wrong everywhere: the mean of two drawn seeds is 0, 1/2 or 1."""
    correct = np.vstack([np.ones(30), np.zeros(30)])
    reps = bootstrap_replicates([Group(correct)], n_boot=8000, seed=2)[:, 0]
    values, counts = np.unique(reps, return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert interval(0.5, reps)[1:] == (0.0, 1.0)


def test_shared_examples_and_seeds_pair_the_groups():
    rng = np.random.default_rng(3)
    a = (rng.random((3, 500)) < 0.8).astype(float)
    paired = bootstrap_replicates([Group(a, seeds="s"), Group(a.copy(), seeds="s")], n_boot=300)
    assert np.array_equal(paired[:, 0], paired[:, 1])  # same runs, same examples: no spread in the difference
    apart = bootstrap_replicates([Group(a), Group(a.copy(), examples="other")], n_boot=300)
    assert np.std(apart[:, 0] - apart[:, 1]) > 0.005


def test_bootstrap_refuses_mismatched_groups():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_replicates([Group(np.ones((1, 5))), Group(np.ones((1, 6)))])
    with pytest.raises(ValueError, match="seed count"):
        bootstrap_replicates([Group(np.ones((2, 5)), seeds="s"), Group(np.ones((3, 5)), seeds="s")])


def test_verdict_is_the_position_of_the_interval_against_the_region():
    assert verdict(0.1, 0.5, (0.0, 1.0)) == "reproduced"
    assert verdict(1.2, 3.0, (0.0, 1.0)) == "not reproduced"
    assert verdict(0.5, 1.5, (0.0, 1.0)) == "inconclusive"
    assert verdict(0.0, 0.0, (0.0, np.inf)) == "not reproduced"  # no degradation is not a degradation
    assert verdict(np.nan, np.nan, (0.0, 1.0)) == "inconclusive"


# --- claims on tables built to pass and to fail -----------------------------------------------------------


def test_layer_ablation_claims_pass(tmp_path):
    """Removing a span costs nothing unless it reaches the top layers; removing all gives the majority."""
    n_layers = 6
    j = lower_block(n_layers)

    def drop(first, last):
        if (first, last) == (0, n_layers - 1):
            return 0.35  # accuracy 0.9 - 0.35 = 0.55: below the majority-class rate 0.6
        return 0.2 if last >= n_layers - j else 0.0

    # single layers in the top block drop 20%: that claim fails, the other two hold
    ablation_sweep(tmp_path / "s", drop, n_layers)
    table = evaluate_claims(load_runs([tmp_path / "s"]).table)
    assert claim(table, "all adapters removed: majority class")["verdict"].tolist() == ["reproduced"]
    assert claim(table, "lower layers matter less")["verdict"].tolist() == ["reproduced"]
    assert claim(table, "single-layer removal costs little")["verdict"].tolist() == ["not reproduced"]

    ablation_sweep(tmp_path / "t", lambda f, la: 0.0, n_layers)
    assert verdicts(tmp_path / "t", "single-layer removal costs little") == ["reproduced"]


def test_layer_ablation_claims_fail(tmp_path):
    n_layers = 6
    j = lower_block(n_layers)
    ablation_sweep(tmp_path / "s", lambda f, la: 0.2 if f < j else 0.0, n_layers)  # lower layers matter
    table = evaluate_claims(load_runs([tmp_path / "s"]).table)
    assert claim(table, "lower layers matter less")["verdict"].tolist() == ["not reproduced"]
    assert claim(table, "all adapters removed: majority class")["verdict"].tolist() == ["not reproduced"]
    row = claim(table, "all adapters removed: majority class").iloc[0]
    assert row["estimate"] == pytest.approx(100 * (0.7 - MAJORITY))  # 0.9 - 0.2 accuracy vs 0.6


def init_sweep(path: Path, small_drop: float, large_drop: float) -> None:
    sweep = Sweep(path, "init_scale")
    for std in (1e-6, 1e-4, 1e-2, 1e-1, 1.0):
        for seed in (0, 1, 2):
            share = small_drop if std == 1e-6 else large_drop if std == 1.0 else 0.0
            sweep.job(wrong(sweep.truth, 0.1 + share, offset=seed), init_std=std, seed=seed)


def test_init_scale_claims_pass_and_fail(tmp_path):
    init_sweep(tmp_path / "pass", small_drop=0.0, large_drop=0.3)
    assert verdicts(tmp_path / "pass", "init std ≤ 1e-2 is robust") == ["reproduced"]
    assert verdicts(tmp_path / "pass", "larger init std degrades") == ["reproduced"]
    init_sweep(tmp_path / "fail", small_drop=0.2, large_drop=-0.05)
    assert verdicts(tmp_path / "fail", "init std ≤ 1e-2 is robust") == ["not reproduced"]
    assert verdicts(tmp_path / "fail", "larger init std degrades") == ["not reproduced"]


def sizes_sweep(path: Path, drop8: float) -> None:
    sweep = Sweep(path, "bottleneck")
    for size in (2, 8, 64, 256):
        for seed in (0, 1, 2):
            share = drop8 if size == 8 else 0.3 if size == 2 else 0.0  # size 2 is not one of the paper's
            sweep.job(wrong(sweep.truth, 0.1 + share, offset=seed), adapter_size=size, seed=seed)


def test_bottleneck_claim_pass_and_fail(tmp_path):
    sizes_sweep(tmp_path / "pass", drop8=0.0)
    assert verdicts(tmp_path / "pass", "sizes 8/64/256 perform alike") == ["reproduced"]
    sizes_sweep(tmp_path / "fail", drop8=0.1)
    assert verdicts(tmp_path / "fail", "sizes 8/64/256 perform alike") == ["not reproduced"]


def tradeoff_sweep(path: Path, adapter_drop: float, norm_drop: float, adapter_params: int = 3000) -> None:
    sweep = Sweep(path, "tradeoff")
    for seed in (0, 1, 2):
        base = wrong(sweep.truth, 0.1, offset=seed)
        sweep.job(base, method="full", variant=None, adapter_size=None, init_std=None,
                  trained_params=100_000, seed=seed)  # fmt: skip
        sweep.job(
            wrong(base, adapter_drop, offset=300), adapter_size=64, trained_params=adapter_params, seed=seed
        )
        sweep.job(wrong(base, norm_drop, offset=300), method="layernorm", variant=None, adapter_size=None,
                  init_std=None, trained_params=500, seed=seed)  # fmt: skip


def test_tradeoff_claims_pass_and_fail(tmp_path):
    tradeoff_sweep(tmp_path / "pass", adapter_drop=0.0, norm_drop=0.04)
    assert verdicts(tmp_path / "pass", "adapters close to full fine-tuning") == ["reproduced"]
    assert verdicts(tmp_path / "pass", "LayerNorm-only costs a few points") == ["reproduced"]
    tradeoff_sweep(tmp_path / "fail", adapter_drop=0.05, norm_drop=0.0)
    assert verdicts(tmp_path / "fail", "adapters close to full fine-tuning") == ["not reproduced"]
    assert verdicts(tmp_path / "fail", "LayerNorm-only costs a few points") == ["not reproduced"]
    # adapters with more than 5% of full fine-tuning's parameters are not "a few percent": no data
    tradeoff_sweep(tmp_path / "big", adapter_drop=0.0, norm_drop=0.04, adapter_params=20_000)
    assert verdicts(tmp_path / "big", "adapters close to full fine-tuning") == ["no data"]
    row = claim(evaluate_claims(load_runs([tmp_path / "big"]).table), "adapters close to full fine-tuning")
    assert row["measured"].tolist() == ["no rows for this claim (the tradeoff rows hold nothing it compares)"]


def variants_sweep(path: Path, gain: float) -> None:
    sweep = Sweep(path, "variants")
    for seed in (0, 1, 2):
        base = wrong(sweep.truth, 0.2, offset=seed)
        sweep.job(base, variant="plain", seed=seed)
        sweep.job(base, variant="activation=tanh", seed=seed)
        better = wrong(sweep.truth, 0.2 - gain, offset=seed)
        sweep.job(better, variant="norm=layernorm", seed=seed)


def test_variants_claim_pass_and_fail(tmp_path):
    variants_sweep(tmp_path / "pass", gain=0.0)
    assert verdicts(tmp_path / "pass", "no variant beats the plain adapter") == ["reproduced"]
    variants_sweep(tmp_path / "fail", gain=0.1)
    assert verdicts(tmp_path / "fail", "no variant beats the plain adapter") == ["not reproduced"]


def test_claims_without_their_rows_say_no_data(tmp_path):
    variants_sweep(tmp_path / "v", gain=0.0)
    table = evaluate_claims(load_runs([tmp_path / "v"]).table)
    assert list(table["claim"].unique()) == [c.name for c in CLAIMS]  # every claim appears
    others = table[table["claim"] != "no variant beats the plain adapter"]
    assert (others["verdict"] == "no data").all() and others["lo"].isna().all()


# --- heatmap intervals and figures ---------------------------------------------------------------------


def test_cell_intervals_exclude_zero_only_for_real_drops(tmp_path):
    ablation_sweep(tmp_path / "s", lambda f, la: 0.1 if (f, la) == (2, 3) else 0.0, n_layers=4)
    table = cell_intervals(load_runs([tmp_path / "s"]).table).set_index(["first", "last"])
    assert len(table) == 10 and (table["seeds"] == 2).all()
    assert not table.loc[(2, 3), "includes_zero"] and table.loc[(2, 3), "lo"] > 5
    others = table.drop(index=(2, 3))
    assert others["includes_zero"].all() and (others["relative_decrease"] == 0).all()


def test_heatmap_centres_colours_on_zero_and_hatches_uncertain_cells(tmp_path):
    ablation_sweep(tmp_path / "s", lambda f, la: 0.1 if (f, la) == (2, 3) else 0.0, n_layers=4)
    rows = load_runs([tmp_path / "s"]).table
    from analysis.stats import cell_intervals

    ax = Figure().subplots()
    heatmap(rows, ax, cells=cell_intervals(rows))
    mesh = ax.collections[0]
    assert mesh.norm.vmin == pytest.approx(-mesh.norm.vmax)  # a gain and a loss of one size: equal strength
    hatched = {(int(p.get_y()), int(p.get_x())) for p in ax.patches if p.get_hatch()}
    upper = {(f, la) for f in range(4) for la in range(f, 4)}
    assert hatched == upper - {(2, 3)}  # (row = first, column = last), lower triangle never hatched
    assert "includes 0" in ax.get_title()


def test_difference_between_two_sweeps_and_its_intervals(tmp_path):
    ablation_sweep(tmp_path / "a", lambda f, la: 0.1 if la == 3 else 0.0, n_layers=4)
    ablation_sweep(tmp_path / "b", lambda f, la: 0.0, n_layers=4)
    a, b = (load_runs([tmp_path / x]).table for x in "ab")
    table = difference_intervals(a, b).set_index(["first", "last"])
    ends_at_3 = table.xs(3, level="last")
    assert (~ends_at_3["includes_zero"]).all() and (ends_at_3["difference"] > 10).all()
    assert table.drop(index=3, level="last")["includes_zero"].all()
    out = subprocess.run(
        [sys.executable, "-m", "analysis", "compare", str(tmp_path / "a"), str(tmp_path / "b"),
         "--out", str(tmp_path / "cmp")], capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert "4 of 10 spans differ beyond their 95% interval" in out.stdout


# --- the report -----------------------------------------------------------------------------------------


def test_report_is_self_contained_and_lists_claims_figures_and_runs(tmp_path):
    ablation_sweep(tmp_path / "abl", lambda f, la: 0.0, n_layers=4)
    init_sweep(tmp_path / "init", small_drop=0.0, large_drop=0.3)
    failed = tmp_path / "init" / "99"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "run.log").write_text("[ERROR] - ValueError: something went wrong\n")
    out = build_report([tmp_path / "abl", tmp_path / "init"], tmp_path / "r" / "report.html")
    page = out.read_text()
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing fetched from the network
    assert page.count("data:image/png;base64,") == 2  # the heatmap and the init-scale figure
    for c in CLAIMS:
        assert c.name.replace("'", "&#x27;") in page
    assert "failed jobs</th><td>1 " in page and "ValueError: something went wrong" in page
    assert "reproduced" in page and "Not measured by these rows:" in page
    assert str(tmp_path / "abl") in page


LAYER_CLAIMS = {
    "single-layer removal costs little",
    "all adapters removed: majority class",
    "lower layers matter less",
}
INIT_CLAIMS = ["init std ≤ 1e-2 is robust", "larger init std degrades"]
# The claims a layer-ablation sweep cannot judge, by the study whose rows would.
OTHER_STUDIES = {
    "bottleneck": ["sizes 8/64/256 perform alike"],
    "tradeoff": ["adapters close to full fine-tuning", "LayerNorm-only costs a few points"],
    "variants": ["no variant beats the plain adapter"],
    "placement": ["lower layers' adapters can be dropped"],
}


def claims_section(page: str) -> tuple[set[str], str]:
    """The claims in the report's claims table, and its line of those not measured (as text, tags removed)."""
    section = page.split("<h2>What the paper claimed, and what these runs measured</h2>")[1].split("<h2>")[0]
    listed = {html.unescape(name) for name in re.findall(r"<tr><td><b>(.*?)</b>", section)}
    line = re.search(r"Not measured by these rows:(.*?)</p>", section)
    return listed, html.unescape(re.sub(r"<[^>]+>", "", line.group(1))) if line else ""


def test_a_layer_ablation_report_tables_only_the_claims_its_rows_measure(tmp_path):
    """The main job (no study: `ablate.first=0..L-1 ablate.last=0..L-1`) judges the three layer claims; the
    others are one line, each with the study that would measure it, and no row says "no data"."""
    ablation_sweep(tmp_path / "main", lambda f, la: 0.0, n_layers=4, study=None)
    page = build_report([tmp_path / "main"], tmp_path / "main.html").read_text()
    listed, line = claims_section(page)
    assert listed == LAYER_CLAIMS
    for study, names in {"init_scale": INIT_CLAIMS, **OTHER_STUDIES}.items():
        assert f"{', '.join(names)} — study={study}" in line
    assert line.count(" — study=") == 5 and "no data" not in page
    assert "3 of the 10 claims (Houlsby et al.'s, and AdapterDrop's on adapter placement) measured" in page


def test_a_studys_rows_move_its_claims_into_the_table(tmp_path):
    ablation_sweep(tmp_path / "main", lambda f, la: 0.0, n_layers=4, study=None)
    init_sweep(tmp_path / "init", small_drop=0.0, large_drop=0.3)
    page = build_report([tmp_path / "main", tmp_path / "init"], tmp_path / "both.html").read_text()
    listed, line = claims_section(page)
    assert listed == LAYER_CLAIMS | set(INIT_CLAIMS)
    assert "study=init_scale" not in line and not any(name in line for name in INIT_CLAIMS)
    for study, names in OTHER_STUDIES.items():
        assert f"{', '.join(names)} — study={study}" in line
    # the table holds exactly the claims that got a verdict from these rows
    everything = evaluate_claims(load_runs([tmp_path / "main", tmp_path / "init"]).table)
    assert set(everything.loc[everything["verdict"] != "no data", "claim"]) == listed


def test_a_quick_preset_says_so_in_the_report_and_figure_titles(tmp_path):
    from analysis.plots import figure_title

    sweep = ablation_sweep(tmp_path / "abl", lambda f, la: 0.0, n_layers=3)
    rows = pd.DataFrame(sweep.rows)
    assert "preset" not in figure_title("heatmap", rows)
    page = build_report([tmp_path / "abl"], tmp_path / "full.html").read_text()
    assert "quick preset" not in page
    pd.DataFrame([{**r, "preset": "quick"} for r in sweep.rows]).to_csv(tmp_path / "abl" / "results.csv")
    quick = load_runs([tmp_path / "abl"]).table
    assert figure_title("heatmap", quick) == "Quick preset: a small version of the study, not its result"
    assert figure_title("init_scale", quick).endswith(
        "\nQuick preset: a small version of the study, not its result"
    )
    page = build_report([tmp_path / "abl"], tmp_path / "quick.html").read_text()
    assert "reproduced (quick preset: a small version of the study, not its result)</h1>" in page
    assert "<th>preset</th><td>quick preset: fewer jobs and shorter training than the study</td>" in page


def test_cli_report_and_help(tmp_path):
    init_sweep(tmp_path / "init", small_drop=0.0, large_drop=0.3)
    done = subprocess.run([sys.executable, "-m", "analysis", "report", str(tmp_path / "init"), "--out",
                           str(tmp_path / "x.html")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.html").read_text().startswith("<!DOCTYPE html>")
    helped = subprocess.run([sys.executable, "-m", "analysis", "--help"], capture_output=True, text=True)
    lines = helped.stdout.splitlines()
    for command in ("report", "compare", "figures", "heatmap", "table", "ci"):
        assert sum(line.strip().startswith(command + " ") for line in lines) == 1


def test_models_at_the_majority_class_cannot_test_a_claim(tmp_path):
    """Two collapsed models agree exactly; that is no evidence that adapters match full fine-tuning."""
    sweep = Sweep(tmp_path / "s", "tradeoff")
    majority = np.zeros(N, dtype=np.int64)  # the majority label everywhere: accuracy 0.6
    for seed in (0, 1):
        sweep.job(majority, method="full", variant=None, adapter_size=None, init_std=None,
                  trained_params=100_000, seed=seed)  # fmt: skip
        sweep.job(majority, adapter_size=64, trained_params=3000, seed=seed)
    row = claim(evaluate_claims(load_runs([tmp_path / "s"]).table), "adapters close to full fine-tuning")
    assert row["verdict"].tolist() == ["inconclusive"] and row["estimate"].isna().all()
    assert "cannot test the claim" in row["measured"].iloc[0]


def test_the_header_says_which_precisions_ran_and_warns_where_seeds_mix_them(tmp_path):
    """Training and evaluation may run in different precisions (eval.precision=auto): the header says which.
    Seeds trained in different precisions (two machines) are averaged by every figure, so it says so."""
    sweep = ablation_sweep(tmp_path / "abl", lambda f, la: 0.0, n_layers=3, seeds=(0, 1, 2))

    def page(precision_of_seed) -> str:
        rows = [{**r, "train_precision": precision_of_seed(r["seed"]), "eval_precision": "bf16",
                 "device": "cpu"} for r in sweep.rows]  # fmt: skip
        pd.DataFrame(rows).to_csv(sweep.path / "results.csv", index=False)
        return build_report([sweep.path], tmp_path / "report.html").read_text()

    one = page(lambda seed: "fp32")
    assert (
        "<th>precision</th><td>training: fp32 (3 trainings); evaluation: bf16 (18 rows); device: cpu" in one
    )
    assert "Mixed training precisions" not in one
    mixed = page(lambda seed: "bf16" if seed == 2 else "fp32")
    assert "training: bf16 (1 training), fp32 (2 trainings); evaluation: bf16 (18 rows)" in mixed
    warning = mixed.split("Mixed training precisions")[1].split("</ul>")[0]
    assert (
        "layer_ablation · tiny · sst</b>: bf16: seed 2; fp32: seeds 0, 1; 1 of its 1 training settings"
        in warning
    )


def test_precision_mix_tells_averaged_seeds_from_settings_that_differ():
    from analysis.select import precision_mix

    def row(std, seed, precision, study="init_scale"):
        return {"study": study, "model": "tiny", "task": "sst", "method": "adapters", "init_std": std,
                "seed": seed, "train_precision": precision}  # fmt: skip

    apart = pd.DataFrame([row(1e-3, s, "fp32") for s in (0, 1)] + [row(1e-2, s, "bf16") for s in (0, 1)])
    assert precision_mix(apart) == [{"study": "init_scale", "model": "tiny", "task": "sst",
                                     "seeds": {"bf16": [0, 1], "fp32": [0, 1]}, "points": 2, "averaged": 0}]  # fmt: skip
    together = pd.concat([apart, pd.DataFrame([row(1e-3, 2, "bf16"), row(1e-3, 0, "bf16", study="other")])])
    assert [(m["study"], m["averaged"], m["points"]) for m in precision_mix(together)] == [
        ("init_scale", 1, 2)
    ]


def test_claims_command_puts_each_directorys_verdicts_side_by_side(tmp_path, capsys):
    """`python -m analysis claims A B`: each directory judged apart (as its own report would), one column
    each; a comma joins directories judged together; the claims no directory measures are left out."""
    from analysis.__main__ import main

    j = lower_block(6)
    ablation_sweep(tmp_path / "a", lambda f, la: 0.2 if la >= 6 - j else 0.0, 6)  # the top layers matter
    ablation_sweep(tmp_path / "b", lambda f, la: 0.2 if f < j else 0.0, 6)  # the lower layers matter
    init_sweep(tmp_path / "i", small_drop=0.0, large_drop=0.3)
    assert main(["claims", str(tmp_path / "a"), f"{tmp_path / 'b'},{tmp_path / 'i'}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"A = {tmp_path / 'a'}", f"B = {tmp_path / 'b'},{tmp_path / 'i'}"]
    table = {c.name: line for c in CLAIMS for line in out[3:] if line.strip().startswith(c.name)}
    ours = evaluate_claims(load_runs([tmp_path / "b"]).table).set_index("claim")
    lower = ours.loc["lower layers matter less"]
    assert (
        f"{lower['estimate']:.2f} [{lower['lo']:.2f}, {lower['hi']:.2f}] %: not reproduced"
        in table["lower layers matter less"]
    )
    assert table["lower layers matter less"].count(": reproduced") == 1  # A's
    init = table["init std ≤ 1e-2 is robust"]  # only B holds init-scale rows: A's column reads "-"
    assert " - " in init and init.endswith(": reproduced")
    assert "sizes 8/64/256" not in "\n".join(out)
