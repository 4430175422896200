"""The report's clickable heatmap in a real headless browser (Chromium, driven by Playwright): a sweep of
`python -m ablation.run` on the tiny model writes its report.html at its end; the page is opened offline, a
cell hovered and clicked, and what it shows is checked against the rows and the jobs' predictions.npz.

Needs Chromium (Debian: `apt-get install chromium`; .ci/run installs it where missing) or a browser named by
ABLATION_BROWSER. In CI a missing browser fails the test; elsewhere it is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import e2e
import pandas as pd
import pytest
from test_examples import recount  # lost and gained ids straight from predictions.npz

pytestmark = pytest.mark.browser
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    """The browser's executable: ABLATION_BROWSER, else the first of BROWSERS on the PATH."""
    found = os.environ.get("ABLATION_BROWSER") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if found is None:
        why = f"no browser: none of {BROWSERS} on the PATH and ABLATION_BROWSER unset (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


# the toy's cells, and its block heatmap (blocks of 2 of its 3 layers: 0..1, 0..2, 2..2)
GRIDS = {"cells": e2e.CELLS, "blocks": ["ablate.first=0..2", "ablate.last=0..2", "ablate.block=2"]}


@pytest.fixture(scope="module", params=list(GRIDS))
def sweep(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    conf = e2e.write_toy(root)
    out = root / "sweep"
    done = e2e.run(e2e.command(conf, out, root / "store", root / "cache", *GRIDS[request.param], "seed=0..1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def texts(sweep: Path) -> dict[str, str]:
    """Each example id's text, as the sweep's examples file holds it."""
    examples = pd.read_csv(next((sweep / "examples").glob("*.csv")), dtype=str, keep_default_na=False)
    return dict(zip(examples["id"], examples["text"], strict=True))


def test_hover_and_click_a_cell_of_the_report_in_chromium(sweep, tmp_path):
    from playwright.sync_api import sync_playwright

    rows = pd.read_csv(sweep / "results.csv")
    cells = rows.dropna(subset=["first", "last"])
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser(), args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1200, "height": 1000})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((sweep / "report.html").resolve().as_uri())
        axis = page.locator("#explorer-0 svg text.axis").all_text_contents()  # SVG: no innerText
        if rows["block"].max() == 2:  # the blocks named by their layers, once per axis
            assert sorted(axis) == sorted(["0–1", "2"] * 2)
        shown = 0
        for (first, last), group in cells.groupby(["first", "last"]):
            name = f"{int(first)}..{int(last)}"
            cell = page.locator(f"#explorer-0 [data-cell='{name}']")
            cell.scroll_into_view_if_needed()
            cell.hover()
            tip = page.inner_text("#explorer-0 .tip")
            assert tip.startswith(f"layers {name} without adapters: accuracy ")
            # one decimal, rounded once (a mean of 2 seeds on 40 examples can sit on a tie: .25)
            accuracy = float(tip.split("accuracy ")[1].split("%")[0])
            assert abs(accuracy - 100 * group["accuracy"].mean()) <= 0.05 + 1e-9, tip
            assert f"{len(group)} seeds" in tip
            cell.click()
            flips, text = recount(sweep, group), texts(sweep)
            assert page.inner_text("#explorer-0 .chosen-cell").startswith(f"Cell {name}:")
            for change in ("lost", "gained"):
                listed = page.locator(f"#explorer-0 tr.flip.{change}")
                ids = listed.evaluate_all("rows => rows.map(r => r.dataset.id)")
                assert set(ids) == flips[change] and len(ids) == len(flips[change]), (name, change)
                if ids:  # the first example's text, as the examples file holds it
                    assert listed.first.locator("td").nth(2).inner_text() == text[ids[0]]
                shown += len(ids)
            if shown and not (tmp_path / "clicked.png").exists():
                page.locator("#explorer-0").screenshot(path=str(tmp_path / "clicked.png"))
        chromium.close()
    assert shown > 0, "no cell of the toy sweep flipped an example: nothing was checked"
    assert all(url.startswith("file:") or url.startswith("data:") for url in requests), requests
