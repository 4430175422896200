"""Which examples a layer range breaks, on synthetic sweeps whose flips are known by construction: the join of
predictions to the examples file, flips and fragility as recounts, agreement against an exact chance level,
the id join across sweeps, the `examples` command and the report's clickable heatmap data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset
from test_report import N, Sweep, wrong

from ablation.config import TaskConfig
from ablation.data import example_ids, examples_table
from ablation.results import EXAMPLES, record_examples
from analysis.__main__ import main
from analysis.collect import load_runs
from analysis.examples import (
    TextsMissing,
    agreement,
    cell_flips,
    cross_agreement,
    examples_of,
    flip_counts,
    fragility,
    named_spans,
    seed_agreement,
)
from analysis.interactive import panel_data
from analysis.report import build_report
from analysis.select import ablated
from analysis.stats import cell_intervals

LAYERS = 4


def texts(n: int = N) -> list[str]:
    """Distinct sentences of 1..12 words (example i has 1 + i % 12)."""
    return [" ".join([f"w{i}"] + ["word"] * (i % 12)) for i in range(n)]


def flipped(first: int, last: int, seed: int) -> tuple[int, int]:
    """The examples (offset, count) cell first..last flips in seed `seed`: more layers flip more, and every
    seed flips the same block, shifted by 5 examples per seed (so the seeds agree, not fully)."""
    return 200 + 5 * seed, 20 * (last - first + 1)


def example_sweep(path: Path, seeds=(0, 1, 2), order: np.ndarray | None = None) -> Sweep:
    """Every cell of a LAYERS-layer model; the examples file written as a run writes it. `order` permutes the
    validation examples (the same examples in another order: the join must go by id)."""
    sweep = Sweep(path, "layer_ablation", task="rotten_tomatoes", deferred=True)
    order = np.arange(N) if order is None else order
    table = pd.DataFrame(
        {"id": example_ids(pd.DataFrame({"text": texts()})), "text": texts(), "label": sweep.truth}
    )
    table["label_name"] = np.where(table["label"] == 1, "fresh", "rotten")
    table = table.iloc[order].reset_index(drop=True)
    sweep.truth = table["label"].to_numpy()
    name = record_examples(path, "rotten_tomatoes", table)
    back = np.argsort(order)  # position of original example i in this order
    for seed in seeds:
        base = wrong(np.asarray(table["label"].iloc[back]), 0.1, offset=seed)  # in the original order
        for first in range(LAYERS):
            for last in range(first, LAYERS):
                offset, count = flipped(first, last, seed)
                ablated_ = base.copy()
                ablated_[offset : offset + count] = 1 - ablated_[offset : offset + count]
                sweep.job(
                    base[order],
                    ablated_[order],
                    seed=seed,
                    first=first,
                    last=last,
                    examples=name,
                    train_key=f"key-{seed}",
                )
    sweep.save()
    return sweep


def recount(sweep: Path, rows: pd.DataFrame) -> dict[str, set[str]]:
    """Lost and gained example ids of `rows`, straight from each job's predictions.npz and the examples file."""
    ids = pd.read_csv(next((sweep / EXAMPLES).glob("*.csv")), dtype=str)["id"].to_numpy()
    out = {"lost": set(), "gained": set()}
    for job in rows["job_dir"]:
        with np.load(sweep / str(job) / "predictions.npz") as p:
            right, now = p["intact"] == p["labels"], p["ablated"] == p["labels"]
        out["lost"] |= set(ids[right & ~now])
        out["gained"] |= set(ids[~right & now])
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return example_sweep(tmp_path_factory.mktemp("examples") / "sweep").path


@pytest.fixture(scope="module")
def panel(sweep) -> pd.DataFrame:
    return ablated(load_runs([sweep]).table)


# --- what the run writes ----------------------------------------------------------------------------------


