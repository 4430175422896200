"""The report's heatmap you can click: an inline SVG per panel (no network, no library), its cells' numbers in
a tooltip on hover, and on click the examples the cell flips, most consistent across seeds first.

The numbers are those of the report's cell table (`analysis.stats.cell_intervals`) and the flips those of
`python -m analysis examples` (`analysis.examples.cell_flips`).
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_hex

from analysis.examples import ID, cell_flips, changed, examples_of, text_of
from analysis.stats import block_name, block_size, blocks, cell_intervals

CELL = 38  # pixels per heatmap cell
MARGIN = 34  # pixels left of and above the grid, for the layer numbers
SHOWN_TEXT = 400  # characters of an example's text kept in the page
CMAP = "RdBu_r"  # the PNG heatmap's colours (analysis.plots._draw_matrix)


def panel_data(panel: pd.DataFrame, title: str) -> dict:
    """What one clickable heatmap needs: its cells' numbers and colours, and per cell the examples it loses
    and gains as [position, seeds] pairs, with the examples' ids, texts and labels once."""
    examples = examples_of(panel)
    table = cell_intervals(panel)
    limit = float(np.nanmax(np.abs(table["relative_decrease"]))) if len(table) else 1.0
    color = Normalize(-(limit or 1.0), limit or 1.0)
    names = (
        examples["label_name"].astype(str)
        if "label_name" in examples.columns
        else examples["label"].astype(str)
    )
    cells = {}
    for _, r in table.iterrows():
        first, last = int(r["first"]), int(r["last"])
        flips = cell_flips(panel, first, last)
        rgba = colormaps[CMAP](color(r["relative_decrease"]))
        dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
        cells[f"{first}..{last}"] = {
            "first": first,
            "last": last,
            # rounded once, to the one decimal shown, by the PNG's rule (Python's; JavaScript's toFixed rounds
            # ties the other way): the SVG, the tooltip and heatmap.png print the same number
            "accuracy": _shown(r["accuracy"]),
            "drop": [_shown(r[c]) for c in ("drop_points", "drop_lo", "drop_hi")],
            "decrease": [_shown(r[c]) for c in ("relative_decrease", "lo", "hi")],
            "seeds": int(r["seeds"]),
            "color": to_hex(rgba),
            "ink": "#ffffff" if dark else "#1f2328",
            "lost": _pairs(flips, "lost"),
            "gained": _pairs(flips, "gained"),
        }
    layers = sorted({c["first"] for c in cells.values()} | {c["last"] for c in cells.values()})
    starts, ends, axis = layers, layers, [str(layer) for layer in layers]
    if block_size(panel) > 1:  # a block heatmap: rows the blocks' first layers, columns their last
        spans = blocks(panel)
        starts, ends, axis = [a for a, _ in spans], [b for _, b in spans], [block_name(*s) for s in spans]
    return {
        "title": title,
        "rows": starts,
        "columns": ends,
        "names": axis,
        "cells": cells,
        "ids": examples[ID].tolist(),
        "texts": [t if len(t) <= SHOWN_TEXT else t[: SHOWN_TEXT - 1] + "…" for t in text_of(examples)],
        "labels": names.tolist(),
    }


def _shown(value: float) -> float:
    """The value as the page shows it: one decimal."""
    return float(f"{float(value):.1f}")


def _pairs(flips: pd.DataFrame, change: str) -> list[list[int]]:
    """[position, seeds] of the examples the cell `change`s (lost or gained), most seeds first."""
    part = changed(flips, change)
    return [[int(p), int(n)] for p, n in zip(part["position"], part[change], strict=True)]


def heatmap_html(data: dict, index: int) -> str:
    """One panel: the SVG grid (upper triangle: rows the first ablated layer, columns the last), its tooltip
    and the list a click fills; the data as JSON beside it."""
    row = {layer: i for i, layer in enumerate(data["rows"])}
    column = {layer: i for i, layer in enumerate(data["columns"])}
    margin = max(MARGIN, 10 + 7 * max(map(len, data["names"]), default=0))  # room for "25–29"
    size = margin + CELL * len(row) + 4
    parts = []
    for i, name in enumerate(data["names"]):
        pos = margin + CELL * i + CELL / 2
        parts.append(f"<text x='{pos}' y='{margin - 8}' text-anchor='middle' class='axis'>{name}</text>")
        parts.append(f"<text x='{margin - 8}' y='{pos + 4}' text-anchor='end' class='axis'>{name}</text>")
    for name, cell in data["cells"].items():
        x, y = margin + CELL * column[cell["last"]], margin + CELL * row[cell["first"]]
        single = row[cell["first"]] == column[cell["last"]]  # one layer, or one block
        outline = " stroke='#1f2328' stroke-width='1.5'" if single else ""
        parts.append(
            f"<g class='cell' data-cell='{name}' tabindex='0'><rect x='{x}' y='{y}' width='{CELL - 2}' "
            f"height='{CELL - 2}' fill='{cell['color']}'{outline}/><text x='{x + CELL / 2 - 1}' "
            f"y='{y + CELL / 2 + 3}' text-anchor='middle' fill='{cell['ink']}'>{cell['decrease'][0]:.1f}</text></g>"
        )
    unit = "layer" if data["rows"] == data["columns"] else "block (its layers)"
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (
        f"<div class='explorer' id='explorer-{index}'>"
        f"<p><b>{html.escape(data['title'])}</b>: relative decrease (%) per cell, rows the first ablated {unit}, "
        "columns the last; hover a cell for its numbers, click it for the examples it flips.</p>"
        f"<svg width='{size}' height='{size}' role='img' aria-label='clickable heatmap'>{''.join(parts)}</svg>"
        "<div class='tip' hidden></div><div class='flips'></div>"
        f"<script type='application/json' class='data'>{payload}</script></div>"
    )


