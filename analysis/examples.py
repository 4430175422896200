"""Which validation examples a layer range breaks: per-example flips, fragility, and agreement of the
flipped sets across seeds and across sweeps (methods, models), each against chance.

A cell *loses* an example its intact model got right and its ablated model gets wrong, and *gains* one the
other way round; either is a *flip*. Every job's predictions.npz holds the intact and ablated predictions in
the order of its sweep's examples file (`ablation.results.EXAMPLES`), which gives each example its id (the
sha256 of its text fields) and its text. Computed from the rows of `analysis.collect.load_runs`.
"""

from __future__ import annotations

from itertools import combinations, product
from pathlib import Path

import numpy as np
import pandas as pd

from ablation.results import EXAMPLES, examples_name
from analysis.collect import cached_predictions
from analysis.select import halves, model_layers

N_DRAWS = 200  # random flipped sets per run for the chance level of an agreement
CHANCE_LEVEL = 0.975  # an agreement above this quantile of the chance draws is "above chance"
ID = "id"


class TextsMissing(FileNotFoundError):
    """The rows' examples file is not in their sweep folder: its texts were removed, or it predates them."""


def examples_of(rows: pd.DataFrame) -> pd.DataFrame:
    """The examples the rows were scored on, in prediction order: id, the text fields, label[, label_name].

    The rows must name one examples file (one task's validation split). The file must exist in a sweep folder
    of the rows (TextsMissing, one line, otherwise), hash to its name and hold the predictions' labels.
    """
    if "sweep" not in rows.columns:
        raise KeyError("examples: rows need a `sweep` column (load them with load_runs)")
    named = rows["examples"].dropna().unique() if "examples" in rows.columns else []
    sweeps = sorted(map(str, rows["sweep"].unique()))
    if len(named) == 0:
        raise TextsMissing(
            f"{', '.join(sweeps)}: its rows predate the examples file (no `examples` column); run the sweep's "
            f"command again with hydra.sweep.dir=<that folder> to add it (nothing is retrained or recomputed)"
        )
    if len(named) > 1:
        raise ValueError(
            f"examples: the rows were scored on {len(named)} example sets ({', '.join(sorted(named))}); "
            "choose one task with --task"
        )
    name = str(named[0])
    for sweep in sweeps:
        file = Path(sweep) / EXAMPLES / f"{name}.csv"
        if file.is_file():
            return _checked(file, name, rows)
    where = " or ".join(str(Path(s) / EXAMPLES / f"{name}.csv") for s in sweeps)
    raise TextsMissing(
        f"{where} is missing: the sweep's texts were removed; the predictions alone still give every count "
        f"and interval (python -m analysis ci {sweeps[0]})"
    )


def _checked(file: Path, name: str, rows: pd.DataFrame) -> pd.DataFrame:
    table = pd.read_csv(file, dtype=str, keep_default_na=False)
    if ID not in table.columns or "label" not in table.columns:
        raise ValueError(f"{file}: not an examples file (columns {list(table.columns)})")
    try:
        table["label"] = table["label"].astype(np.int64)
    except ValueError:  # rows split inside a text: a line break an older version wrote unquoted
        raise ValueError(
            f"{file}: its rows do not parse (a text's line break written unquoted by an older version); delete "
            f"{file.parent} and run the sweep's command again into the same folder to rewrite it"
        ) from None
    task = name.rsplit("-", 1)[0]
    if examples_name(task, table) != name:
        raise ValueError(f"{file}: its ids and labels do not hash to its name (edited?); re-run its sweep")
    first = rows.iloc[0]
    labels = cached_predictions(first["sweep"], first["job_dir"])["labels"]
    if not np.array_equal(labels, table["label"].to_numpy()):
        raise ValueError(f"{file}: its labels differ from the predictions' of job {first['job_dir']}")
    return table


def text_of(examples: pd.DataFrame) -> pd.Series:
    """Each example's text: its text fields joined by ' || ' (a pair task's two sentences)."""
    fields = [c for c in examples.columns if c not in (ID, "label", "label_name")]
    return examples[fields].astype(str).agg(" || ".join, axis=1)


