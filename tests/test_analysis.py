"""Tests for the torch-free `analysis` package, on a synthetic sweep with a known answer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from ablation.results import COLUMNS, column_types
from analysis.__main__ import format_table, main
from analysis.collect import TEXT_DTYPE, load_predictions, load_results, load_runs
from analysis.plots import heatmap, heatmap_figure
from analysis.select import split_panels
from analysis.stats import layer_matrix, mean_sem, paired_bootstrap_ci

REPO = Path(__file__).resolve().parents[1]
N_LAYERS = 4
INTACT = 0.8


def known_decrease(first: int, last: int) -> float:
    """Distinct in every cell, so a transposed or shifted matrix cannot pass."""
    return (last - first + 1) / 10 + first / 100


def synthetic_results(task: str = "rte", model: str = "tiny", seeds: tuple[int, ...] = (0,)) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for first in range(N_LAYERS):
            for last in range(first, N_LAYERS):
                decrease = known_decrease(first, last) + seed / 1000
                accuracy = INTACT * (1 - decrease)
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "seed": seed,
                        "first": first,
                        "last": last,
                        "positions": "both",
                        "accuracy": accuracy,
                        "intact_accuracy": INTACT,
                        "relative_decrease": decrease,
                        "metric_name": "accuracy",
                        "metric": accuracy,
                        "intact_metric": INTACT,
                        "train_key": f"key{seed}",
                        "n_eval": 100,
                        "job_dir": str(len(rows)),
                    }
                )
    return pd.DataFrame(rows)


def write_sweep(sweep: Path, df: pd.DataFrame, csv: bool = True) -> Path:
    """Lay out a sweep dir as the Hydra multirun writes it: results.csv plus one dir per job."""
    sweep.mkdir(parents=True, exist_ok=True)
    if csv:
        df.to_csv(sweep / "results.csv", index=False)
    for row in df.to_dict("records"):
        job = sweep / row["job_dir"]
        job.mkdir(exist_ok=True)
        nested = {
            "task": row["task"],
            "model": row["model"],
            "seed": row["seed"],
            "ablation": {"first": row["first"], "last": row["last"], "positions": row["positions"]},
            "scores": {k: row[k] for k in ("accuracy", "intact_accuracy", "relative_decrease", "metric")},
            "metric_name": row["metric_name"],
            "intact_metric": row["intact_metric"],
            # "seed" also nested here: the clash keeps its dotted name and leaves the top-level seed alone.
            "train": {"key": row["train_key"], "seed": 123},
            "train_key": row["train_key"],
            "n_eval": row["n_eval"],
        }
        (job / "result.json").write_text(json.dumps(nested))
    return sweep


def as_loaded(df: pd.DataFrame) -> pd.DataFrame:
    """What load_results must return for `df`: every schema column in order, one dtype per kind."""
    dtypes = {"text": TEXT_DTYPE, "int": "Int64", "float": "float64", "bool": "boolean"}
    out = {}
    for col, kind in column_types().items():
        values = df[col] if col in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
        out[col] = values.astype(dtypes[kind])
    return pd.DataFrame(out)[list(COLUMNS)]


def draw(df: pd.DataFrame, **kwargs) -> tuple[pd.DataFrame, Figure]:
    fig = Figure()
    matrix = heatmap(df, fig.add_subplot(), **kwargs)
    return matrix, fig


def test_matrix_orientation_index_is_first_columns_are_last():
    df = synthetic_results()
    matrix, _ = draw(df)
    assert matrix.index.name == "first" and matrix.columns.name == "last"
    assert list(matrix.index) == list(range(N_LAYERS)) and list(matrix.columns) == list(range(N_LAYERS))
    for row in df.itertuples():
        assert matrix.loc[row.first, row.last] == pytest.approx(row.relative_decrease)
    # The top-right cell is "all adapters removed": the largest span.
    assert matrix.loc[0, N_LAYERS - 1] == pytest.approx(known_decrease(0, N_LAYERS - 1))


def test_lower_triangle_masked_upper_filled_and_drawn_so():
    matrix, fig = draw(synthetic_results())
    values = matrix.to_numpy()
    lower = np.tril(np.ones_like(values, dtype=bool), k=-1)
    assert np.isnan(values[lower]).all()
    assert np.isfinite(values[~lower]).all()
    ax = fig.axes[0]
    mesh = ax.collections[0].get_array()
    assert np.ma.count_masked(mesh) == lower.sum()
    # One annotation per filled cell, in percent.
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == (~lower).sum()
    assert f"{100 * known_decrease(0, 0):.1f}" in texts
    # One outline per diagonal cell, sitting on (layer, layer).
    outlines = [p.get_xy() for p in ax.patches]
    assert sorted(tuple(map(float, xy)) for xy in outlines) == [(i, i) for i in range(N_LAYERS)]


def test_diagonal_is_single_layer_removal():
    df = synthetic_results()
    matrix = layer_matrix(df)
    single = df[df["first"] == df["last"]].set_index("first")["relative_decrease"]
    np.testing.assert_allclose(np.diag(matrix.to_numpy()), single.sort_index().to_numpy())


def test_seeds_are_averaged_and_panels_kept_apart():
    df = synthetic_results(seeds=(0, 2))
    assert layer_matrix(df).loc[1, 2] == pytest.approx(known_decrease(1, 2) + 0.001)
    both = pd.concat([synthetic_results("rte"), synthetic_results("cola")], ignore_index=True)
    with pytest.raises(ValueError, match="mixes"):
        layer_matrix(both)
    assert sorted(p["task"].iloc[0] for p in split_panels(both)) == ["cola", "rte"]


def test_heatmap_figure_writes_png_and_pdf(tmp_path):
    df = pd.concat([synthetic_results("rte"), synthetic_results("cola")], ignore_index=True)
    paths = heatmap_figure(df, tmp_path / "figs" / "fig6")
    assert paths == [tmp_path / "figs" / "fig6.png", tmp_path / "figs" / "fig6.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def test_load_results_round_trips_csv_and_sweep_dir(tmp_path):
    df = synthetic_results()
    sweep = write_sweep(tmp_path / "sweep", df)
    expected = as_loaded(df)
    pd.testing.assert_frame_equal(load_results(sweep / "results.csv"), expected)
    pd.testing.assert_frame_equal(load_results(sweep), expected)
    # The synthetic table predates most schema columns: they are there, empty, with their kind's dtype.
    loaded = load_results(sweep)
    assert list(loaded.columns) == list(COLUMNS)
    assert loaded["method"].isna().all() and loaded["diverged"].dtype == "boolean"
    assert loaded["k"].dtype == "Int64" and loaded["seed"].tolist() == df["seed"].tolist()


def test_load_results_from_result_json_only(tmp_path):
    df = synthetic_results()
    sweep = write_sweep(tmp_path / "sweep", df, csv=False)
    loaded = load_results(sweep)
    assert list(loaded.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert (loaded["train.seed"] == 123).all()
    loaded = loaded.sort_values(["first", "last"]).reset_index(drop=True)[list(COLUMNS)]
    pd.testing.assert_frame_equal(loaded, as_loaded(df))


def full_row(**fields) -> dict:
    """One row with every schema column, as the experiment side writes it (adapters, intact model)."""
    row = {c: None for c in COLUMNS}
    row.update(study="init_scale", task="rte", model="tiny", method="adapters", variant="plain", seed=0,
               adapter_size=64, init_std=1e-3, positions="both", accuracy=0.7, intact_accuracy=0.7,
               relative_decrease=0.0, metric_name="accuracy", metric=0.7, majority_rate=0.53, n_eval=100,
               diverged=False, trained_params=1000, total_params=10_000, job_dir="007")  # fmt: skip
    row.update(fields)
    return row


def test_missing_values_stay_missing_with_their_kind(tmp_path):
    gaps = full_row(study=None, method="top_k", k=2, variant=None, adapter_size=None, init_std=None,
                    diverged=True, diverged_step=17, accuracy=float("nan"), job_dir="a/3")  # fmt: skip
    rows = [full_row(), gaps]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(sweep / "results.csv", index=False)
    loaded = load_results(sweep)
    # Text: missing is NaN, never the string "nan"; a numeric-looking path keeps its zeros.
    assert loaded["study"].tolist()[0] == "init_scale" and pd.isna(loaded["study"].iloc[1])
    assert "nan" not in loaded["variant"].tolist() and loaded["job_dir"].tolist() == ["007", "a/3"]
    # Ints with gaps are nullable Int64, not floats; bools with or without gaps are nullable booleans.
    assert loaded["k"].dtype == "Int64" and pd.isna(loaded["k"].iloc[0]) and loaded["k"].iloc[1] == 2
    assert loaded["adapter_size"].tolist()[0] == 64 and pd.isna(loaded["adapter_size"].iloc[1])
    assert loaded["first"].dtype == "Int64" and loaded["first"].isna().all()
    assert loaded["diverged"].dtype == "boolean" and loaded["diverged"].tolist() == [False, True]
    assert loaded["diverged_step"].tolist()[1] == 17 and np.isnan(loaded["accuracy"].iloc[1])
    pd.testing.assert_series_equal(loaded.dtypes, as_loaded(loaded).dtypes)


def test_result_json_of_the_new_writer_and_bad_values(tmp_path):
    sweep = tmp_path / "sweep"
    for job, diverged in enumerate([False, True]):
        (sweep / str(job)).mkdir(parents=True)
        record = {
            **full_row(seed=job, diverged=diverged, job_dir=str(job)),
            "config": {"seed": 5, "lr": 1e-3},
        }
        (sweep / str(job) / "result.json").write_text(json.dumps(record))
    loaded = load_results(sweep)
    assert loaded["diverged"].tolist() == [False, True] and loaded["seed"].tolist() == [0, 1]
    assert loaded["config.seed"].tolist() == [5, 5] and loaded["lr"].isna().all()
    (sweep / "results.csv").write_text("seed,first\n0,1.5\n")
    with pytest.raises(ValueError, match=r"results\.csv.*'first'.*int"):
        load_results(sweep)
    (sweep / "results.csv").write_text("seed,diverged\n0,maybe\n")
    with pytest.raises(ValueError, match=r"'diverged'.*maybe"):
        load_results(sweep)


def test_reads_what_the_writer_writes(tmp_path):
    """row -> write_job -> record_row / rebuild_table -> load_results keeps every field, typed by its kind."""
    from ablation.results import rebuild_table, record_row, write_job

    intact = full_row(seed=0, job_dir="0", study=None)
    failed = full_row(seed=1, job_dir="1", method="top_k", k=3, variant=None, diverged=True, diverged_step=4,
                      accuracy=float("nan"), trained_now=True)  # fmt: skip
    rows = [intact, failed]
    preds = {"labels": np.zeros(3), "intact": np.zeros(3), "ablated": np.zeros(3)}
    for row in rows:
        write_job(tmp_path / row["job_dir"], row, {"versions": {"python": "3"}}, preds)
    from_json = load_results(tmp_path)
    for row in rows:
        record_row(tmp_path / "results.csv", row)
    from_rows = load_results(tmp_path)
    rebuild_table(tmp_path)
    from_csv = load_results(tmp_path)
    pd.testing.assert_frame_equal(from_rows, from_csv)
    pd.testing.assert_frame_equal(from_csv, from_json[list(COLUMNS)])
    assert pd.isna(from_csv.loc[0, "study"]) and from_csv.loc[1, "k"] == 3 and pd.isna(from_csv.loc[0, "k"])
    assert from_csv["diverged"].tolist() == [False, True] and np.isnan(from_csv.loc[1, "accuracy"])
    assert from_csv["job_dir"].tolist() == ["0", "1"] and from_json.loc[0, "versions.python"] == "3"


def test_load_results_several_sweeps_and_missing_path(tmp_path):
    a = write_sweep(tmp_path / "a", synthetic_results("rte"))
    b = write_sweep(tmp_path / "b", synthetic_results("cola"))
    both = load_results([a, b])
    assert len(both) == 2 * len(synthetic_results())
    assert set(both["sweep"]) == {str(a), str(b)}
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_results(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"results\.csv"):
        load_results(tmp_path / "empty")


def test_load_predictions(tmp_path):
    job = tmp_path / "3"
    job.mkdir()
    arrays = {"labels": np.array([0, 1, 1]), "intact": np.array([0, 1, 0]), "ablated": np.array([1, 1, 0])}
    np.savez(job / "predictions.npz", **arrays)
    loaded = load_predictions(tmp_path, "3")
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_paired_bootstrap_brackets_true_difference():
    rng = np.random.default_rng(1)
    n = 4000
    labels = rng.integers(0, 3, n)
    wrong = (labels + 1) % 3
    a = np.where(rng.random(n) < 0.8, labels, wrong)
    b = np.where(rng.random(n) < 0.7, labels, wrong)
    diff, lo, hi = paired_bootstrap_ci(labels, a, b)
    assert diff == pytest.approx((a == labels).mean() - (b == labels).mean())
    assert lo < 0.1 < hi and lo < diff < hi
    assert hi - lo < 0.06
    assert paired_bootstrap_ci(labels, a, b) == (diff, lo, hi)


def test_paired_bootstrap_identical_predictions_is_zero():
    labels = np.array([0, 1, 1, 0, 1])
    preds = np.array([0, 1, 0, 0, 0])
    assert paired_bootstrap_ci(labels, preds, preds) == (0.0, 0.0, 0.0)


def test_mean_sem():
    df = pd.DataFrame({"g": ["x", "x", "x", "y"], "v": [1.0, 2.0, 3.0, 5.0]})
    out = mean_sem(df, "g", "v").set_index("g")
    assert out.loc["x", "mean"] == 2.0 and out.loc["x", "n"] == 3
    assert out.loc["x", "sem"] == pytest.approx(1 / np.sqrt(3))
    assert np.isnan(out.loc["y", "sem"])


def test_cli_heatmap_subprocess(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", synthetic_results())
    done = subprocess.run(
        [sys.executable, "-m", "analysis", "heatmap", str(sweep)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(sweep / "heatmap.png"), str(sweep / "heatmap.pdf")]
    assert (sweep / "heatmap.png").stat().st_size > 0 and (sweep / "heatmap.pdf").stat().st_size > 0


def test_cli_table_and_missing_dir(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", synthetic_results())
    assert main(["table", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_table(synthetic_results())
    assert f"{100 * known_decrease(0, N_LAYERS - 1):.1f}" in out
    assert main(["heatmap", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err and "Traceback" not in err


def test_cli_ci_gives_the_reports_intervals_per_cell(tmp_path, capsys):
    from analysis.__main__ import format_intervals
    from analysis.stats import cell_intervals

    labels = np.array([0, 1] * 50)
    rows = []
    for job, (first, last, wrong) in enumerate([(0, 0, 0), (0, 1, 10)]):
        ablated = labels.copy()
        ablated[:wrong] = 1 - ablated[:wrong]  # `wrong` more mistakes than the intact model
        (tmp_path / str(job)).mkdir()
        np.savez(tmp_path / str(job) / "predictions.npz", labels=labels, intact=labels, ablated=ablated)
        rows.append(
            full_row(first=first, last=last, accuracy=1 - wrong / 100, intact_accuracy=1.0, job_dir=str(job))
        )
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(tmp_path / "results.csv", index=False)
    runs = load_runs([tmp_path]).table
    table = format_intervals(runs)
    assert table["drop_points"].tolist() == [0.0, 10.0]
    assert table.loc[0, ["drop_lo", "drop_hi"]].tolist() == [0.0, 0.0]
    assert table.loc[1, "drop_lo"] < 10.0 < table.loc[1, "drop_hi"]
    # the same intervals the report shows for the same cells: one bootstrap path
    report = cell_intervals(runs).round(2)
    pd.testing.assert_frame_equal(table, report.drop(columns="includes_zero"), check_dtype=False)
    assert main(["ci", str(tmp_path)]) == 0
    assert "relative_decrease" in capsys.readouterr().out


# --- cells of every ablation kind: table, ci and compare ---------------------------------------------------

EXAMPLES = np.array([0, 1] * 50)  # 100 validation labels; every intact model gets each one right
CELL_LAYERS = 3
SPANS = [(f, la) for f in range(CELL_LAYERS) for la in range(f, CELL_LAYERS)]
KIND_OFFSET = {"zero": 0, "scale": 20, "mean": 40, "keep": 60}


def mistakes(
    first: int, last: int, kind: str = "zero", alpha: float | None = None, layernorm: str = "trained"
) -> int:
    """Examples the ablated model gets wrong: distinct per span, kind, alpha and LayerNorm choice, so that
    reading the wrong cells cannot give the right numbers."""
    extra = (0 if alpha is None else int(10 * alpha)) + (3 if layernorm == "pretrained" else 0)
    return 10 * (last - first + 1) + first + KIND_OFFSET[kind] + extra


def kind_sweep(path: Path, settings: list[dict]) -> Path:
    """A sweep with every span ablated under each setting (`mistakes`' kind, alpha, layernorm), as the writer
    leaves it: results.csv and each job's predictions.npz. Accuracy 1 - mistakes/100 from an intact 1.0."""
    rows = []
    for setting in settings:
        for first, last in SPANS:
            wrong = mistakes(first, last, **setting)
            ablated = EXAMPLES.copy()
            ablated[:wrong] = 1 - ablated[:wrong]
            job = path / str(len(rows))
            job.mkdir(parents=True)
            np.savez(job / "predictions.npz", labels=EXAMPLES, intact=EXAMPLES, ablated=ablated)
            ablation = {"ablate_kind": setting["kind"], "alpha": setting.get("alpha"),
                        "ablate_layernorm": setting.get("layernorm", "trained")}  # fmt: skip
            rows.append(full_row(study=None, first=first, last=last, accuracy=1 - wrong / 100, intact_accuracy=1.0,
                                 relative_decrease=wrong / 100, job_dir=str(len(rows)), **ablation))  # fmt: skip
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path / "results.csv", index=False)
    return path


