"""Command line: `python -m analysis report|compare|claims|estimate|examples|figures|heatmap|table|ci|rebuild ...`
(see --help)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ablation.config import ABLATE_KINDS, ABLATE_NORMS, ABLATE_POSITIONS, ESTIMATORS, EXACT
from analysis.collect import load_results, load_runs
from analysis.select import (
    ABLATION_DEFAULTS,
    ALPHA,
    ESTIMATE,
    KIND,
    LAYERNORM,
    PANEL_COLUMNS,
    RECIPE_COLUMNS,
    CellChoice,
    ablated,
    split_panels,
    varying,
    with_ablation,
)
from analysis.stats import Select, cell_intervals, layer_matrix

PROG = "python -m analysis"
# The flags that choose the cells of `table`, `ci` and `compare`, by the column each reads: (flag, what the
# column's values are called).
CELL_FLAGS = {
    KIND: ("--kind", "ablation kinds"),
    LAYERNORM: ("--layernorm", "LayerNorm choices"),
    ALPHA: ("--alpha", "alphas"),
    "positions": ("--positions", "adapter positions"),
    ESTIMATE: ("--estimate", "estimates"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for a missing or unreadable sweep)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "figures":
            return _figures(args)
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "examples":
            return _examples(args)
        if args.command == "claims":
            return _claims(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "rebuild":
            from ablation.results import rebuild_table

            print(rebuild_table(args.sweep_dir))
            return 0
        if args.command == "ci":
            df = load_runs([args.sweep_dir]).table
            choice = choose_cells(df, args, f"ci: {args.sweep_dir}")
            print(format_intervals(df, args.level, choice).to_string(index=False))
            return 0
        df = load_results(args.sweep_dir)
        if args.command == "heatmap":
            _heatmap(df, args)
        else:
            print(format_table(df, args.value, choose_cells(df, args, f"table: {args.sweep_dir}")))
    except (FileNotFoundError, KeyError, ValueError) as err:
        # One line a researcher can act on; a traceback here would only bury the path that is wrong.
        print(f"{PROG}: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    return 0


def _figures(args: argparse.Namespace) -> int:
    # Imported here so that `table` does not pay for matplotlib and seaborn.
    from analysis.plots import study_figures

    dirs = args.sweep_dirs
    if args.out is None and len(dirs) > 1:
        raise ValueError(
            f"figures: {len(dirs)} sweeps given; say where their joint figures go with --out DIR"
        )
    out = args.out if args.out is not None else (dirs[0] if dirs[0].is_dir() else dirs[0].parent)
    df = load_runs(dirs).table  # with where each row's predictions are: the heatmap hatches as in the report
    paths = study_figures(df, out, selection="best" if args.best_of_n else "mean")
    if not paths:
        raise ValueError(
            f"figures: nothing to draw from {len(df)} rows (no layer-ablation cells or controls, and no "
            "study or sweep over init_std, adapter size, method or variant)"
        )
    for path in paths:
        print(path)
    return 0


def _claims(args: argparse.Namespace) -> int:
    """Each directory's rows judged apart, their verdicts side by side (one column per directory); with
    --paired, each claim's statistic in A minus in B with the paired difference's interval."""
    from analysis.claims import evaluate_claims

    if args.paired:
        return _paired_claims(args)
    letters = [chr(ord("A") + i) for i in range(len(args.dirs))]
    judged = []
    for letter, group in zip(letters, args.dirs, strict=True):
        print(f"{letter} = {group}")
        table = evaluate_claims(load_runs([Path(p) for p in group.split(",")]).table)
        table = table[table["verdict"] != "no data"]
        cell = [f"{e:.2f} [{lo:.2f}, {hi:.2f}] {u}: {v}" for e, lo, hi, u, v in
                table[["estimate", "lo", "hi", "unit", "verdict"]].itertuples(index=False)]  # fmt: skip
        judged.append(table[["claim", "panel"]].assign(**{letter: cell}))
    if all(t.empty for t in judged):
        raise ValueError(f"claims: no claim can be judged from the rows of {', '.join(map(str, args.dirs))}")
    merged = judged[0]
    for t in judged[1:]:
        merged = merged.merge(t, on=["claim", "panel"], how="outer", sort=False)
    print(merged.fillna("-").to_string(index=False))
    return 0


def _paired_claims(args: argparse.Namespace) -> int:
    from analysis.claims import paired_claims

    if len(args.dirs) != 2:
        raise ValueError(f"claims --paired: two directories (A and B), got {len(args.dirs)}")
    a, b = (load_runs([Path(p) for p in group.split(",")]).table for group in args.dirs)
    table = paired_claims(a, b)
    if table.empty:
        raise ValueError(f"claims --paired: no claim is measured on both {args.dirs[0]} and {args.dirs[1]}")
    print(
        f"A = {args.dirs[0]}\nB = {args.dirs[1]}\neach claim's statistic, A minus B, paired by seed and example:"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    inside = (table["lo"] >= -args.margin) & (table["hi"] <= args.margin)
    largest = float(table[["lo", "hi"]].abs().to_numpy().max())
    print(
        f"\n{int(inside.sum())} of {len(table)} paired intervals inside ±{args.margin:g} (their own unit); "
        f"the largest bound {largest:.2f}"
    )
    return 0


def _estimate(args: argparse.Namespace) -> int:
    """Each estimated heatmap against the exact one: the table, the side-by-side figure, the worst cells."""
    from analysis.estimates import (
        all_pairs,
        comparison,
        confirm_command,
        confirmation,
        overrides,
    )
    from analysis.plots import estimate_figure

    df = load_runs(args.dirs).table
    pairs = all_pairs(df)
    if not pairs:
        raise ValueError(
            f"estimate: no estimated cells in {', '.join(map(str, args.dirs))} (a sweep with "
            "ablate.estimate=attribution or integrated makes them)"
        )
    out = args.out if args.out is not None else Path("estimate")
    table = comparison(df, pairs)
    if table.empty:
        print(
            "no exact cells beside the estimated ones: the estimate's worst cells and the command that computes them"
        )
    else:
        table.to_csv(out.with_suffix(".csv"), index=False)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print(f"\ntable: {out.with_suffix('.csv')}")
    for path in estimate_figure(pairs, out):
        print(path)
    for name, exact, guessed in pairs:
        worst = confirmation(exact, guessed, args.confirm)
        what = f"the {guessed['estimate'].iloc[0]} estimate's {len(worst)} worst cells"
        print(f"\n{name}: {what}, estimated and exact (relative decrease %)")
        for row in worst.itertuples():
            exact_text = "not computed" if np.isnan(row.exact) else f"{row.exact:.1f}"
            print(f"  {row.first}..{row.last}: {row.estimated:.1f} estimated, {exact_text} exact")
        cells = list(zip(worst["first"], worst["last"], strict=True))
        print(
            f"  computed exactly by: {confirm_command(cells, overrides(guessed))} (with the training's own options)"
        )
    return 0


def _report(args: argparse.Namespace) -> int:
    from analysis.report import build_report

    print(build_report(args.dirs, args.out))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from analysis.plots import difference_figure
    from analysis.stats import difference_intervals

    panels, choices = [], []
    for path in (args.a, args.b):
        df = load_runs([path]).table
        choice = choose_cells(df, args, f"compare: {path}")
        rows = choice(df)
        several = [c for c in PANEL_COLUMNS if rows[c].nunique() > 1]
        if several:
            raise ValueError(
                f"compare: {path} holds several heatmaps (varying {several}); give one per side"
                + (" or choose the positions with --positions" if several == ["positions"] else "")
            )
        panels.append(rows)
        choices.append(choice)
    table = difference_intervals(*panels, select=(choices[0], choices[1]), paired=args.paired)
    names = [
        " · ".join(filter(None, (p["model"].iloc[0], p["task"].iloc[0], c.label())))
        for p, c in zip(panels, choices, strict=True)
    ]
    how = "paired by seed and example" if args.paired else "A and B resampled apart"
    title = f"relative decrease: A ({names[0]}) minus B ({names[1]}), {how}\nA = {args.a}\nB = {args.b}"
    out = args.out if args.out is not None else Path("compare")
    for path in difference_figure(table, out, title):
        print(path)
    real = table[~table["includes_zero"]]
    print(
        f"{len(real)} of {len(table)} spans differ beyond their 95% interval (A minus B, percentage points, "
        f"{how}):"
    )
    if args.paired:
        print(_share(len(real), len(table)))
    print(table.round(2).to_string(index=False))
    print()
    print(_cross_agreement(*panels))
    return 0


def _share(k: int, n: int) -> str:
    """k of n cells beyond their interval: the share with its exact binomial 95% interval, against the 5%
    that twins which do not differ would give by chance."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return (
        f"share beyond: {100 * k / n:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}] (exact binomial 95%); "
        "5% by chance where A and B do not differ"
    )


