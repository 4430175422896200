"""Planning a sweep, as functions of override lists: `a..b` ranges (also `a..L`, `a..L-1` up to the model's
layer count L), the product of a grid, the union of grids, the lower-triangle filter, the order that shares
work, and the cell plan (which cells each group of jobs computes together).

Uses Hydra's public override parser only; the sweeper (ablation.sweeper) calls these, then validates and
launches.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from ablation.atomic import write_text
from ablation.config import EXACT, ConfigError

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
# Layer expressions of the model's layer count L, resolved per job once the model is known: L, L-c, L/d and
# L/d+c or L/d-c (integer division), alone (`L-1`, `L/2`) or as a range's end (`0..L-1`, `L/2..L-1`).
_L_EXPR = r"L(?:/\d+)?(?:[+-]\d+)?"
_LAYER_RANGE = re.compile(rf"^(?:(-?\d+)|({_L_EXPR}))\.\.({_L_EXPR})$|^({_L_EXPR})$")
_L_PARTS = re.compile(r"^L(?:/(\d+))?(?:([+-])(\d+))?$")
ABLATE_KEYS = ("ablate.first", "ablate.last")
# A block size written with L (`ablate.block=L/6`: about six blocks whatever the depth) is at least 1: every
# layer range on a model of fewer layers than the divisor.
BLOCK_KEY = "ablate.block"
# Jobs sharing these run back to back: switching the model or task reloads the model.
GROUPING_KEYS = ("preset", "model", "task")


class RangeError(ConfigError):
    """A sweep value written with `..` that is not an integer range a..b with a <= b."""


# Fields whose value is a list of layers: there `a..b` is one value, the list [a, ..., b], not a sweep.
LAYER_LIST_KEYS = ("adapter.layers",)


def _layer_list(key: str, value: str) -> str:
    """A layer-list field's value with each `a..b` or single index as Hydra's list `[a,...,b]` (a sweep of
    lists when comma-separated); L-expressions stay for the sweeper (expand_layer_ranges)."""
    text = value.strip()
    if text.startswith(("[", "'", '"')) or text in ("null", ""):
        return value
    out = []
    for part in text.split(","):
        part = part.strip()
        match = _RANGE.match(part)
        if re.fullmatch(r"\d+", part):
            out.append(f"[{part}]")
        elif match:
            out.append(str(list(range(int(match.group(1)), int(match.group(2)) + 1))).replace(" ", ""))
            if out[-1] == "[]":
                raise RangeError(f"{key}={value}: empty range {part}, a..b needs a <= b")
        elif _LAYER_RANGE.match(part):
            out.append(part)
        else:
            raise RangeError(
                f"{key}={value}: layers are written a..b, a list [a,b,...], or a..L-1 / L/2..L-1 in a sweep"
            )
    return ",".join(out)


def expand_range(key: str, value: str) -> str:
    """Rewrite an inclusive `a..b` value as Hydra's `range(a,b+1)` (for a layer-list field: the list
    [a,...,b]); other values pass through."""
    if key.lstrip("+~") in LAYER_LIST_KEYS:
        return _layer_list(key, value)
    text = value.strip()
    if ".." not in text or set(text) == {"."} or "/" in text or "\\" in text or text.startswith(("'", '"')):
        return value
    if _LAYER_RANGE.match(text):
        return text  # expanded per job by the sweeper, once the model's L is known
    match = _RANGE.match(text)
    if match is None:
        raise RangeError(
            f"{key}={value}: a range is written a..b with integers, or a..L / a..L-1 up to the model's "
            f"layer count L, e.g. {key}=0..11 or {key}=0..L-1"
        )
    lo, hi = int(match.group(1)), int(match.group(2))
    if lo > hi:
        raise RangeError(f"{key}={value}: empty range, a..b needs a <= b (e.g. {key}={hi}..{lo})")
    return f"range({lo},{hi + 1})"


def expand_arguments(arguments: list[str]) -> list[str]:
    """Apply expand_range to every `key=value` override."""
    out = []
    for arg in arguments:
        key, sep, value = arg.partition("=")
        out.append(f"{key}={expand_range(key, value)}" if sep else arg)
    return out


def _job_dict(job: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in job)


def estimated(job: list[str]) -> bool:
    """True for a job whose cell is estimated (ablate.estimate set), not evaluated exactly."""
    return _job_dict(job).get("ablate.estimate", "null") not in ("null", "None", EXACT)


def _layer_value(expr: str, num_layers: int) -> int:
    """The integer of a layer expression (`L`, `L-c`, `L/d`, `L/d+c`) for a model with num_layers layers."""
    match = _L_PARTS.match(expr)
    divisor, sign, offset = match.group(1), match.group(2), match.group(3)
    value = num_layers // int(divisor) if divisor else num_layers
    return value + (int(offset) if sign == "+" else -int(offset)) if sign else value


def layer_range(value: str, num_layers: int) -> list[int] | None:
    """The integers of a value written with L (`a..L-1`, `L/2..L-1`, `L-1`) for a model with num_layers
    layers; None for other values."""
    match = _LAYER_RANGE.match(value.strip())
    if match is None:
        return None
    start, start_expr, end_expr, single = match.groups()
    if single is not None:
        lo = hi = _layer_value(single, num_layers)
    else:
        lo = int(start) if start is not None else _layer_value(start_expr, num_layers)
        hi = _layer_value(end_expr, num_layers)
    if lo > hi:
        raise RangeError(f"{value}: empty for a model with L={num_layers} layers")
    return list(range(lo, hi + 1))


def _value_order(value: str) -> tuple:
    """Numbers in numeric order (seed 2 before 10, size 8 before 64), other values as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def drop_lower_triangle(jobs: list[list[str]]) -> tuple[list[list[str]], int]:
    """Drop jobs whose ablate.first > ablate.last; order the rest by (other overrides, first, last)."""
    kept = []
    for job in jobs:
        values = _job_dict(job)
        first, last = (values.get(k) for k in ABLATE_KEYS)
        if first is not None and last is not None and int(first) > int(last):
            continue
        kept.append(job)

    # Jobs of one model and task run together (no reloads); cells that share `first` run back to back,
    # in increasing `last`, so the evaluator can extend one ablated chain instead of recomputing it.
    def order(job: list[str]) -> tuple:
        values = _job_dict(job)
        grouping = tuple(_value_order(values.get(k, "")) for k in GROUPING_KEYS)
        rest = tuple(
            (k, _value_order(v)) for k, v in sorted(values.items()) if k not in (*ABLATE_KEYS, *GROUPING_KEYS)
        )
        return grouping, rest, *(int(values.get(k, -1)) for k in ABLATE_KEYS)

    kept.sort(key=order)
    return kept, len(jobs) - len(kept)