def printed_matrix(out: str) -> dict[tuple[int, int], float]:
    """{(first, last): value} from the matrix `table` prints: the row of layer f lists spans f..L-1 in order."""
    values = {}
    for line in out.splitlines():
        tokens = line.split()
        if len(tokens) > 1 and tokens[0].isdigit():
            first = int(tokens[0])
            values.update({(first, first + i): float(v) for i, v in enumerate(tokens[1:])})
    return values


def printed_frame(out: str) -> pd.DataFrame:
    """The table `ci` or `compare` prints (pandas' to_string, no index), read back."""
    return pd.read_csv(io.StringIO(out), sep=r"\s+")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_table_ci_and_compare_read_a_sweep_of_another_kind(tmp_path, capsys):
    mean = kind_sweep(tmp_path / "mean", [{"kind": "mean"}])
    assert main(["table", str(mean)]) == 0
    out = capsys.readouterr().out
    assert "ablate_kind=mean" in out.splitlines()[0]
    assert printed_matrix(out) == {span: mistakes(*span, "mean") for span in SPANS}  # relative decrease (%)
    assert main(["ci", str(mean)]) == 0
    table = printed_frame(capsys.readouterr().out)
    assert list(zip(table["first"], table["last"], strict=True)) == SPANS
    assert table["drop_points"].tolist() == [mistakes(*span, "mean") for span in SPANS]
    assert table["accuracy"].tolist() == [100 - mistakes(*span, "mean") for span in SPANS]
    zero = kind_sweep(tmp_path / "zero", [{"kind": "zero"}])
    assert main(["compare", str(mean), str(zero), "--out", str(tmp_path / "cmp")]) == 0
    paths, summary, table = capsys.readouterr().out.partition(f"{len(SPANS)} of {len(SPANS)} spans differ")
    assert paths.split() == [str(tmp_path / "cmp.png"), str(tmp_path / "cmp.pdf")] and summary
    difference = printed_frame(table.split("\n", 1)[1].split("\n\n")[0])["difference"]
    # then, in one line here (these synthetic sweeps kept no examples), whether they flip the same examples
    assert "Which examples each flips: not compared (" in table and "predate the examples file" in table
    assert difference.tolist() == [KIND_OFFSET["mean"]] * len(SPANS)  # mean minus zero, every span
    assert (tmp_path / "cmp.png").stat().st_size > 0
    # the paper's heatmap stays the removal's, and says where the mean cells are drawn and printed
    assert main(["heatmap", str(mean)]) == 2
    err = one_line_error(capsys)
    assert "no cells of kind zero" in err and "(its kinds: mean)" in err and f"figures {mean}" in err