def _cross_agreement(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """Do A and B flip the same examples? Per common cell, against chance and each side's own seeds."""
    from analysis.examples import TextsMissing, cross_agreement

    try:
        table = cross_agreement(a, b)
    except TextsMissing as err:
        return f"Which examples each flips: not compared ({err})"
    above = int(table["above_chance"].sum())
    mean = table[["agreement", "chance", "within_a", "within_b"]].mean()
    head = (
        f"Which examples each flips (lost or gained), joined by id: A's and B's flipped sets agree above chance in "
        f"{above} of {len(table)} spans; mean Jaccard A×B {mean['agreement']:.3f} against chance "
        f"{mean['chance']:.3f}, A's seeds among themselves {mean['within_a']:.3f}, B's {mean['within_b']:.3f}:"
    )
    return head + "\n" + table.round(3).to_string(index=False)


def _examples(args: argparse.Namespace) -> int:
    from analysis.examples import examples_of

    df = load_runs(args.dirs).table
    where = f"examples: {', '.join(map(str, args.dirs))}"
    panel = example_panel(df, args, where)
    examples = examples_of(panel)
    if args.cell is None:
        print(_fragile(panel, examples, args))
    else:
        print(_cell(panel, examples, args, *args.cell))
    return 0


def example_panel(df: pd.DataFrame, args: argparse.Namespace, where: str) -> pd.DataFrame:
    """The cells of one heatmap panel the flags choose (row filters, then the ablation flags)."""
    for column, flag in EXAMPLE_FILTERS.items():
        given = getattr(args, flag.lstrip("-").replace("-", "_"))
        if given is None:
            continue
        present = sorted(set(df[column].dropna()))
        keep = df[column].isin(given if isinstance(given, list) else [given]).fillna(False)
        if not keep.any():
            raise ValueError(
                f"{where}: no rows with {flag} {given} (their {column}: {', '.join(map(str, present))})"
            )
        df = df[keep.to_numpy(dtype=bool)]
    for condition in args.where or []:
        column, _, value = condition.partition("=")
        if column not in df.columns:
            raise ValueError(f"{where}: --where {condition}: no column {column!r}")
        keep = (df[column].astype(str) == value).to_numpy(dtype=bool)
        if not keep.any():
            present = ", ".join(sorted(map(str, df[column].dropna().unique())))
            raise ValueError(f"{where}: no rows with --where {condition} (their {column}: {present})")
        df = df[keep]
    rows = choose_cells(df, args, where)(df)
    several = [c for c in PANEL_COLUMNS if rows[c].nunique() > 1]
    if several:
        flags = [f for c, f in EXAMPLE_FILTERS.items() if c in several]
        flags += [f"--where {c}=VALUE" for c in several if c not in EXAMPLE_FILTERS and c != "positions"]
        values = "; ".join(f"{c}: {', '.join(sorted(map(str, rows[c].dropna().unique())))}" for c in several)
        raise ValueError(
            f"{where}: the cells are of several heatmaps ({values}); choose one with {', '.join(flags or ['--positions'])}"
        )
    return rows


# The row filters of `examples`: column -> flag.
EXAMPLE_FILTERS = {"task": "--task", "model": "--model", "method": "--method", "seed": "--seed"}
KIND_WORDS = {"zero": "removed", "mean": "replaced by their mean", "keep": "kept, all others removed",
              "scale": "scaled"}  # fmt: skip
TEXT_WIDTH = 90  # characters of an example's text on its line


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell (the last one left as it is)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]