def cell_runs(panel: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """The rows of cell first..last of one panel, one per training (its seeds, or several imported folders),
    in seed order; a training two sweeps hold counts once."""
    return _trainings(panel[((panel["first"] == first) & (panel["last"] == last)).to_numpy(dtype=bool)])


def _trainings(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows in seed order, a training's cell once (the same training key and cell in two sweeps: the
    same predictions)."""
    rows = rows.sort_values(["first", "last", "seed"], kind="stable")
    if "train_key" in rows.columns and rows["train_key"].notna().all():
        rows = rows.drop_duplicates(["train_key", "first", "last"])
    return rows


def predictions(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The rows' predictions stacked: labels (examples,), intact and ablated (rows x examples)."""
    loaded = [cached_predictions(s, j) for s, j in zip(rows["sweep"], rows["job_dir"], strict=True)]
    labels = loaded[0]["labels"]
    if any(not np.array_equal(p["labels"], labels) for p in loaded):
        raise ValueError("examples: the rows were scored on different validation examples")
    return {
        "labels": labels,
        "intact": np.stack([p["intact"] for p in loaded]),
        "ablated": np.stack([p["ablated"] for p in loaded]),
    }


def flip_sets(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lost, gained, intact right): boolean (rows x examples) matrices of the rows' ablation."""
    return _flips(predictions(rows))


def _flips(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    right = p["intact"] == p["labels"]
    now = p["ablated"] == p["labels"]
    return right & ~now, ~right & now, right


def cell_flips(
    panel: pd.DataFrame, first: int, last: int, examples: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every example cell first..last flips in some seed: its position, id, label, in how many seeds it is
    lost and gained, and the intact and ablated predictions per seed ('1,1,0'); with `examples`, its text and
    label name. Most consistent across seeds first (lost or gained in the most seeds), then by position."""
    rows = cell_runs(panel, first, last)
    if rows.empty:
        raise ValueError(f"no cell {first}..{last} in these rows")
    p = predictions(rows)
    lost, gained, _ = _flips(p)
    where = np.flatnonzero(lost.any(axis=0) | gained.any(axis=0))
    table = pd.DataFrame(
        {
            "position": where,
            "label": p["labels"][where],
            "lost": lost[:, where].sum(axis=0),
            "gained": gained[:, where].sum(axis=0),
            "seeds": len(rows),
            "intact": [",".join(map(str, p["intact"][:, i])) for i in where],
            "ablated": [",".join(map(str, p["ablated"][:, i])) for i in where],
        }
    )
    if examples is not None:
        table.insert(1, ID, examples[ID].to_numpy()[where])
        table["text"] = text_of(examples).to_numpy()[where]
        if "label_name" in examples.columns:
            table.insert(3, "label_name", examples["label_name"].to_numpy()[where])
    table["_most"] = np.maximum(table["lost"], table["gained"])
    table = table.sort_values(["_most", "lost", "position"], ascending=[False, False, True], kind="stable")
    return table.drop(columns="_most").reset_index(drop=True)


def changed(flips: pd.DataFrame, change: str) -> pd.DataFrame:
    """The examples of a `cell_flips` table the cell `change`s ('lost' or 'gained'), those it changes in the
    most seeds first, then by position."""
    part = flips[flips[change] > 0]
    return part.sort_values([change, "position"], ascending=[False, True], kind="stable")


def flip_counts(panel: pd.DataFrame, spans: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Per named span the panel has ({name: (first, last)}, e.g. `named_spans`): its seeds, the examples
    lost and gained per seed (mean), in at least one seed and in every seed."""
    out = []
    for name, (first, last) in spans.items():
        rows = cell_runs(panel, first, last)
        if rows.empty:
            continue
        lost, gained, _ = flip_sets(rows)
        out.append(
            {
                "span": name,
                "first": first,
                "last": last,
                "seeds": len(rows),
                "lost_per_seed": lost.sum(axis=1).mean(),
                "gained_per_seed": gained.sum(axis=1).mean(),
                "lost_any": int(lost.any(axis=0).sum()),
                "lost_all": int(lost.all(axis=0).sum()),
                "gained_any": int(gained.any(axis=0).sum()),
                "gained_all": int(gained.all(axis=0).sum()),
            }
        )
    return pd.DataFrame(out)


def named_spans(panel: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Every layer, the bottom half and the top half of the panel's model: {name: (first, last)}."""
    layers = model_layers(panel).get(str(panel["model"].iloc[0]))
    if layers is None:
        return {}
    spans = {f"all layers 0..{layers - 1}": (0, layers - 1)}
    split = halves(layers)
    if split is not None:
        (b0, b1), (t0, t1) = split
        spans[f"bottom half {b0}..{b1}"] = (b0, b1)
        spans[f"top half {t0}..{t1}"] = (t0, t1)
    return spans


def summary(panel: pd.DataFrame) -> tuple[list[str], pd.DataFrame | None]:
    """What the command and the report say first of a panel, as lines of text: the examples every layer and
    each half lose and gain, and, with several runs, how often the seeds' flipped sets agree above chance;
    with the per-cell agreement (`seed_agreement`; None for one run)."""
    lines = []
    for _, r in flip_counts(panel, named_spans(panel)).iterrows():
        every = f" (in all {r['seeds']} seeds: lost {r['lost_all']}, gained {r['gained_all']})"
        lines.append(
            f"{r['span']}: lost {r['lost_per_seed']:.1f}, gained {r['gained_per_seed']:.1f} per seed"
            + (every if r["seeds"] > 1 else "")
        )
    table = seed_agreement(panel)
    if table.empty or table["seeds"].max() < 2:
        return lines, None
    flipping = table[table["flipped_per_seed"] > 0]
    lines.append(
        f"the seeds' flipped sets agree above chance in {int(flipping['above_chance'].sum())} of "
        f"{len(flipping)} cells that flip anything (mean Jaccard {flipping['agreement'].mean():.3f}, "
        f"by chance {flipping['chance'].mean():.3f})"
    )
    return lines, table


# --- agreement of flipped sets, against chance --------------------------------------------------------


def _jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard index of boolean sets along the last axis (NaN where both are empty)."""
    union = (a | b).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, (a & b).sum(axis=-1) / np.maximum(union, 1), np.nan)


def _random_flips(
    lost: np.ndarray, gained: np.ndarray, right: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """N_DRAWS random flipped sets of one run (draws x examples): as many lost examples drawn from those its
    intact model got right, as many gained from those it got wrong, as it had."""
    out = np.zeros((N_DRAWS, len(right)), dtype=bool)
    for pool, count in (
        (np.flatnonzero(right), int(lost.sum())),
        (np.flatnonzero(~right), int(gained.sum())),
    ):
        if count == 0:
            continue
        picks = np.argpartition(rng.random((N_DRAWS, len(pool))), count - 1, axis=1)[:, :count]
        out[np.arange(N_DRAWS)[:, None], pool[picks]] = True
    return out


def agreement(
    a: tuple[np.ndarray, np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """How much the flipped sets of runs agree: the mean Jaccard index over pairs of runs (pairs within `a`,
    or every run of `a` with every run of `b`), and the same mean where each run's flips are drawn at random
    at its own rates (lost among the examples it had right, gained among those it had wrong): the chance
    level, its CHANCE_LEVEL quantile, and the ratio. `a` and `b` are `flip_sets` outputs."""
    rng = np.random.default_rng(seed)
    flipped_a = a[0] | a[1]
    pairs = (
        list(combinations(range(len(flipped_a)), 2))
        if b is None
        else list(product(range(len(flipped_a)), range(len(b[0]))))
    )
    if not pairs:
        return {"agreement": np.nan, "chance": np.nan, "chance_hi": np.nan, "ratio": np.nan, "pairs": 0}
    flipped_b = flipped_a if b is None else b[0] | b[1]
    observed = np.nanmean([_jaccard(flipped_a[i], flipped_b[j]) for i, j in pairs])
    draws_a = [_random_flips(a[0][i], a[1][i], a[2][i], rng) for i in range(len(flipped_a))]
    draws_b = (
        draws_a if b is None else [_random_flips(b[0][j], b[1][j], b[2][j], rng) for j in range(len(b[0]))]
    )
    with np.errstate(all="ignore"):
        chance = np.nanmean(np.stack([_jaccard(draws_a[i], draws_b[j]) for i, j in pairs]), axis=0)
    mean = float(np.nanmean(chance)) if np.isfinite(chance).any() else np.nan
    high = float(np.nanquantile(chance, CHANCE_LEVEL)) if np.isfinite(chance).any() else np.nan
    return {
        "agreement": float(observed),
        "chance": mean,
        "chance_hi": high,
        "ratio": float(observed / mean) if mean and np.isfinite(mean) else np.nan,
        "pairs": len(pairs),
    }


AGREEMENT_COLUMNS = [
    "first",
    "last",
    "seeds",
    "flipped_per_seed",
    "agreement",
    "chance",
    "chance_hi",
    "ratio",
    "above_chance",
]


def seed_agreement(panel: pd.DataFrame) -> pd.DataFrame:
    """Per cell of one panel: its seeds, flipped examples per seed (mean), and the agreement of the seeds'
    flipped sets with its chance level (`agreement`); `above_chance` where it exceeds the chance quantile."""
    out = []
    for (first, last), _ in panel.groupby(["first", "last"], sort=True):
        rows = cell_runs(panel, int(first), int(last))
        sets = flip_sets(rows)
        found = agreement(sets)
        out.append(
            {
                "first": int(first),
                "last": int(last),
                "seeds": len(rows),
                "flipped_per_seed": float((sets[0] | sets[1]).sum(axis=1).mean()),
                **{k: found[k] for k in ("agreement", "chance", "chance_hi", "ratio")},
                "above_chance": bool(found["agreement"] > found["chance_hi"]),
            }
        )
    return pd.DataFrame(out, columns=AGREEMENT_COLUMNS)


CROSS_COLUMNS = [
    "first",
    "last",
    "flipped_a",
    "flipped_b",
    "agreement",
    "chance",
    "chance_hi",
    "ratio",
    "above_chance",
    "within_a",
    "within_b",
]


def cross_agreement(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per cell both panels have: the agreement of A's flipped sets with B's (every seed of A with every seed
    of B), its chance level, and each side's own agreement across its seeds for scale. The examples are
    joined by id (the examples both scored); ValueError when they share none."""
    ex_a, ex_b = examples_of(a), examples_of(b)
    shared = pd.Index(ex_a[ID]).intersection(pd.Index(ex_b[ID]))
    if shared.empty:
        raise ValueError("compare: the two sweeps share no example (their ids differ: another task or split)")
    take_a = pd.Index(ex_a[ID]).get_indexer(shared)
    take_b = pd.Index(ex_b[ID]).get_indexer(shared)
    spans = sorted(
        {(int(f), int(la)) for f, la in zip(a["first"], a["last"], strict=True)}
        & {(int(f), int(la)) for f, la in zip(b["first"], b["last"], strict=True)}
    )
    out = []
    for first, last in spans:
        sets_a = tuple(m[:, take_a] for m in flip_sets(cell_runs(a, first, last)))
        sets_b = tuple(m[:, take_b] for m in flip_sets(cell_runs(b, first, last)))
        found = agreement(sets_a, sets_b)
        out.append(
            {
                "first": first,
                "last": last,
                "flipped_a": float((sets_a[0] | sets_a[1]).sum(axis=1).mean()),
                "flipped_b": float((sets_b[0] | sets_b[1]).sum(axis=1).mean()),
                **{k: found[k] for k in ("agreement", "chance", "chance_hi", "ratio")},
                "above_chance": bool(found["agreement"] > found["chance_hi"]),
                "within_a": agreement(sets_a)["agreement"],
                "within_b": agreement(sets_b)["agreement"],
            }
        )
    return pd.DataFrame(out, columns=CROSS_COLUMNS)


# --- fragility ------------------------------------------------------------------------------------------

FRAGILITY_COLUMNS = [
    "position",
    ID,
    "label",
    "label_name",
    "words",
    "runs",
    "flips",
    "lost",
    "gained",
    "fragility",
    "text",
]


def fragility(panel: pd.DataFrame, examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per example of one panel: over its cells x seeds (runs), how many flip it (lost or gained) and the
    share that does (its fragility); with `examples`, its id, text, label name and length in words. Most
    fragile first."""
    rows = _trainings(panel)
    p = predictions(rows)
    lost, gained, _ = _flips(p)
    labels = p["labels"]
    flips = (lost | gained).sum(axis=0)
    table = pd.DataFrame(
        {
            "position": np.arange(len(labels)),
            "label": labels,
            "runs": len(rows),
            "flips": flips,
            "lost": lost.sum(axis=0),
            "gained": gained.sum(axis=0),
            "fragility": flips / len(rows),
        }
    )
    if examples is not None:
        text = text_of(examples)
        table[ID] = examples[ID].to_numpy()
        table["text"] = text.to_numpy()
        table["words"] = text.str.split().str.len().to_numpy()
        if "label_name" in examples.columns:
            table["label_name"] = examples["label_name"].to_numpy()
    table = table.sort_values(["fragility", "position"], ascending=[False, True], kind="stable")
    return table[[c for c in FRAGILITY_COLUMNS if c in table.columns]].reset_index(drop=True)
