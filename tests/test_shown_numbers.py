"""One number per cell on a page: the heatmap's annotation, the clickable heatmap's SVG and tooltip, and the
report's table of spans all print the cell's relative decrease as `analysis.stats.cell_intervals` gives it,
rounded once where it is shown. Checked on cells that sit on a rounding edge (x.x5), where rounding twice
(1.2500…06 -> 1.25 -> 1.2) or another order of the same arithmetic prints a different digit."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_examples import texts
from test_report import Sweep, wrong

from ablation.data import example_ids
from ablation.results import record_examples
from analysis.collect import load_runs
from analysis.plots import heatmap_plot
from analysis.report import build_report
from analysis.select import ablated
from analysis.stats import cell_intervals

LAYERS = 4


def edge_sweep(path) -> Sweep:
    """Every cell of a LAYERS-layer model in 2 seeds: the intact model right on 850 and on 750 of 1,000
    examples, cell i (in first, last order) wrong on 2 + 4i more in each, so its relative decrease over both
    seeds is 0.25, 0.75, 1.25, ... %, and the seeds' mean of their own decreases is not."""
    sweep = Sweep(path, "layer_ablation", task="rotten_tomatoes", deferred=True)
    table = pd.DataFrame({"id": example_ids(pd.DataFrame({"text": texts()})), "text": texts()})
    table["label"] = sweep.truth
    table["label_name"] = np.where(table["label"] == 1, "fresh", "rotten")
    name = record_examples(path, "rotten_tomatoes", table)
    for seed in (0, 1):
        intact = wrong(sweep.truth, (0.15, 0.25)[seed])  # wrong on examples 0..149, or 0..249
        cells = [(f, la) for f in range(LAYERS) for la in range(f, LAYERS)]
        for i, (first, last) in enumerate(cells):
            lost = 2 + 4 * i
            ablated_ = intact.copy()
            ablated_[400 : 400 + lost] = 1 - ablated_[400 : 400 + lost]  # right in the intact model
            sweep.job(
                intact, ablated_, seed=seed, first=first, last=last, examples=name, train_key=f"k{seed}"
            )
    sweep.save()
    return sweep


def span_rows(page: str) -> dict[str, list[str]]:
    """The report's table of every span: its cells' text per span ('0..3' -> [accuracy, drop, ...])."""
    rows = re.findall(r"<tr>\s*<td>(\d+\.\.\d+)</td>(.*?)</tr>", page, re.S)
    return {span: re.findall(r"<td>(.*?)</td>", rest) for span, rest in rows}


def test_every_number_a_page_prints_for_a_cell_is_its_value_rounded_once(tmp_path):
    sweep = edge_sweep(tmp_path / "sweep").path
    panel = ablated(load_runs([sweep]).table)
    table = cell_intervals(panel).set_index(["first", "last"])
    value = table["relative_decrease"]
    assert np.allclose((value * 10) % 1, 0.5)  # every cell on a rounding edge
    # the test has teeth: rounding twice, or the rows' own arithmetic, prints another digit for some cells
    twice = [f"{float(f'{v:.2f}'):.1f}" for v in value]
    rows = 100 * panel.groupby(["first", "last"])["relative_decrease"].mean()
    once = [f"{v:.1f}" for v in value]
    assert twice != once and [f"{v:.1f}" for v in rows[value.index]] != once

    ax = Figure().subplots()
    heatmap_plot(panel, ax)
    annotated = {(int(t.get_position()[1]), int(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert annotated == {cell: f"{v:.1f}" for cell, v in value.items()}

    page = build_report([sweep], tmp_path / "report.html").read_text()
    (blob,) = re.findall(r"<script type='application/json' class='data'>(.*?)</script>", page, re.S)
    data = json.loads(blob)
    spans = span_rows(page)
    assert len(spans) == len(value)
    for (first, last), v in value.items():
        name, row = f"{first}..{last}", table.loc[(first, last)]
        svg = re.search(rf"data-cell='{name}'.*?>(-?[\d.]+)</text>", page, re.S).group(1)
        assert svg == f"{v:.1f}", name
        # the tooltip prints the page data with toFixed(1): on a number of one decimal, its own digits
        tip = data["cells"][name]["decrease"]
        assert [f"{x:.1f}" for x in tip] == [f"{x:.1f}" for x in (v, row["lo"], row["hi"])], name
        listed = spans[name]
        assert listed[3] == f"{v:.2f}" and listed[4] == f"[{row['lo']:.2f}, {row['hi']:.2f}]", name


@pytest.mark.parametrize("v", [0.25000000000000577, 1.2499999999999998, 2.75])
def test_a_one_decimal_number_formats_to_itself(v):
    """What the tooltip relies on: the page data holds f'{v:.1f}' as a number, and formatting it again to one
    decimal (JavaScript's toFixed(1), emulated by Python's format, which agree on such numbers) changes
    nothing."""
    shown = float(f"{v:.1f}")
    assert f"{shown:.1f}" == f"{v:.1f}"