def test_ids_are_the_sha256_of_the_text_fields_and_stay_unique_for_repeats():
    import hashlib

    frame = pd.DataFrame({"a": ["x", "y", "x", "x"], "b": ["1", "2", "1", "1"]})
    ids = example_ids(frame)
    assert ids[0] == hashlib.sha256(b"x\x1f1").hexdigest()[:16]
    assert ids[2:] == [f"{ids[0]}#2", f"{ids[0]}#3"] and len(set(ids)) == 4
    assert example_ids(frame.iloc[:2]) == ids[:2]  # stable: an example's id depends on its text alone


def test_the_examples_table_keeps_order_texts_labels_and_label_names():
    data = Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]})
    table = examples_table(data, TaskConfig(name="rotten_tomatoes", artifact="rotten-tomatoes"))
    assert table["text"].tolist() == ["good", "bad"] and table["label"].tolist() == [1, 0]
    assert table["label_name"].tolist() == ["fresh", "rotten"]
    unnamed = examples_table(data, TaskConfig(name="toy", source="glue", glue_name="sst2"))
    assert "label_name" not in unnamed.columns  # a Dataset without ClassLabel names: the numbers only


def test_texts_with_carriage_returns_quotes_and_commas_read_back_as_written(tmp_path):
    """Tweets hold bare carriage returns: every text is quoted, so none ends its row early for a reader."""
    nasty = ["a\rb", "line\nbreak", 'quote " and , comma', "ünïcödé\r\n", "", "  spaces  "]
    sweep = Sweep(tmp_path / "s", "layer_ablation", task="tweets")
    sentences = [*nasty, *texts()[len(nasty) :]]
    table = pd.DataFrame({"id": example_ids(pd.DataFrame({"text": sentences})), "text": sentences,
                          "label": sweep.truth})  # fmt: skip
    name = record_examples(sweep.path, "tweets", table)
    sweep.job(sweep.truth, first=0, last=0, examples=name)
    back = examples_of(load_runs([sweep.path]).table)
    assert back["text"].tolist() == sentences and back["id"].tolist() == table["id"].tolist()


# --- the join and the flips ---------------------------------------------------------------------------


def test_the_join_equals_a_recount_from_predictions_for_every_cell(sweep, panel):
    examples = examples_of(panel)
    for (first, last), rows in panel.groupby(["first", "last"]):
        table = cell_flips(panel, first, last, examples)
        expected = recount(sweep, rows)
        assert set(table.loc[table["lost"] > 0, "id"]) == expected["lost"]
        assert set(table.loc[table["gained"] > 0, "id"]) == expected["gained"]
        # the counts give the accuracy change exactly
        lost, gained = table["lost"].sum(), table["gained"].sum()
        assert (gained - lost) / N == pytest.approx((rows["accuracy"] - rows["intact_accuracy"]).sum())


def test_a_cell_lists_its_examples_most_consistent_first_with_their_texts(panel):
    table = cell_flips(panel, 0, 0, examples_of(panel))
    # seed s flips 200+5s .. 219+5s: 210..219 in all three seeds, the edges in fewer
    assert set(table.loc[table["lost"] + table["gained"] == 3, "position"]) == set(range(210, 220))
    most = np.maximum(table["lost"], table["gained"]).to_numpy()
    assert (np.diff(most) <= 0).all()
    assert table["text"].tolist() == [texts()[p] for p in table["position"]]


def test_flip_counts_of_the_named_spans(panel):
    spans = named_spans(panel)
    assert spans == {"all layers 0..3": (0, 3), "bottom half 0..1": (0, 1), "top half 2..3": (2, 3)}
    counts = flip_counts(panel, spans).set_index("span")
    flips = counts["lost_per_seed"] + counts["gained_per_seed"]
    assert flips.tolist() == [80, 40, 40]  # 20 per layer, every seed
    assert counts.loc["all layers 0..3", "lost_all"] + counts.loc["all layers 0..3", "gained_all"] == 70


