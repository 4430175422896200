"""Block heatmaps (ablate.block=k): cells that remove whole blocks of k consecutive layers, planned by the
sweeper, checked in one line, drawn with layer-range axes and judged by the layer-ablation claims."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_config import run_config
from test_sweeper import study_jobs

from ablation.config import AblateConfig, ConfigError, block_ends, on_block_grid
from analysis.stats import blocks, layer_matrix


def test_the_grid_of_blocks_ends_with_a_shorter_block_where_k_does_not_divide_l():
    assert block_ends(1, 4) == [0, 1, 2, 3]
    assert block_ends(3, 30) == list(range(2, 30, 3))
    assert block_ends(4, 30) == [3, 7, 11, 15, 19, 23, 27, 29]
    assert on_block_grid(28, 29, 4, 30) and on_block_grid(0, 29, 4, 30) and on_block_grid(4, 7, 4, 30)
    assert not on_block_grid(1, 3, 4, 30) and not on_block_grid(0, 5, 4, 30)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ablate.block=0"], "ablate.block=0 is not allowed: an integer >= 1"),
        (["ablate.block=3", "ablate.first=1", "ablate.last=2"],
         "ablate.first=1 is not allowed: the first layer of a block of ablate.block=3 (a multiple of 3)"),
        (["ablate.block=3", "ablate.first=0", "ablate.last=3"],
         "ablate.last=3 is not allowed: the last layer of a block of ablate.block=3 on L=12 layers "
         "(2, 5, 8, 11)"),
    ],
)  # fmt: skip
def test_a_cell_off_the_block_grid_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        run_config(overrides)
    assert "\n" not in str(err.value)


def test_a_block_cell_is_the_same_cell_as_on_the_full_grid():
    """ablate.block enters no key: the cell 0..2 is one evaluation whichever heatmap asks for it."""
    from ablation.keys import cell_name

    plain = run_config(["ablate.first=0", "ablate.last=2"])
    block = run_config(["ablate.first=0", "ablate.last=2", "ablate.block=3"])
    assert block.ablate == AblateConfig(first=0, last=2, block=3)
    assert cell_name(plain.ablate) == cell_name(block.ablate)


@pytest.mark.parametrize(
    ("model", "block", "cells"),
    [("minilm_l6", 1, 21), ("mpnet_base", 2, 21), ("smollm2_135m", 5, 21)],
)
def test_the_quick_heatmap_is_about_six_blocks_at_any_depth(model, block, cells):
    """ablate.block=L/6 in the quick grid: every cell of the 6-layer model, 6 blocks of a deeper one."""
    jobs = study_jobs("layer_ablation", "preset=quick", f"model={model}")
    L = {"minilm_l6": 6, "mpnet_base": 12, "smollm2_135m": 30}[model]
    kept = [j for j in jobs if on_block_grid(int(j["ablate.first"]), int(j["ablate.last"]), block, L)]
    assert {j["ablate.block"] for j in jobs} == {str(block)}
    assert len(kept) == cells  # what the sweeper keeps of the expanded grid (tests/test_sweeper.py plans)
    assert {(int(j["ablate.first"]), int(j["ablate.last"])) for j in kept} == {
        (a, b) for a in range(0, L, block) for b in block_ends(block, L) if a <= b
    }


def test_a_block_matrix_is_indexed_by_the_blocks_first_and_last_layers():
    cells = [(a, b) for a in range(0, 10, 4) for b in block_ends(4, 10) if a <= b]
    df = pd.DataFrame(
        [
            {"first": a, "last": b, "relative_decrease": (b - a + 1) / 100 + a / 1000, "block": 4}
            for a, b in cells
        ]
    )
    assert blocks(df) == [(0, 3), (4, 7), (8, 9)]
    matrix = layer_matrix(df)
    assert list(matrix.index) == [0, 4, 8] and list(matrix.columns) == [3, 7, 9]
    assert matrix.loc[4, 9] == pytest.approx(0.06 + 0.004)  # a transposed or shifted matrix cannot pass
    assert matrix.isna().sum().sum() == 3  # the lower triangle


def test_the_sweeper_keeps_the_cells_of_whole_blocks_and_says_how_many_it_dropped():
    import subprocess
    import sys

    from e2e import REPO

    done = subprocess.run(
        [sys.executable, "-m", "ablation.run", "-m", "study=layer_ablation", "preset=quick", "model=smollm2_135m",
         "hydra.sweeper.dry_run=true"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert (
        "Dropped 444 of 900 jobs whose ablate.first..last is not a range of whole blocks (ablate.block)"
        in log
    )
    assert "Dry run: 21 jobs listed" in log
    # the cost before the work: 6 blocks of 5 layers, 56 block passes of 5 layers, and the intact pass
    assert (
        "Evaluation plan: 21 cells = 10.3 full passes (the full triangle of 30 layers: "
        "165.3 + 1 for the intact states, at its floor)" in log
    )
    jobs = [
        dict(re.findall(r"ablate\.(\w+)=(\d+)", line)) for line in log.splitlines() if " : study=" in line
    ]
    assert len(jobs) == 21 and all(on_block_grid(int(j["first"]), int(j["last"]), 5, 30) for j in jobs)
    assert {j["block"] for j in jobs} == {"5"}


@pytest.mark.sweeps
def test_a_block_heatmap_runs_through_the_user_s_command_and_the_claims_read_its_blocks(tmp_path):
    """The 3-layer toy in blocks of 2: three cells (0..1, 0..2 and 2..2, the shorter last block), each equal to
    the same cell of the full triangle's sweep (one training); the heatmap's axes are layer ranges; the single-layer claim is judged
    on single blocks and says so; the lower-versus-upper claim reads the two blocks."""
    from e2e import command, run, write_toy

    from analysis.claims import evaluate_claims
    from analysis.collect import load_runs

    conf = write_toy(tmp_path / "toy")
    store, cache = tmp_path / "store", tmp_path / "cache"
    grid = ["ablate.first=0..2", "ablate.last=0..2"]
    done = run(command(conf, tmp_path / "blocks", store, cache, *grid, "ablate.block=2"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "blocks" / "results.csv")
    assert sorted(zip(rows["first"], rows["last"], strict=True)) == [(0, 1), (0, 2), (2, 2)]
    assert (rows["block"] == 2).all() and rows["trained_now"].sum() == 1
    full = run(command(conf, tmp_path / "full", store, cache, *grid))
    assert full.returncode == 0, full.stderr[-3000:]
    every = pd.read_csv(tmp_path / "full" / "results.csv").set_index(["first", "last"])
    assert len(every) == 6 and not every["trained_now"].any()  # the same training
    for row in rows.itertuples():  # the same cells: computed once, in whichever sweep came first
        assert row.accuracy == every.loc[(row.first, row.last), "accuracy"]
        assert not every.loc[(row.first, row.last), "cell_computed"]
    assert (tmp_path / "blocks" / "heatmap.png").exists() and (tmp_path / "blocks" / "report.html").exists()
    claims = evaluate_claims(load_runs([tmp_path / "blocks"]).table).set_index("claim")
    single = claims.loc["single-layer removal costs little"]
    assert "single-block (2 layers)" in single["measured"] and "over 2 of 2 blocks" in single["measured"]
    lower = claims.loc["lower layers matter less"]
    assert "layers 2..2 removed" in lower["measured"] and "layers 0..1 removed" in lower["measured"]
