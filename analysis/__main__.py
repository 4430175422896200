"""Command line: `python -m analysis report|compare|figures|heatmap|table|ci|rebuild ...` (see --help)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.collect import load_results, load_runs
from analysis.select import PANEL_COLUMNS, ablated, split_panels
from analysis.stats import cell_intervals, layer_matrix

PROG = "python -m analysis"


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
        if args.command == "rebuild":
            from ablation.results import rebuild_table

            print(rebuild_table(args.sweep_dir))
            return 0
        if args.command == "ci":
            print(format_intervals(load_runs([args.sweep_dir]).table, args.level).to_string(index=False))
            return 0
        df = ablated(load_results(args.sweep_dir))  # the paper's removal: other kinds have their own figures
        if df.empty:
            raise ValueError(f"{args.command}: no layer-ablation cells (kind zero) in {args.sweep_dir}")
        if args.command == "heatmap":
            _heatmap(df, args)
        else:
            print(format_table(df, args.value))
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


def _report(args: argparse.Namespace) -> int:
    from analysis.report import build_report

    print(build_report(args.dirs, args.out))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from analysis.plots import difference_figure
    from analysis.stats import difference_intervals

    panels = []
    for path in (args.a, args.b):
        rows = ablated(load_runs([path]).table)
        if rows.empty:
            raise ValueError(f"compare: {path} has no layer-ablation cells")
        several = [c for c in ("model", "task", "method", "positions") if rows[c].nunique() > 1]
        if several:
            raise ValueError(f"compare: {path} holds several heatmaps (varying {several}); give one per side")
        panels.append(rows)
    table = difference_intervals(*panels)
    names = [f"{p['model'].iloc[0]} · {p['task'].iloc[0]}" for p in panels]
    title = f"relative decrease: A ({names[0]}) minus B ({names[1]})\nA = {args.a}\nB = {args.b}"
    out = args.out if args.out is not None else Path("compare")
    for path in difference_figure(table, out, title):
        print(path)
    real = table[~table["includes_zero"]]
    print(
        f"{len(real)} of {len(table)} spans differ beyond their 95% interval (A minus B, percentage points):"
    )
    print(table.round(2).to_string(index=False))
    return 0


def format_table(df: pd.DataFrame, value: str = "relative_decrease") -> str:
    """Render each panel as a first x last matrix of `value` in percent, lower triangle left blank."""
    blocks = []
    for panel in split_panels(ablated(df)):
        matrix = layer_matrix(panel, value) * 100
        cells = matrix.map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        names = [
            f"{c}={panel[c].iloc[0]}"
            for c in PANEL_COLUMNS
            if c in panel.columns and pd.notna(panel[c].iloc[0])
        ]
        if "seed" in panel.columns:
            names.append(f"seeds={panel['seed'].nunique()}")
        header = f"{' '.join(names)}\n{value} (%): rows = first ablated layer, columns = last ablated layer"
        blocks.append(f"{header}\n{cells.to_string()}")
    return "\n\n".join(blocks)


def format_intervals(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per cell of each panel: accuracy, its drop from the intact model (points) and the relative decrease
    (%), each with its 95% interval: `analysis.stats.cell_intervals`, the report's intervals."""
    cells = ablated(df)
    if cells.empty:
        raise ValueError("ci: no layer-ablation cells in these rows")
    tables = []
    for panel in split_panels(cells):
        names = {c: panel[c].iloc[0] for c in PANEL_COLUMNS if cells[c].nunique() > 1}
        tables.append(cell_intervals(panel, level).drop(columns="includes_zero").assign(**names))
    return pd.concat(tables, ignore_index=True).round(2)


def _heatmap(df: pd.DataFrame, args: argparse.Namespace) -> None:
    # Imported here so that `table` does not pay for matplotlib and seaborn.
    from analysis.plots import heatmap_figure

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
    return parser


if __name__ == "__main__":
    sys.exit(main())