def test_fragility_is_the_share_of_cells_times_seeds_that_flip_an_example(panel):
    table = fragility(panel, examples_of(panel)).set_index("position")
    runs = len(panel)
    assert (table["runs"] == runs).all()
    assert table.loc[0, "fragility"] == 0.0  # never in a flipped block
    # example 210 is in every seed's block of every cell (each starts at 200 + 5 s and spans >= 20)
    assert table.loc[210, "fragility"] == 1.0
    assert table.loc[205, "flips"] == 2 * 10  # seeds 0 and 1 reach it in each of the 10 cells
    assert table.loc[210, "words"] == 1 + 210 % 12


def test_a_training_two_sweeps_hold_counts_once(tmp_path, sweep, panel):
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    both = ablated(load_runs([sweep, copy]).table)
    assert len(both) == 2 * len(panel)
    assert cell_flips(both, 0, 3).equals(cell_flips(panel, 0, 3))
    assert fragility(both).equals(fragility(panel))
    assert seed_agreement(both).equals(seed_agreement(panel))


# --- agreement against chance ---------------------------------------------------------------------------


def _sets(rng: np.random.Generator, runs: int, n: int, k: int, same: bool):
    right = np.ones((runs, n), dtype=bool)
    lost = np.zeros((runs, n), dtype=bool)
    for r in range(runs):
        lost[r, np.arange(k) if same else rng.choice(n, k, replace=False)] = True
    return lost, np.zeros_like(lost), right


def test_identical_flipped_sets_agree_fully_and_above_chance():
    found = agreement(_sets(np.random.default_rng(0), 3, 1000, 100, same=True))
    assert found["agreement"] == 1.0 and found["pairs"] == 3
    assert found["agreement"] > found["chance_hi"]


def test_the_chance_level_is_the_expected_jaccard_of_random_sets_of_those_sizes():
    """Two runs losing 100 of 1000 examples at random: the intersection is hypergeometric (mean 10), and
    the expected Jaccard index E[K / (200 - K)] follows from its distribution exactly."""
    from scipy.stats import hypergeom

    k = np.arange(0, 101)
    exact = float(np.sum(hypergeom(1000, 100, 100).pmf(k) * k / (200 - k)))
    found = agreement(_sets(np.random.default_rng(1), 2, 1000, 100, same=True))
    assert found["chance"] == pytest.approx(exact, abs=0.004)
    independent = agreement(_sets(np.random.default_rng(2), 2, 1000, 100, same=False))
    assert independent["agreement"] == pytest.approx(exact, abs=0.03)


def test_seed_agreement_per_cell(panel):
    table = seed_agreement(panel).set_index(["first", "last"])
    assert len(table) == LAYERS * (LAYERS + 1) // 2 and (table["seeds"] == 3).all()
    # one layer: blocks of 20 shifted by 5 and 10: Jaccard 15/25, 15/25, 10/30
    assert table.loc[(0, 0), "agreement"] == pytest.approx((0.6 + 0.6 + 1 / 3) / 3)
    assert table["above_chance"].all()


def test_two_sweeps_are_joined_by_example_id_whatever_their_order(tmp_path, sweep, panel):
    order = np.random.default_rng(5).permutation(N)
    other = ablated(load_runs([example_sweep(tmp_path / "shuffled", order=order).path]).table)
    table = cross_agreement(panel, other)
    within = seed_agreement(panel).set_index(["first", "last"])
    # the same flips in another order: A against B is A's seeds against themselves and each seed with itself
    for _, r in table.iterrows():
        own = within.loc[(r["first"], r["last"]), "agreement"]
        assert r["agreement"] == pytest.approx((3 * 1.0 + 6 * own) / 9)
        assert r["within_a"] == pytest.approx(r["within_b"])