def _cut(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _names(examples: pd.DataFrame) -> dict[int, str]:
    if "label_name" not in examples.columns:
        return {}
    pairs = examples[["label", "label_name"]].drop_duplicates()
    return {int(label): str(name) for label, name in zip(pairs["label"], pairs["label_name"], strict=True)}


def _predicted(values: str, names: dict[int, str]) -> str:
    """'1,1,0' as label names; one name when every seed predicted the same."""
    labels = [int(v) for v in values.split(",")]
    shown = [names.get(v, str(v)) for v in labels]
    return shown[0] if len(set(shown)) == 1 else ",".join(shown)


def _panel_name(panel: pd.DataFrame) -> str:
    first = panel.iloc[0]
    seeds = sorted(int(s) for s in panel["seed"].unique())
    seeds_text = (
        f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    )
    trainings = panel["train_key"].nunique() if "train_key" in panel.columns else len(seeds)
    if trainings > len(seeds):  # e.g. several imported folders of one architecture: each counts as a run
        seeds_text = f"{trainings} trainings ({seeds_text})"
    return f"{first['model']} · {first['task']} · {first['method']}, {seeds_text}, {int(first['n_eval'])} examples"


def _cell(
    panel: pd.DataFrame, examples: pd.DataFrame, args: argparse.Namespace, first: int, last: int
) -> str:
    from analysis.examples import agreement, cell_flips, cell_runs, changed, flip_sets

    rows = cell_runs(panel, first, last)
    if rows.empty:
        spans = sorted({(int(f), int(la)) for f, la in zip(panel["first"], panel["last"], strict=True)})
        raise ValueError(
            f"examples: no cell {first}..{last} in these rows (cells: {spans[0]}..{spans[-1]} as (first, last))"
        )
    table = cell_flips(panel, first, last, examples)
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
    sets = flip_sets(rows)
    lost, gained, _ = sets
    n, names = len(rows), _names(examples)
    acc, base = 100 * rows["accuracy"].mean(), 100 * rows["intact_accuracy"].mean()
    lines = [
        f"{_panel_name(rows)}: cell {first}..{last}, the adapters of layers {first}..{last} "
        f"{KIND_WORDS.get(str(rows[KIND].iloc[0]), rows[KIND].iloc[0])}",
        f"accuracy {base:.1f}% intact -> {acc:.1f}% ablated ({acc - base:+.1f} points)",
    ]
    labels = examples["label"].to_numpy()
    for what, flips in (
        ("lost (intact right, ablated wrong)", lost),
        ("gained (intact wrong, ablated right)", gained),
    ):
        per_seed = flips.sum(axis=1)
        by_label = ", ".join(
            f"{names.get(int(v), str(v))} {flips[:, labels == v].sum(axis=1).mean():.{1 if n > 1 else 0}f}"
            for v in np.unique(labels)
        )
        if n == 1:
            lines.append(f"{what}: {int(per_seed[0])} ({by_label})")
        else:
            lines.append(
                f"{what}: {per_seed.mean():.1f} per seed ({by_label}), {int(flips.any(axis=0).sum())} in at least "
                f"one seed, {int(flips.all(axis=0).sum())} in all {n}"
            )
    if n > 1:
        found = agreement(sets)
        verdict = "above chance" if found["agreement"] > found["chance_hi"] else "not above chance"
        lines.append(
            f"the seeds' flipped sets agree: Jaccard {found['agreement']:.3f} against {found['chance']:.3f} by "
            f"chance (97.5%: {found['chance_hi']:.3f}): {verdict}"
        )
    for change in ("lost", "gained"):
        part = changed(table, change)
        shown = part.head(args.top)
        more = f", the first {len(shown)}" if len(shown) < len(part) else ""
        lines += ["", f"{change} ({len(part)} examples{more}; seeds: in how many of {n} it is {change}):"]
        cells = [
            [f"{int(r[change])}/{n}", names.get(int(r["label"]), str(r["label"])), _predicted(r["intact"], names),
             _predicted(r["ablated"], names), _cut(r["text"])]
            for _, r in shown.iterrows()
        ]  # fmt: skip
        lines += _aligned([["seeds", "label", "intact", "ablated", "text"], *cells])
    if args.csv is not None:
        lines += ["", f"every flipped example ({len(table)}) with its id and full text: {args.csv}"]
    return "\n".join(lines)


def _fragile(panel: pd.DataFrame, examples: pd.DataFrame, args: argparse.Namespace) -> str:
    from analysis.examples import fragility, summary

    table = fragility(panel, examples)
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
    n_cells = panel[["first", "last"]].drop_duplicates().shape[0]
    lines = [f"{_panel_name(panel)}: {n_cells} cells", *summary(panel)[0]]
    names = _names(examples)
    runs = int(table["runs"].iloc[0])
    lines += [
        "",
        f"the {min(args.top, len(table))} most fragile examples (fragility: the share of the {runs} cells × seeds that flip it):",
    ]
    cells = [
        [
            f"{r['fragility']:.2f}",
            names.get(int(r["label"]), str(r["label"])),
            str(int(r["words"])),
            _cut(r["text"]),
        ]
        for _, r in table.head(args.top).iterrows()
    ]
    lines += _aligned([["fragility", "label", "words", "text"], *cells])
    if args.csv is not None:
        lines += ["", f"every example ({len(table)}) with its fragility, id and full text: {args.csv}"]
    return "\n".join(lines)


def choose_cells(df: pd.DataFrame, args: argparse.Namespace, where: str) -> CellChoice:
    """The cells `table`, `ci` and `compare` read: the kind, LayerNorm choice, alpha (kind scale) and
    positions the flags give, each not given being the one value the cells hold; `where` starts each error."""
    rows = with_ablation(df.dropna(subset=["first", "last"]))
    if rows.empty:
        raise ValueError(f"{where}: no layer-ablation cells")
    kind = _pick(rows, KIND, args.kind, where)
    rows = rows[(rows[KIND] == kind).to_numpy(dtype=bool)]
    layernorm = _pick(rows, LAYERNORM, args.layernorm, where)
    rows = rows[(rows[LAYERNORM] == layernorm).to_numpy(dtype=bool)]
    held = set(rows[ESTIMATE])  # exact cells where there are any: an estimate is read when asked for
    estimate = _pick(rows, ESTIMATE, args.estimate or (EXACT if EXACT in held else None), where)
    rows = rows[(rows[ESTIMATE] == estimate).to_numpy(dtype=bool)]
    if kind != "scale" and args.alpha is not None:
        raise ValueError(f"{where}: --alpha {args.alpha:g} is for --kind scale only, not kind {kind}")
    alpha = _pick(rows, ALPHA, args.alpha, where) if kind == "scale" else None
    if args.positions is not None:
        _pick(CellChoice(kind, layernorm, alpha, estimate=estimate)(rows), "positions", args.positions, where)
    return CellChoice(kind, layernorm, alpha, args.positions, estimate)


def _pick(rows: pd.DataFrame, column: str, given: object, where: str) -> object:
    """`given` if some cell holds it, else the one value the cells hold; ValueError naming the values."""
    flag, plural = CELL_FLAGS[column]
    present = sorted(set(rows[column].dropna()))
    text = ", ".join(map(_text, present))
    if given is None:
        if len(present) > 1:
            raise ValueError(f"{where}: the cells are of several {plural} ({text}); choose one with {flag}")
        return present[0] if present else None
    same = np.isclose if isinstance(given, float) else lambda a, b: a == b
    if not any(same(value, given) for value in present):
        raise ValueError(f"{where}: no cells with {flag} {_text(given)} (their {plural}: {text})")
    return given


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_table(df: pd.DataFrame, value: str = "relative_decrease", select: Select = ablated) -> str:
    """Render each panel of the cells `select` keeps (default: the paper's removal) as a first x last matrix
    of `value` in percent, lower triangle left blank."""
    blocks = []
    rows = select(df)
    recipe = varying(rows)  # named where the cells hold several recipes (constant in most sweeps)
    for panel in split_panels(rows):
        matrix = layer_matrix(panel, value) * 100
        cells = matrix.map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        names = [
            f"{c}={panel[c].iloc[0]}"
            for c in PANEL_COLUMNS
            if c in panel.columns and pd.notna(panel[c].iloc[0]) and (c not in RECIPE_COLUMNS or c in recipe)
        ]
        names += _ablation_names(panel)
        if "seed" in panel.columns:
            names.append(f"seeds={panel['seed'].nunique()}")
        header = f"{' '.join(names)}\n{value} (%): rows = first ablated layer, columns = last ablated layer"
        blocks.append(f"{header}\n{cells.to_string()}")
    return "\n\n".join(blocks)


def _ablation_names(panel: pd.DataFrame) -> list[str]:
    """The ablation settings of a panel's cells that differ from the paper's removal, as 'column=value'."""
    first = panel.iloc[0]
    names = [f"{c}={first[c]}" for c in (KIND, LAYERNORM) if first[c] != ABLATION_DEFAULTS[c]]
    return names + ([f"{ALPHA}={first[ALPHA]:g}"] if pd.notna(first[ALPHA]) else [])


def format_intervals(df: pd.DataFrame, level: float = 0.95, select: Select = ablated) -> pd.DataFrame:
    """Per cell of each panel of the cells `select` keeps (default: the paper's removal): accuracy, its drop
    from the intact model (points) and the relative decrease (%), each with its 95% interval:
    `analysis.stats.cell_intervals`, the report's intervals."""
    cells = select(df)
    if cells.empty:
        raise ValueError("ci: no layer-ablation cells in these rows")
    tables = []
    recipe = varying(cells)  # a LoRA panel's LayerNorms beside the adapters' are no second recipe
    for panel in split_panels(cells):
        names = {
            c: panel[c].iloc[0]
            for c in PANEL_COLUMNS
            if cells[c].nunique() > 1 and (c not in RECIPE_COLUMNS or c in recipe)
        }
        tables.append(cell_intervals(panel, level, select).drop(columns="includes_zero").assign(**names))
    return pd.concat(tables, ignore_index=True).round(2)


def _heatmap(df: pd.DataFrame, args: argparse.Namespace) -> None:
    # Imported here so that `table` does not pay for matplotlib and seaborn.
    from analysis.plots import heatmap_figure

    cells = with_ablation(df.dropna(subset=["first", "last"]))
    if cells.empty:
        raise ValueError(f"heatmap: no layer-ablation cells in {args.sweep_dir}")
    kinds = ", ".join(sorted(set(cells[KIND])))
    df = ablated(df)  # the paper's removal: `figures` draws the heatmap of each other kind with its own title
    if df.empty:
        raise ValueError(
            f"heatmap: no cells of kind zero in {args.sweep_dir} (its kinds: {kinds}); their heatmaps: "
            f"`{PROG} figures {args.sweep_dir}`, their tables: `{PROG} table --kind KIND {args.sweep_dir}`"
        )
    sweep = args.sweep_dir if args.sweep_dir.is_dir() else args.sweep_dir.parent
    out = args.out if args.out is not None else sweep / "heatmap"
    for path in heatmap_figure(df, out, value=args.value):
        print(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read the results of runs and sweeps: report, comparisons, figures, tables.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=110, max_help_position=16),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="one self-contained HTML page: every figure, the paper's claims judged, the runs"
    )
    report.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="run or sweep directories")
    report.add_argument(
        "--out", type=Path, default=Path("report.html"), help="HTML file (default: %(default)s)"
    )
    compare = commands.add_parser(
        "compare", help="difference heatmap of two layer-ablation sweeps, each cell with its interval"
    )
    compare.add_argument("a", type=Path, help="sweep directory A")
    compare.add_argument("b", type=Path, help="sweep directory B")
    compare.add_argument("--out", type=Path, default=None, help="output stem (default: ./compare)")
    compare.add_argument(
        "--paired",
        action="store_true",
        help="A and B are twins of the same seeds on the same examples (e.g. bf16 and fp32 trainings): "
        "intervals of the per-seed differences, and the share of cells beyond them",
    )
    claims = commands.add_parser(
        "claims", help="the paper's claims judged on each directory apart, side by side (estimate, interval)"
    )
    claims.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR[,DIR...]",
        help="run or sweep directories, one column each (A, B, ...); comma-joined ones are judged together",
    )
    claims.add_argument(
        "--paired",
        action="store_true",
        help="two directories, twins of the same seeds: each claim's statistic A minus B, paired by seed",
    )
    claims.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="with --paired: count the intervals inside ±MARGIN (default 1)",
    )
    estimate = commands.add_parser(
        "estimate",
        help="estimated heatmaps (ablate.estimate) against the exact ones: agreement, verdicts, time, worst cells",
    )
    estimate.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="sweep directories")
    estimate.add_argument("--out", type=Path, default=None, help="output stem (default: ./estimate)")
    estimate.add_argument(
        "--confirm", type=int, default=10, help="the estimate's worst cells listed (default: %(default)s)"
    )
    examples = commands.add_parser(
        "examples",
        help="which validation examples a cell loses and gains (--cell F..L), or the most fragile ones",
    )
    examples.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="sweep directories")
    examples.add_argument(
        "--cell",
        type=_span,
        default=None,
        metavar="F..L",
        help="the cell (default: every cell, by fragility)",
    )
    for column, flag in EXAMPLE_FILTERS.items():
        kind = int if column == "seed" else str
        examples.add_argument(flag, type=kind, nargs="+" if column == "seed" else None, default=None,
                              help=f"only rows of these {column} values" if column == "seed" else f"only rows of this {column}")  # fmt: skip
    examples.add_argument(
        "--where",
        action="append",
        metavar="COLUMN=VALUE",
        help="only rows whose COLUMN (of results.csv) reads VALUE; repeatable (e.g. --where variant=plain)",
    )
    examples.add_argument(
        "--top", type=int, default=10, help="examples listed per part (default: %(default)s)"
    )
    examples.add_argument("--csv", type=Path, default=None, help="write every listed example to this CSV")
    heat = commands.add_parser("heatmap", help="write the Figure 6 heatmap as PNG and PDF")
    heat.add_argument("sweep_dir", type=Path, help="sweep directory (or its results.csv)")
    heat.add_argument("--out", type=Path, default=None, help="output stem (default: SWEEP_DIR/heatmap)")
    table = commands.add_parser("table", help="print the first x last matrix in percent")
    table.add_argument("sweep_dir", type=Path, help="sweep directory (or its results.csv)")
    ci = commands.add_parser(
        "ci", help="accuracy drop and relative decrease per cell, with the report's intervals"
    )
    ci.add_argument("sweep_dir", type=Path, help="sweep directory (with its job folders)")
    ci.add_argument("--level", type=float, default=0.95, help="interval level (default: %(default)s)")
    rebuild = commands.add_parser(
        "rebuild", help="rebuild results.csv from the job folders' result.json files"
    )
    rebuild.add_argument("sweep_dir", type=Path, help="sweep directory")
    figures = commands.add_parser("figures", help="write every study figure the results allow (PNG and PDF)")
    figures.add_argument("sweep_dirs", type=Path, nargs="+", metavar="DIR", help="sweep directories")
    figures.add_argument("--out", type=Path, default=None, help="output dir (default: the one DIR given)")
    figures.add_argument(
        "--best-of-n",
        action="store_true",
        help="per setting, the seed with the best validation accuracy (the paper's protocol; optimistic)",
    )
    for sub in (heat, table):
        sub.add_argument("--value", default="relative_decrease", help="column to show (default: %(default)s)")
    for sub in (table, ci, compare, examples):
        _cell_flags(sub)
    return parser


def _span(text: str) -> tuple[int, int]:
    """'3..5' -> (3, 5)."""
    first, sep, last = text.partition("..")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit() or int(first) > int(last):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected FIRST..LAST, two layer numbers with FIRST <= LAST"
        )
    return int(first), int(last)


def _cell_flags(sub: argparse.ArgumentParser) -> None:
    # Each defaults to the one value the cells hold; several present and none chosen is an error naming them.
    only = "(default: the one the cells hold)"
    sub.add_argument("--kind", choices=ABLATE_KINDS, default=None, help=f"ablate_kind of the cells {only}")
    sub.add_argument(
        "--layernorm", choices=ABLATE_NORMS, default=None, help=f"ablate_layernorm of the cells {only}"
    )
    sub.add_argument("--alpha", type=float, default=None, help=f"alpha of the cells of kind scale {only}")
    sub.add_argument(
        "--estimate",
        choices=(EXACT, *ESTIMATORS),
        default=None,
        help="exact cells or an estimate's (default: exact where there are any)",
    )
    sub.add_argument(
        "--positions",
        choices=ABLATE_POSITIONS,
        default=None,
        help="adapter positions ablated (default: each one the cells hold, one table each)",
    )


if __name__ == "__main__":
    sys.exit(main())
