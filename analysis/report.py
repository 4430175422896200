"""One self-contained HTML page from any number of run and sweep directories: what the runs found,
how sure we are (intervals over examples and seeds), and what the paper claimed.

    python -m analysis report outputs/sweeps/<dir> [more dirs] --out report.html
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from ablation.atomic import write_text
from ablation.config import EXACT
from ablation.results import RESULT_JSON
from analysis.claims import CLAIMS, NO_ROWS, claim_study, evaluate_claims
from analysis.collect import Runs, load_runs
from analysis.controls import CONTROL_LIST, findings
from analysis.estimates import (
    TOP,
    all_pairs,
    comparison,
    confirm_command,
    confirmation,
    overrides,
)
from analysis.examples import TextsMissing, examples_of, fragility, summary
from analysis.interactive import explorers
from analysis.plots import estimate_figure, study_figures
from analysis.select import (
    ESTIMATE,
    FIGURES,
    KIND,
    LAYERNORM,
    PRESET_NOTE,
    ablated,
    figure_plan,
    model_layers,
    one_per_training,
    panel_order,
    precision_mix,
    preset_label,
    recipe_label,
    split_panels,
    varying,
    with_ablation,
)
from analysis.stability import stability_table
from analysis.stats import cell_intervals

VERDICT_COLORS = {
    "reproduced": "#1a7f37",
    "not reproduced": "#b42318",
    "inconclusive": "#9a6700",
    "no data": "#6e7781",
}
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1.5em; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { color: white; border-radius: 0.8em; padding: 0.1em 0.6em; white-space: nowrap; font-weight: 600; }
.rule { color: #57606a; font-size: 0.92em; } .muted { color: #57606a; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.92em; max-width: 60em; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #0969da; }
.warning { color: #b42318; } .not-measured { font-size: 0.92em; } code { background: #f6f8fa; padding: 0 0.2em; white-space: nowrap; }
"""