# --- the command and the report ---------------------------------------------------------------------------


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m analysis ARGS`, in this process (the same `main` the module runs)."""
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_the_examples_command_prints_counts_then_the_examples(sweep, tmp_path, capsys):
    out = cli(
        capsys, "examples", str(sweep), "--cell", "0..1", "--top", "3", "--csv", str(tmp_path / "f.csv")
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(
        "tiny · rotten_tomatoes · adapters, 3 seeds (0, 1, 2), 1000 examples: cell 0..1"
    )
    assert re.match(
        r"lost \(intact right, ablated wrong\): [\d.]+ per seed \(rotten [\d.]+, fresh [\d.]+\), \d+ in at least one seed",
        lines[2],
    )
    assert "agree: Jaccard" in lines[4] and "above chance" in lines[4]
    table = pd.read_csv(tmp_path / "f.csv")
    assert len(table) == len(set(table["id"])) and len(table) > 3
    listed = [ln for ln in lines if re.match(r"\s*\d/3 ", ln)]
    assert len(listed) <= 6  # --top 3 per part
    fragile = cli(capsys, "examples", str(sweep), "--seed", "0", "1", "--where", "variant=plain")
    assert fragile.returncode == 0, fragile.stderr
    assert "2 seeds (0, 1)" in fragile.stdout and "most fragile" in fragile.stdout


def test_a_sweep_whose_texts_were_removed_says_so_in_one_line(tmp_path, sweep, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    shutil.rmtree(copy / EXAMPLES)
    out = cli(capsys, "examples", str(copy), "--cell", "0..0")
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert "texts were removed" in out.stderr and "is missing" in out.stderr
    with pytest.raises(TextsMissing):
        examples_of(ablated(load_runs([copy]).table))


def test_bad_cells_and_filters_are_one_line_errors(sweep, capsys):
    backwards = cli(
        capsys, "examples", str(sweep), "--cell", "3..1"
    )  # argparse: its usage, then the one error line
    assert backwards.returncode == 2 and "FIRST <= LAST" in backwards.stderr.strip().splitlines()[-1]
    for args, words in (
        (["--cell", "0..9"], "no cell 0..9"),
        (["--method", "lora"], "no rows with --method lora"),
        (["--where", "variant=normed"], "no rows with --where variant=normed (their variant: plain)"),
        (["--where", "nothing=1"], "no column 'nothing'"),
    ):
        out = cli(capsys, "examples", str(sweep), *args)
        assert out.returncode == 2 and words in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_the_report_s_clickable_heatmap_holds_each_cell_s_flips_and_numbers(sweep, panel, tmp_path):
    page = build_report([sweep], tmp_path / "report.html").read_text()
    assert "Which examples the layer ranges break" in page
    assert not re.search(r"(src|href)=['\"](?!data:)|@import|url\(", page)  # nothing fetched: works offline
    blobs = re.findall(r"<script type='application/json' class='data'>(.*?)</script>", page, re.S)
    assert len(blobs) == 1
    data = json.loads(blobs[0])
    assert data == json.loads(json.dumps(panel_data(panel, data["title"])))
    ids = np.array(data["ids"])
    table = cell_intervals(panel)
    for name, cell in data["cells"].items():
        rows = panel[(panel["first"] == cell["first"]) & (panel["last"] == cell["last"])]
        expected = recount(sweep, rows)
        assert set(ids[[p for p, _ in cell["lost"]]]) == expected["lost"], name
        assert set(ids[[p for p, _ in cell["gained"]]]) == expected["gained"], name
        assert cell["accuracy"] == pytest.approx(100 * rows["accuracy"].mean(), abs=0.05 + 1e-9)
        # the number in the SVG is the cell table's, rounded once where it is shown (not 1.4508 -> 1.45 -> 1.4)
        exact = table.set_index(["first", "last"]).loc[(cell["first"], cell["last"]), "relative_decrease"]
        shown = re.search(rf"data-cell='{name}'.*?>(-?[\d.]+)</text>", page, re.S).group(1)
        assert shown == f"{exact:.1f}", name