def product(overrides: list[Override]) -> list[list[str]]:
    """Every combination of the overrides' values (a sweep override's values, others as given), the
    earlier keys outer; a key given twice keeps its last value, as Hydra's basic sweeper does."""
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(
                    f"{override.input_line}: only discrete sweeps (a,b,c / range / a..b) are allowed"
                )
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def choose_grid(
    params: Mapping[str, Any], grids: list[Mapping[str, Any]], presets: Mapping[str, Any], preset: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """The sweep's (params, grids): a study's own, or its smaller ones for the chosen preset
    (`hydra.sweeper.presets.<preset>.params/.grids`). The flag is True when a preset is chosen but the
    study has no grid for it (its full grid runs)."""
    if preset is None or preset not in presets:
        return dict(params), [dict(g) for g in grids], preset is not None and bool(params)
    chosen = presets[preset]
    unknown = sorted(set(chosen) - {"params", "grids"})
    if unknown:
        raise ConfigError(f"hydra.sweeper.presets.{preset} has {unknown}: allowed are params and grids")
    return dict(chosen.get("params") or {}), [dict(g) for g in chosen.get("grids") or [{}]], False


def build_jobs(
    params: dict[str, Any], grids: list[dict[str, Any]], arguments: list[str], parser: OverridesParser
) -> list[list[str]]:
    """The product of params and the command line with each grid, grids in order, duplicates dropped."""
    common = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    jobs: list[list[str]] = []
    for grid in grids or [{}]:
        # The command line comes last, so it wins over a grid's value for the same key.
        overrides = expand_arguments([f"{k}={v}" for k, v in grid.items()] + common)
        for job in product(parser.parse_overrides(overrides)):
            if job not in jobs:
                jobs.append(job)
    return jobs


def expand_layer_ranges(
    jobs: list[list[str]], num_layers: Callable[[tuple[str, ...]], int]
) -> list[list[str]]:
    """Replace `a..L(-c)` values by one job per integer; num_layers(the job's other overrides) gives L."""
    out = []
    for job in jobs:
        ranged = [arg for arg in job if _LAYER_RANGE.match(arg.split("=", 1)[1].strip())]
        if not ranged:
            out.append(job)
            continue
        rest = [arg for arg in job if arg not in ranged]
        L = num_layers(tuple(rest))
        choices = [
            [f"{k}={str(layer_range(value, L)).replace(' ', '')}"]  # one list
            if k in LAYER_LIST_KEYS
            else [f"{k}={max(1, v) if k == BLOCK_KEY else v}" for v in layer_range(value, L)]
            for k, value in (a.split("=", 1) for a in ranged)
        ]
        # two values may name one job on this model (adapter.layers=L/2..L-1 and L-1..L-1 when L = 2)
        out += [job for combo in itertools.product(*choices) if (job := rest + list(combo)) not in out]
    return out


PLAN = "cell_plan.json"


def group_key(job: list[str]) -> str:
    """What identifies a job's group: its overrides other than ablate.first/last, in a fixed order."""
    return " ".join(sorted(arg for arg in job if arg.split("=", 1)[0] not in ABLATE_KEYS))


def write_cell_plan(sweep_dir: Path, jobs: list[list[str]]) -> None:
    """Record each group's cells in sweep order, so whichever job of a group runs first computes them all."""
    plan: dict[str, list[list[int]]] = defaultdict(list)
    for job in jobs:
        values = _job_dict(job)
        if all(k in values for k in ABLATE_KEYS):
            plan[group_key(job)].append([int(values[k]) for k in ABLATE_KEYS])
    write_text(sweep_dir / PLAN, json.dumps(plan, indent=1, sort_keys=True))


def planned_cells(sweep_dir: Path, overrides: list[str]) -> list[tuple[int, int]]:
    """The cells (first, last) of the group of the job with these overrides; [] outside a planned sweep."""
    path = sweep_dir / PLAN
    if not path.exists():
        return []
    try:
        plan = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path}: malformed sweep plan; delete it and run the sweep again") from None
    return [tuple(cell) for cell in plan.get(group_key(list(overrides)), [])]