def build_report(paths: list[Path], out: Path, figures_dir: Path | None = None) -> Path:
    """Write the report for the runs under `paths` to `out`; figures go to figures_dir (default: a temp dir)."""
    runs = load_runs(paths)
    out = Path(out)
    if figures_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            page = render(runs, Path(tmp))
    else:
        page = render(runs, Path(figures_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, page)
    return out


def sweep_report(sweep_dir: Path) -> list[str]:
    """The end of a sweep (ablation.callbacks): its figures and report.html in the sweep folder; returns the
    lines to log, one per figure, the report last."""
    report = build_report([sweep_dir], sweep_dir / "report.html", figures_dir=sweep_dir)
    figures = [f"Figure: {sweep_dir / name}.png" for name in figure_plan(load_runs([sweep_dir]).table)]
    return [*figures, f"Report: {report}"]


def render(runs: Runs, figures_dir: Path) -> str:
    """The report as one HTML string; figures are drawn into figures_dir and embedded."""
    df = runs.table
    controls = _controls(df)
    sections = [
        _header(runs),
        _section("What the paper claimed, and what these runs measured", _claims(df)),
        *([_section("What the adapters do", controls)] if controls else []),
        *([_section("Training", training)] if (training := _training(df)) else []),
        *([_section("Which examples the layer ranges break", flips)] if (flips := _examples(df)) else []),
        _section("Figures", _figures(df, figures_dir)),
        *([_section("Estimated cells", estimated)] if (estimated := _estimates(df, figures_dir)) else []),
        _section("Layer-ablation cells with their intervals", _cells(df)),
        _section("The runs behind this page", _runs(runs)),
    ]
    body = "\n".join(sections)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Adapter studies report"
        f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _section(title: str, content: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{content}"


def _header(runs: Runs) -> str:
    df = runs.table
    diverged = int(df["diverged"].fillna(False).sum())
    studies = sorted({str(s) for s in df["study"].dropna()}) or ["(none)"]
    preset = preset_label(df)
    facts = [
        ("sources", "<br>".join(html.escape(str(p)) for p in runs.sources)),
        (
            "rows",
            f"{len(df)} ({int(df['first'].notna().sum())} ablation cells{_kinds(df)}, "
            f"{int(df['first'].isna().sum())} intact models)",
        ),
        ("diverged rows", f"{diverged} (kept: scored with what the training left)"),
        (
            "failed jobs",
            f"{len(runs.failed)} (jobs without a result: failed, cancelled or interrupted; listed below)",
        ),
        ("studies", ", ".join(studies)),
        *([("preset", f"{preset}: fewer jobs and shorter training than the study")] if preset else []),
        (
            "models / tasks",
            f"{', '.join(sorted(map(str, df['model'].unique())))} / "
            f"{', '.join(sorted(map(str, df['task'].unique())))}",
        ),
        ("precision", _precisions(df)),
        ("generated", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    title = "Adapter studies: Houlsby et al. 2019 reproduced"
    if preset:
        title += f" ({preset}: {PRESET_NOTE})"
    return f"<h1>{html.escape(title)}</h1>\n<table>{rows}</table>{_mixed_precisions(df)}"


def _precisions(df: pd.DataFrame) -> str:
    """Which precision trained and which evaluated, on which device: they may differ (eval.precision=auto
    picks bf16 where it is faster; train.precision is fp32 unless set)."""
    trainings = one_per_training(df)

    def counts(values: pd.Series, noun: str) -> str:
        found = values.fillna("not recorded").astype(str).value_counts().sort_index()
        return ", ".join(f"{p} ({n} {noun}{'s' if n != 1 else ''})" for p, n in found.items())

    return (
        f"training: {html.escape(counts(trainings['train_precision'], 'training'))}; evaluation: "
        f"{html.escape(counts(df['eval_precision'], 'row'))}; device: {html.escape(_join(df['device']) or '-')}"
    )


def _mixed_precisions(df: pd.DataFrame) -> str:
    """A warning for each study, model and task whose trainings ran in more than one precision, saying
    whether one point's seeds were averaged across them; '' when none did."""
    mixed = precision_mix(df)
    if not mixed:
        return ""
    items = []
    for m in mixed:
        seeds = "; ".join(
            f"{p}: seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for p, s in m["seeds"].items()
        )
        what = (
            f"{m['averaged']} of its {m['points']} training settings average seeds trained in different "
            "precisions"
            if m["averaged"]
            else f"each of its {m['points']} training settings ran in one precision, but not all in the same"
        )
        items.append(
            f"<li><b>{html.escape(m['study'] or 'no study')} · {html.escape(str(m['model']))} · "
            f"{html.escape(str(m['task']))}</b>: {html.escape(seeds)}; {what}.</li>"
        )
    return (
        "<p class='warning'><b>Mixed training precisions.</b> These rows hold trainings in more than one "
        "precision (two machines, or an explicit <code>train.precision</code>). Figures and claims do not "
        "split them: judge each precision's folder apart with <code>python -m analysis claims A B</code> (and "
        "<code>compare A B</code> for two heatmaps) before reading their average.</p>"
        f"<ul>{''.join(items)}</ul>"
    )


def _kinds(df: pd.DataFrame) -> str:
    """': 78 zero, 78 mean, 78 zero (estimated: attribution), ...' for cells of more than the paper's exact
    removal; '' for its cells only."""
    cells = with_ablation(df.dropna(subset=["first", "last"]))
    kinds = cells[KIND] + cells[LAYERNORM].map(lambda n: "" if n == "trained" else f" ({n} LayerNorms)")
    kinds += cells[ESTIMATE].map(lambda e: "" if e == EXACT else f" (estimated: {e})")
    counts = kinds.value_counts(sort=False)
    if set(counts.index) <= {"zero"}:
        return ""
    return ": " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _claims(df: pd.DataFrame) -> str:
    """The claims these rows measure, one table row per claim and panel; the others in one line."""
    table = evaluate_claims(df)
    measured = table[table["verdict"] != "no data"]
    head = (
        "<tr><th>claim</th><th>paper</th><th>model · task</th><th>measured</th><th>statistic</th>"
        "<th>95% interval</th><th>verdict</th></tr>"
    )
    rows = []
    for _, r in measured.iterrows():
        color = VERDICT_COLORS[r["verdict"]]
        value = "" if pd.isna(r["estimate"]) else f"{r['estimate']:.2f} {r['unit']}"
        ci = "" if pd.isna(r["lo"]) else f"[{r['lo']:.2f}, {r['hi']:.2f}]"
        rows.append(
            f"<tr><td><b>{html.escape(r['claim'])}</b><div class='rule'>rule: {html.escape(r['rule'])}</div></td>"
            f"<td>{html.escape(r['paper'])}</td><td>{html.escape(r['panel'])}</td>"
            f"<td>{html.escape(r['measured'])}</td><td class='num'>{value}</td><td class='num'>{ci}</td>"
            f"<td><span class='verdict' style='background:{color}'>{r['verdict']}</span></td></tr>"
        )
    count = measured["claim"].nunique()
    note = (
        f"<p class='muted'>{count} of the {len(CLAIMS)} claims (Houlsby et al.'s, and AdapterDrop's on "
        "adapter placement) measured by these rows, each judged per model and task (and training recipe, "
        "where the rows hold several) by where its 95% bootstrap interval (validation examples and seeds "
        "resampled together, 2,000 replicates) lies against the claim's region: inside, reproduced; outside, "
        "not reproduced; across the edge, inconclusive. Computed from the rows on this page.</p>"
    )
    listed = f"<table>{head}{''.join(rows)}</table>" if rows else ""
    return note + listed + _not_measured(table[table["verdict"] == "no data"])


def _not_measured(table: pd.DataFrame) -> str:
    """One line: the claims without data, grouped by the study whose rows would measure them."""
    if table.empty:
        return ""
    studies = {c.name: claim_study(c) for c in CLAIMS}
    groups: dict[tuple[str, str], list[str]] = {}
    for name, measured in zip(table["claim"], table["measured"], strict=True):
        why = measured.removeprefix(NO_ROWS).strip()  # e.g. the rows of another method skipped
        groups.setdefault((studies[name], why), []).append(name)
    parts = [
        f"{html.escape(', '.join(names))} — <code>study={study}</code>"
        + (f" {html.escape(why)}" if why else "")
        for (study, why), names in groups.items()
    ]
    return (
        f"<p class='not-measured'><b>Not measured by these rows:</b> {'; '.join(parts)} "
        "<span class='muted'>(each: <code>python -m ablation.run -m study=NAME</code>).</span></p>"
    )


def _training(df: pd.DataFrame) -> str | None:
    """How stable training was per setting (`analysis.stability.stability_table`); None without a factor."""
    table = stability_table(df)
    if table.empty:
        return None
    note = (
        "<p class='muted'>Per setting, over its seeds: the accuracy's mean and s.d., the seeds at the majority "
        "class (at most 1 point above it), diverged, and that left the plateau (their 20-step mean loss 10% "
        "below the loss of predicting the class frequencies), the median step they left it, the s.d. of the "
        "loss over the last 50 steps (mean over seeds) and the largest gradient norm before clipping. The loss "
        "curves are in the figures below.</p>"
    )
    head = (
        "<tr><th>model · task</th><th>setting</th><th>seeds</th><th>accuracy (%)</th><th>s.d.</th>"
        "<th>at majority</th><th>diverged</th><th>left the plateau</th><th>median step</th>"
        "<th>loss spread</th><th>largest gradient norm</th></tr>"
    )
    symbol = {"init_std": "σ", "adapter_size": "m"}
    rows = []
    for _, r in table.iterrows():
        cells = [
            f"{r['model']} · {r['task']}",
            f"{symbol.get(r['factor'], r['factor'])} = {r['value']:g}",
            *(f"<td class='num'>{_number(v, f)}</td>" for v, f in (
                (r["seeds"], "{:.0f}"), (r["accuracy_mean"], "{:.1f}"), (r["accuracy_sd"], "{:.1f}"),
                (r["at_majority"], "{:.0f}"), (r["diverged"], "{:.0f}"), (r["escaped"], "{:.0f}"),
                (r["escape_step_median"], "{:.0f}"), (r["loss_spread_mean"], "{:.3f}"),
                (r["largest_grad_norm"], "{:.2f}"),
            )),
        ]  # fmt: skip
        rows.append(
            f"<tr><td>{html.escape(cells[0])}</td><td>{html.escape(cells[1])}</td>{''.join(cells[2:])}</tr>"
        )
    return f"{note}<table>{head}{''.join(rows)}</table>"


def _number(value: object, fmt: str) -> str:
    return "–" if value is None or pd.isna(value) else fmt.format(value)


def _controls(df: pd.DataFrame) -> str | None:
    """The controls these rows hold, and what each says (`analysis.controls.findings`), the others in one
    line; None when the rows allow no control figure."""
    table = findings(df)
    if table.empty:
        return None
    ran = table[table["run"].astype(bool)]
    names = list(dict.fromkeys(ran["control"]))
    note = (
        f"<p class='muted'>Controls of what the adapters do, computed from the rows on this page: "
        f"{len(names)} of {len(CONTROL_LIST)} run ({html.escape(', '.join(names)) or 'none'}). Accuracies in %, "
        "each with its 95% interval (validation examples and seeds resampled together, the intervals of the "
        "claims above); the rank correlation's interval resamples the single-layer drops the same way.</p>"
    )
    head = (
        "<tr><th>control</th><th>model · task</th><th>what these rows say</th><th>statistic</th>"
        "<th>95% interval</th></tr>"
    )
    rows = []
    for _, r in ran.iterrows():
        value = "" if pd.isna(r["estimate"]) else f"{r['estimate']:.2f} {html.escape(r['unit'])}"
        ci = "" if pd.isna(r["lo"]) else f"[{r['lo']:.2f}, {r['hi']:.2f}]"
        rows.append(
            f"<tr><td><b>{html.escape(r['control'])}</b><div class='rule'>{html.escape(r['question'])}</div>"
            f"</td><td>{html.escape(r['panel'])}</td><td>{html.escape(r['measured'])}</td>"
            f"<td class='num'>{value}</td><td class='num'>{ci}</td></tr>"
        )
    listed = f"<table>{head}{''.join(rows)}</table>" if rows else ""
    return note + listed + _not_run(table[~table["run"].astype(bool)], set(names))


def _not_run(table: pd.DataFrame, ran: set[str]) -> str:
    """One line: the controls without rows, each with the settings that add them (the panels it lacks where
    other panels have it)."""
    if table.empty:
        return ""
    runs = {c.name: c.runs for c in CONTROL_LIST}
    parts = []
    for name, rows in table.groupby("control", sort=False):
        where = f" ({', '.join(rows['panel'])})" if name in ran else ""
        parts.append(f"{html.escape(name + where)} — <code>{html.escape(runs[name])}</code>")
    return (
        f"<p class='not-measured'><b>Not run on these rows:</b> {'; '.join(parts)} "
        "<span class='muted'>(each a part of <code>python -m ablation.run -m study=controls</code>).</span></p>"
    )


def _figures(df: pd.DataFrame, figures_dir: Path) -> str:
    try:
        paths = study_figures(df, figures_dir)
    except ValueError as err:  # rows a figure cannot average: say so on the page, keep the rest
        return f"<p>No figures: {html.escape(str(err))}</p>"
    pngs = [p for p in paths if p.suffix == ".png"]
    if not pngs:
        return "<p class='muted'>The rows allow no figure.</p>"
    parts = []
    for path in pngs:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = FIGURES[path.stem].caption if path.stem in FIGURES else path.stem
        parts.append(
            f"<figure><img alt='{path.stem}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption></figure>"
        )
    return "\n".join(parts)


def _estimates(df: pd.DataFrame, figures_dir: Path) -> str | None:
    """The estimated heatmaps (ablate.estimate) beside the exact ones, how far they agree, and the estimate's
    worst cells with their exact values ("estimate, then confirm"); None without estimated cells."""
    pairs = all_pairs(df)
    if not pairs:
        return None
    note = (
        "<p class='muted'>Cells estimated from gradients (<code>ablate.estimate</code>): every figure and claim "
        "above reads exact cells only. Here each estimated heatmap is set beside the exact one of the same "
        "training: Spearman's correlation of the relative decrease over the cells, the largest error (points "
        f"of %), how many of the exact {TOP} most damaging cells the estimate also ranks among its {TOP}, the "
        "heatmap claims' verdicts judged on the estimate, and each one's evaluation time. What it can be "
        "trusted for: docs/deep.md.</p>"
    )
    table = comparison(df, pairs)
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in table.columns)
    rows = []
    for _, r in table.iterrows():
        cells = [html.escape(str(r["panel"])), html.escape(str(r["estimate"])), f"{r['cells']}"]
        cells += [
            _number(r["spearman"], "{:.3f}"),
            _number(r["largest_error"], "{:.1f}"),
            _number(r[f"top{TOP}_overlap"], "{:.0f}"),
        ]
        cells += [html.escape(str(r["verdicts_kept"])), html.escape(str(r["verdicts_changed"]) or "none")]
        cells += [
            _number(r["exact_seconds"], "{:.0f}"),
            _number(r["estimate_seconds"], "{:.0f}"),
            _number(r["time_ratio"], "{:.1f}"),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    listed = f"<table><tr>{head}</tr>{''.join(rows)}</table>" if rows else ""
    figure = next(p for p in estimate_figure(pairs, figures_dir / "estimate") if p.suffix == ".png")
    data = base64.b64encode(figure.read_bytes()).decode("ascii")
    image = (
        f"<figure><img alt='estimate' src='data:image/png;base64,{data}'><figcaption>Exact (left) and "
        "estimated (right) relative decrease, one colour scale per panel (estimate.png)</figcaption></figure>"
    )
    confirms = []
    for name, exact, guessed in pairs:
        worst = confirmation(exact, guessed, TOP)
        items = "".join(
            f"<tr><td>{a}..{b}</td><td class='num'>{e:.1f}</td><td class='num'>{_number(x, '{:.1f}')}</td></tr>"
            for a, b, e, x in worst.itertuples(index=False)
        )
        missing = worst[worst["exact"].isna()]
        command = (
            f"<p>Not computed exactly yet: <code>{html.escape(confirm_command(list(zip(missing['first'], missing['last'], strict=True)), overrides(guessed)))}</code> "
            "with the training's own options.</p>"
            if len(missing)
            else ""
        )
        confirms.append(
            f"<details><summary>{html.escape(name)}: the {html.escape(guessed['estimate'].iloc[0])} estimate's "
            f"{len(worst)} worst cells, estimated and exact"
            f"</summary><table><tr><th>cell</th><th>estimated (%)</th><th>exact (%)</th></tr>{items}</table>"
            f"{command}</details>"
        )
    return note + listed + image + "".join(confirms)


def _examples(df: pd.DataFrame) -> str | None:
    """Per heatmap panel whose sweep kept its examples: how many examples every layer and each half lose and
    gain, whether the seeds flip the same ones, the most fragile ones, and the heatmap you can click; None
    without layer-ablation cells. Panels whose texts were removed say so in one line."""
    rows = figure_plan(df).get("heatmap")
    if rows is None:
        return None
    rows = ablated(rows)
    if rows.empty:
        return None
    recipe, layers = varying(rows), model_layers(rows)
    parts, clickable, unread = [], [], {}
    for panel in sorted(split_panels(rows), key=panel_order) if recipe else split_panels(rows):
        name = f"{panel['model'].iloc[0]} · {panel['task'].iloc[0]} · {panel['method'].iloc[0]}"
        if recipe:
            name += f" · {recipe_label(panel.iloc[0], layers.get(str(panel['model'].iloc[0])))}"
        try:
            parts.append(_flip_summary(panel, examples_of(panel), name))
        except (TextsMissing, ValueError) as err:  # a panel's examples unreadable: said once, the rest shown
            unread.setdefault(str(err), []).append(name)
            continue
        clickable.append((panel, name))
    for why, names in unread.items():
        parts.append(
            f"<p><b>{html.escape('; '.join(names))}</b>: examples not analysed: {html.escape(why)}</p>"
        )
    note = (
        "<p class='muted'>A cell <i>loses</i> a validation example its intact model got right and its ablated "
        "model gets wrong, and <i>gains</i> one the other way round. Agreement of two runs' flipped sets: their "
        "Jaccard index, against the same index where each run's flips are drawn at random at its own rates "
        "(lost among the examples it had right, gained among those it had wrong; 200 draws). The examples, "
        "their ids and full texts: <code>python -m analysis examples DIR --cell F..L</code>.</p>"
    )
    return note + "\n".join(parts) + (explorers(clickable) if clickable else "")


def _flip_summary(panel: pd.DataFrame, examples: pd.DataFrame, name: str) -> str:
    lines, table = summary(panel)
    agree = ""
    if table is not None:
        names = {"flipped_per_seed": "flipped per seed", "agreement": "agreement (Jaccard)", "chance": "by chance",
                 "chance_hi": "chance, 97.5%", "above_chance": "above chance"}  # fmt: skip
        listing = table.rename(columns=names).to_html(
            index=False, float_format=lambda v: f"{v:.3f}", border=0
        )
        agree = f"<details><summary>agreement of the seeds per cell</summary>{listing}</details>"
    seeds = int(panel["seed"].nunique())
    fragile = fragility(panel, examples).head(10)
    label = "label_name" if "label_name" in fragile.columns else "label"
    shown = fragile.assign(fragility=fragile["fragility"].map(lambda v: f"{v:.2f}"))[
        ["fragility", "lost", "gained", label, "words", "text"]
    ].rename(columns={label: "label", "lost": "cells lost", "gained": "cells gained"})
    runs = int(fragile["runs"].iloc[0]) if len(fragile) else 0
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (
        f"<p><b>{html.escape(name)}</b> ({seeds} seed{'s' if seeds != 1 else ''}):</p><ul>{items}</ul>{agree}"
        f"<details><summary>the ten most fragile examples (fragility: the share of the {runs} cells × seeds "
        f"that flip it)</summary>{shown.to_html(index=False, border=0)}</details>"
    )


def _cells(df: pd.DataFrame) -> str:
    rows = figure_plan(df).get("heatmap")
    if rows is None:
        return "<p class='muted'>No layer-ablation cells.</p>"
    parts = []
    recipe, layers = varying(rows), model_layers(rows)
    for panel in sorted(split_panels(rows), key=panel_order) if recipe else split_panels(rows):
        table = cell_intervals(panel)
        real = table[~table["includes_zero"].astype(bool)]
        name = f"{panel['model'].iloc[0]} · {panel['task'].iloc[0]}"
        if recipe:
            name += f" · {recipe_label(panel.iloc[0], layers.get(str(panel['model'].iloc[0])))}"
        shown = table.assign(
            span=[f"{f}..{la}" for f, la in zip(table["first"], table["last"], strict=True)],
            interval=[f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(table["lo"], table["hi"], strict=True)],
            drop_interval=[
                f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(table["drop_lo"], table["drop_hi"], strict=True)
            ],
        )[
            [
                "span",
                "accuracy",
                "drop_points",
                "drop_interval",
                "relative_decrease",
                "interval",
                "seeds",
                "includes_zero",
            ]
        ]
        listing = shown.to_html(index=False, float_format=lambda v: f"{v:.2f}", border=0)
        parts.append(
            f"<p><b>{html.escape(name)}</b>: {len(real)} of {len(table)} spans change accuracy beyond their 95% "
            f"interval (accuracy in %; drop from the intact model in points; relative decrease in %, negative = "
            f"gain; the same intervals as <code>python -m analysis ci</code>).</p>"
            f"<details><summary>all {len(table)} spans</summary>{listing}</details>"
        )
    return "\n".join(parts)


def _runs(runs: Runs) -> str:
    df = runs.table
    summary = []
    for sweep, rows in df.groupby("sweep", sort=True):
        steps = sorted({int(s) for s in rows["train_steps"].dropna()})
        summary.append(
            {
                "directory": sweep,
                "study": _join(rows["study"]) or "-",
                "models": _join(rows["model"]),
                "tasks": _join(rows["task"]),
                "methods": _join(rows["method"]),
                "seeds": _join(rows["seed"]),
                "jobs": len(rows),
                "trained here": int(rows["trained_now"].fillna(False).sum()),
                "diverged": int(rows["diverged"].fillna(False).sum()),
                "lr": _join(rows["lr"], "{:g}"),
                "steps": ", ".join(map(str, steps)) if len(steps) <= 4 else f"{steps[0]}..{steps[-1]}",
                "validation n": _join(rows["n_eval"]),
                "precision train/eval": f"{_join(rows['train_precision'])} / {_join(rows['eval_precision'])}",
                "code": _join(rows["code_version"]),
                "wall time (jobs)": _duration(float(rows["job_seconds"].sum())),
                "packages": _packages(Path(str(sweep)), rows),
            }
        )
    # One column per directory: the fields are many and long (code versions, packages), the sources few.
    table = pd.DataFrame(summary).set_index("directory").T.to_html(border=0, escape=True)
    failed = "<p>No failed jobs.</p>"
    if len(runs.failed):
        failed = f"<p>Failed jobs ({len(runs.failed)}):</p>" + runs.failed.to_html(index=False, border=0)
    diverged = df[df["diverged"].fillna(False).astype(bool)]
    div = "<p>No diverged runs.</p>"
    if len(diverged):
        cols = [
            "sweep",
            "job_dir",
            "model",
            "task",
            "method",
            "variant",
            "init_std",
            "adapter_size",
            "lr",
            "seed",
            "diverged_step",
            "planned_steps",
            "accuracy",
        ]
        div = f"<p>Diverged runs ({len(diverged)}):</p>" + diverged[cols].to_html(index=False, border=0)
    return table + failed + div


def _join(values: pd.Series, fmt: str = "{}") -> str:
    """The distinct values of a column, sorted, as text ('' when all are missing)."""
    return ", ".join(fmt.format(v) for v in sorted(values.dropna().unique()))


def _packages(sweep: Path, rows: pd.DataFrame) -> str:
    """Package versions from the first job's result.json ('?' when it cannot be read)."""
    for job in rows["job_dir"]:
        try:
            versions = json.loads((sweep / str(job) / RESULT_JSON).read_text()).get("versions", {})
        except (OSError, ValueError):
            continue
        keep = ("python", "torch", "transformers", "datasets")
        return ", ".join(f"{k} {versions[k]}" for k in keep if k in versions)
    return "?"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
