"""What an evaluation plan costs, in full passes of the model over the validation split, said before the work.

The cached evaluation (ablation.evaluate.Evaluator) holds the intact model's state at every layer boundary,
so a cell first..last runs layers first..L-1 only, and the next cell of the same first layer extends the
ablated chain instead of starting again. Counted here from the cells alone, the same way the evaluator
counts what it runs (tests/test_cost.py checks the two agree), so a sweep can say its cost before it runs.
"""

from __future__ import annotations

from collections.abc import Sequence

Cell = tuple[int, int]


def layer_passes(cells: Sequence[Cell], num_layers: int) -> float:
    """Layer passes (one layer over the whole split) of evaluating `cells` in this order from held states:
    each cell from its first layer, or from the previous cell's last when it shares the first layer. The
    states they start from cost one full pass more where they are not held yet (the intact model's, or the
    all-removed model's for ablate.kind=keep)."""
    L = num_layers
    total = 0
    chain: Cell | None = None
    for first, last in cells:
        start = chain[1] + 1 if chain and chain[0] == first and first - 1 <= chain[1] <= last else first
        total += (last + 1 - start) + (L - 1 - last)  # the ablated layers still to run, then the rest
        chain = (first, last)
    return total


def floor_passes(num_layers: int) -> float:
    """Full passes of the whole triangle of an L-layer model at its floor, L(L+1)(L+2)/6 layer passes
    (without the intact pass)."""
    L = num_layers
    return L * (L + 1) * (L + 2) / 6 / L


def cost_line(n_cells: int, passes: float, num_layers: int, seconds_per_pass: float | None = None) -> str:
    """One line: the cells, their cost in full passes (the states they start from included) against the full
    triangle's floor and, given the speed measured here, the time it means."""
    line = (
        f"{n_cells} cells = {passes:.1f} full passes (the full triangle of {num_layers} layers: "
        f"{floor_passes(num_layers):.1f} + 1 for the intact states, at its floor)"
    )
    if seconds_per_pass is not None:
        seconds = passes * seconds_per_pass
        about = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
        line += f": about {about} here ({seconds_per_pass:.2f} s a full pass, measured on the first cell)"
    return line


def plan_passes(trainings: Sequence[tuple[int, Sequence[tuple[Sequence[Cell], bool]]]]) -> float:
    """Full passes of a sweep's plan: per training (its model's layer count, its groups of cells in order
    with whether they keep), one intact pass that every group starts from, the all-removed pass of each keep
    group, and every group's cells."""
    total = 0.0
    for L, groups in trainings:
        total += 1 + sum(layer_passes(cells, L) / L + keep for cells, keep in groups)
    return total


def plan_line(trainings: Sequence[tuple[int, Sequence[tuple[Sequence[Cell], bool]]]]) -> str:
    """The line a sweep says before it runs: its cells and what they cost (cells already cached cost
    nothing then)."""
    n_cells = sum(len(cells) for _, groups in trainings for cells, _ in groups)
    passes = plan_passes(trainings)
    layers = sorted({L for L, _ in trainings})
    if len(trainings) == 1:
        return cost_line(n_cells, passes, layers[0])
    floors = ", ".join(f"{floor_passes(L):.1f} + 1 on {L} layers" for L in layers)
    return (
        f"{n_cells} cells of {len(trainings)} trainings = {passes:.1f} full passes (a training's full "
        f"triangle at its floor: {floors})"
    )