STYLE = """
.explorer { position: relative; margin: 1em 0 2em; }
.explorer svg text { font-size: 11px; pointer-events: none; } .explorer svg .axis { fill: #57606a; }
.explorer .cell { cursor: pointer; } .explorer .cell:hover rect, .explorer .cell.chosen rect {
  stroke: #0969da; stroke-width: 3; }
.explorer .tip { position: absolute; background: #1f2328; color: white; padding: 0.4em 0.6em; border-radius: 4px;
  font-size: 0.85em; pointer-events: none; z-index: 2; max-width: 28em; }
.explorer .flips { max-height: 32em; overflow-y: auto; }
.explorer .flips td.seeds { white-space: nowrap; }
"""

SCRIPT = """
document.querySelectorAll('.explorer').forEach(function (root) {
  var data = JSON.parse(root.querySelector('script.data').textContent);
  var tip = root.querySelector('.tip'), flips = root.querySelector('.flips');
  function fmt(v) { return v.toFixed(1); }
  function describe(c) {
    return 'layers ' + c.first + '..' + c.last + ' without adapters: accuracy ' + fmt(c.accuracy) + '%' +
      ', drop ' + fmt(c.drop[0]) + ' points [' + fmt(c.drop[1]) + ', ' + fmt(c.drop[2]) + ']' +
      ', relative decrease ' + fmt(c.decrease[0]) + '% [' + fmt(c.decrease[1]) + ', ' + fmt(c.decrease[2]) + ']' +
      ' (95% intervals, ' + c.seeds + (c.seeds == 1 ? ' seed' : ' seeds') + '); lost ' + c.lost.length +
      ' examples, gained ' + c.gained.length;
  }
  function cell(el) { return data.cells[el.getAttribute('data-cell')]; }
  function rows(c, change) {
    var list = c[change];
    var head = '<tr><th>seeds</th><th>label</th><th>text</th></tr>';
    var body = list.map(function (pair) {
      var i = pair[0], e = document.createElement('td');
      e.textContent = data.texts[i];
      var label = document.createElement('td'); label.textContent = data.labels[i];
      return '<tr class="flip ' + change + '" data-id="' + data.ids[i] + '"><td class="seeds">' + pair[1] +
        '/' + c.seeds + '</td>' + label.outerHTML + e.outerHTML + '</tr>';
    }).join('');
    return '<h4>' + change + ' (' + list.length + ' examples' +
      (change == 'lost' ? ': intact right, ablated wrong' : ': intact wrong, ablated right') +
      '; seeds: in how many it is ' + change + ')</h4><table>' + head + body + '</table>';
  }
  root.querySelectorAll('.cell').forEach(function (el) {
    el.addEventListener('mousemove', function (ev) {
      var box = root.getBoundingClientRect();
      tip.textContent = describe(cell(el));
      tip.style.left = (ev.clientX - box.left + 14) + 'px';
      tip.style.top = (ev.clientY - box.top + 14) + 'px';
      tip.hidden = false;
    });
    el.addEventListener('mouseleave', function () { tip.hidden = true; });
    el.addEventListener('click', function () {
      root.querySelectorAll('.cell.chosen').forEach(function (o) { o.classList.remove('chosen'); });
      el.classList.add('chosen');
      var c = cell(el);
      flips.innerHTML = '<p class="chosen-cell"><b>Cell ' + c.first + '..' + c.last + '</b>: ' + describe(c) +
        '.</p>' + rows(c, 'lost') + rows(c, 'gained');
    });
  });
});
"""


def explorers(panels: list[tuple[pd.DataFrame, str]]) -> str:
    """The clickable heatmaps of these (panel, title) pairs, with their style and script once."""
    parts = [heatmap_html(panel_data(panel, title), i) for i, (panel, title) in enumerate(panels)]
    return f"<style>{STYLE}</style>{''.join(parts)}<script>{SCRIPT}</script>"