def test_mixed_kinds_need_a_choice_and_the_choice_picks_its_cells(tmp_path, capsys):
    settings = [{"kind": "zero"}, {"kind": "zero", "layernorm": "pretrained"}, {"kind": "mean"},
                {"kind": "scale", "alpha": 0.5}, {"kind": "scale", "alpha": 1.0}]  # fmt: skip
    sweep = str(kind_sweep(tmp_path / "s", settings))
    for command in (["table", sweep], ["ci", sweep], ["compare", sweep, sweep]):
        assert main(command) == 2
        err = one_line_error(capsys)
        assert "several ablation kinds (mean, scale, zero); choose one with --kind" in err
        assert err.startswith(f"python -m analysis: error: {command[0]}: {sweep}: ")
    assert main(["table", sweep, "--kind", "mean"]) == 0
    assert printed_matrix(capsys.readouterr().out) == {span: mistakes(*span, "mean") for span in SPANS}
    assert main(["table", sweep, "--kind", "zero"]) == 2
    assert "several LayerNorm choices (pretrained, trained); choose one with --layernorm" in one_line_error(
        capsys
    )
    assert main(["table", sweep, "--kind", "zero", "--layernorm", "pretrained"]) == 0
    expected = {span: mistakes(*span, layernorm="pretrained") for span in SPANS}
    assert printed_matrix(capsys.readouterr().out) == expected
    assert main(["ci", sweep, "--kind", "scale"]) == 2
    assert "several alphas (0.5, 1); choose one with --alpha" in one_line_error(capsys)
    assert main(["ci", sweep, "--kind", "scale", "--alpha", "0.5"]) == 0
    table = printed_frame(capsys.readouterr().out)
    assert table["drop_points"].tolist() == [mistakes(*span, "scale", 0.5) for span in SPANS]
    refused = {
        ("--kind", "keep"): "no cells with --kind keep (their ablation kinds: mean, scale, zero)",
        ("--kind", "mean", "--alpha", "0.5"): "--alpha 0.5 is for --kind scale only, not kind mean",
        ("--kind", "mean", "--positions", "attention"): "no cells with --positions attention (their adapter positions: both)",
    }  # fmt: skip
    for flags, message in refused.items():
        assert main(["table", sweep, *flags]) == 2
        assert message in one_line_error(capsys)


def test_rebuild_names_a_corrupt_result_file(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", synthetic_results())
    table = (sweep / "results.csv").read_bytes()
    bad = sweep / "3" / "result.json"
    bad.write_text('{"task"\n}')  # json: "Expecting ':' delimiter: line 2 column 1"
    assert main(["rebuild", str(sweep)]) == 2
    err = one_line_error(capsys)
    assert str(bad) in err and "Expecting ':' delimiter" in err
    assert (sweep / "results.csv").read_bytes() == table  # the table is left as it was


def _loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `code`."""
    code += f"\nimport sys; print(sorted(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])


def test_analysis_never_imports_torch():
    code = (
        "import analysis, analysis.collect, analysis.select, analysis.stats, analysis.claims, analysis.plots"
    )
    assert _loaded(code + ", analysis.report, analysis.__main__", ("torch", "transformers")) == []


def test_judging_claims_loads_no_plotting_library():
    assert _loaded("import analysis.claims", ("matplotlib", "seaborn", "torch")) == []


def test_the_experiment_side_never_imports_the_reading_side():
    modules = sorted(p.stem for p in (REPO / "ablation").glob("*.py") if p.stem != "__init__")
    code = "import importlib\n" + "\n".join(f"importlib.import_module('ablation.{m}')" for m in modules)
    assert _loaded(code, ("analysis",)) == []
    sources = "\n".join(p.read_text() for p in (REPO / "ablation").glob("*.py"))
    assert "import analysis" not in sources and "from analysis" not in sources
    assert "hydra._internal" not in sources + "\n".join(
        p.read_text() for p in (REPO / "analysis").glob("*.py")
    )
