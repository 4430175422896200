"""What a process keeps between jobs: the pretrained model and tokenized data (Pretrained), per training key the
trained model and its evaluator (Session), and the `ProcessState` object that holds both and makes the
process-wide settings once.

Jobs that differ only in the ablation reuse the Session. Jobs that differ in method, adapter, seed or
training settings reuse the Pretrained: its model is reset to the pretrained weights and a freshly seeded head
(exactly what loading it anew gives), so only the trained parameters are rebuilt. Cell predictions are
kept on disk beside the trained parameters, so a re-run computes nothing new.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ablation.adapters import remove_adapters, wrap_norms
from ablation.atomic import clean_folder, lock, save_array, write_text
from ablation.config import EXACT, AblateConfig, CacheError, ModelConfig, RunConfig, TaskConfig
from ablation.cost import cost_line, layer_passes
from ablation.data import Encoded, encode, examples_table, load_task
from ablation.estimate import STEPS
from ablation.evaluate import Ablation, Evaluator, bound_resident_memory
from ablation.keys import cell_name, data_key, eval_key, process_spec, training_key, training_spec
from ablation.methods import prepare
from ablation.models import Stages, label_word_ids, lm_head_rows, load_model, use_label_words
from ablation.precision import resolve, resolve_precision
from ablation.results import DIAGNOSTIC_COLUMNS, DIAGNOSTICS
from ablation.train import (
    HISTORY_COLUMNS,
    checkpoint_path,
    load_trained,
    older_entries,
    save_trained,
    set_seed,
    store_path,
    train,
    train_once,
    validation_metric,
)
from ablation.trained_elsewhere import load_adapterhub, load_peft_lora


@dataclass
class Pretrained:
    """A pretrained model with a new head for `num_labels`, its tokenizer, and the tokenized tasks."""

    spec: str
    model: nn.Module
    tokenizer: object
    pristine: dict[str, torch.Tensor]  # the weights as loaded
    new_modules: list[nn.Module]  # what loading initialised (the head), in the order loading did it
    encoded: dict[tuple[str, str, str | None], Encoded] = field(default_factory=dict)
    examples: dict[str, pd.DataFrame] = field(default_factory=dict)
    label_rows: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict)

    def label_word_rows(self, cfg: RunConfig) -> torch.Tensor:
        """The pretrained LM head's rows of the task's label words (method.head=lm), once per process."""
        words = tuple(cfg.task.label_words)
        if words not in self.label_rows:
            ids = label_word_ids(self.tokenizer, list(words))
            self.label_rows[words] = lm_head_rows(self.model, cfg.model, cfg.paths.cache, ids)
        return self.label_rows[words]

    def fresh_model(self, seed: int) -> nn.Module:
        """The model as load_model gives it after set_seed(seed): pretrained weights, a seeded new head."""
        remove_adapters(self.model)
        self.model.load_state_dict(self.pristine)
        for p in self.model.parameters():
            p.grad = None
        set_seed(seed)
        with torch.no_grad():
            for module in self.new_modules:
                self.model._init_weights(module)
        return self.model

    def task_split(self, cfg: TaskConfig, split: str, cache: str, max_length: int) -> Encoded:
        """A split of the task, tokenized once per process."""
        key = (data_key(cfg), split, cfg.prompt)
        if key not in self.encoded:
            data = load_task(cfg, cache)
            self.encoded[key] = encode(data[split], self.tokenizer, cfg.text_fields, max_length, cfg.prompt)
        return self.encoded[key]

    def validation_examples(self, cfg: TaskConfig, cache: str) -> pd.DataFrame:
        """The validation examples with their ids and texts (ablation.data.examples_table), once per process."""
        key = data_key(cfg)
        if key not in self.examples:
            self.examples[key] = examples_table(load_task(cfg, cache)["validation"], cfg)
        return self.examples[key]


def pretrained_spec(model_cfg: ModelConfig, num_labels: int, cache: str) -> str:
    """What a loaded Pretrained depends on: two jobs with equal specs share it."""
    return json.dumps({"model": asdict(model_cfg), "num_labels": num_labels, "cache": cache}, sort_keys=True)


def load_pretrained(model_cfg: ModelConfig, num_labels: int, cache: str) -> Pretrained:
    """Load the model and tokenizer, and remember the weights and new modules needed to reset it."""
    model, tokenizer, missing = load_model(model_cfg, num_labels, cache)
    new_modules = _initialised_modules(model, missing)
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Pretrained(pretrained_spec(model_cfg, num_labels, cache), model, tokenizer, pristine, new_modules)


def _initialised_modules(model: nn.Module, missing: list[str]) -> list[nn.Module]:
    """Modules owning a missing (newly initialised) weight, in post-order: how loading initialises them."""
    owners = {name.rpartition(".")[0] for name in missing}

    def post_order(module: nn.Module, prefix: str):
        for name, child in module.named_children():
            yield from post_order(child, f"{prefix}{name}.")
        yield prefix[:-1], module

    return [module for name, module in post_order(model, "") if name in owners]


@dataclass
class Session:
    """A trained model ready to evaluate, with where its results are cached."""

    cfg: RunConfig
    key: str
    evaluator: Evaluator
    counts: dict
    train_metrics: dict
    trained_now: bool
    cell_dir: Path
    examples: pd.DataFrame  # the evaluated examples in prediction order (id, texts, label)
    timings: dict = field(default_factory=dict)
    _training_reported: bool = False
    _computed: set = field(default_factory=set)  # cells this process computed (not read from the cache)

    @property
    def store_entry(self) -> Path:
        """The store folder of this session's training key (cell_dir is <entry>/eval/<evaluation key>)."""
        return self.cell_dir.parent.parent

    def report_training(self) -> bool:
        """True for the first job of the session when it trained (later jobs reused the result)."""
        first, self._training_reported = not self._training_reported, True
        return first and self.trained_now

    def predictions(
        self, ablate: AblateConfig, group: Sequence[tuple[int, int]] = ()
    ) -> tuple[np.ndarray, bool]:
        """Predictions under `ablate` (its `cell` None: the intact model); True when this process computed them.

        Cached on disk under a lock per (training key, evaluation): a cell that another process is
        computing is waited for, then read. `group` lists the cells of this job's sweep group (jobs that
        differ only in first/last); the job that computes its cell computes the group's missing cells too,
        in the order that shares work, so one heatmap's cells cost one process the floor, whichever
        launcher spreads its jobs.
        """
        path = self._path(ablate)
        if not path.exists():
            with lock(self.cell_dir / "cells"):
                clean_folder(self.cell_dir)  # writes killed before their rename (all are under this lock)
                # the intact pass first (every cell starts from its hidden states), then the group's cells
                cells = dict.fromkeys([None, *(group if ablate.cell else ()), ablate.cell])
                todo = [c for c in cells if not self._path(self._cell_ablation(ablate, c)).exists()]
                bar = tqdm(total=len(todo), desc="eval cells", disable=len(todo) < 2, dynamic_ncols=True)
                ablation, L = Ablation.of(ablate), self.evaluator.num_layers
                spans = [c for c in todo if c is not None]
                passes = self.evaluator.passes_before(todo, ablation) + layer_passes(spans, L) / L

                def timed(seconds: float) -> None:  # what the cells cost, at the speed the first one measured
                    tqdm.write(f"[eval] {cost_line(len(spans), passes, L, seconds)}")

                for cell, preds in self._evaluate(todo, ablate, timed):
                    done = self._cell_ablation(ablate, cell)
                    save_array(self._path(done), preds.astype(np.int16))
                    self._computed.add(cell_name(done))
                    bar.update()
                bar.close()
                if self.evaluator.has_stats and not (self.cell_dir / DIAGNOSTICS).exists():
                    self._write_diagnostics()  # the intact pass just ran: its statistics cost nothing more
        return read_predictions(path, len(self.evaluator.labels)), cell_name(ablate) in self._computed

    def _evaluate(
        self, todo: list, ablate: AblateConfig, timed: Callable[[float], None]
    ) -> Iterator[tuple[tuple[int, int] | None, np.ndarray]]:
        """(cell, predictions) of these cells: exact, or the layer ranges estimated when ablate.estimate is set
        (the intact model is always exact)."""
        ablation = Ablation.of(ablate)
        if ablate.estimate in (None, EXACT):
            yield from self.evaluator.predict(todo, ablation, timed)
            return
        spans = [c for c in todo if c is not None]
        if None in todo:
            yield from self.evaluator.predict([None])
        cells = list(self.evaluator.estimate(spans, ablation, ablate.estimate))
        if spans:
            points = STEPS[ablate.estimate] or 1
            tqdm.write(
                f"[eval] {len(spans)} cells estimated ({ablate.estimate}) from {points} forward and backward "
                f"pass{'es' if points > 1 else ''} per label difference: {self.evaluator.estimate_seconds:.0f} s"
            )
        yield from cells

    def diagnostics_file(self) -> Path:
        """The file of what each adapter slot's contribution does in the intact model (Evaluator.diagnostics),
        cached beside the cell predictions; written first (an intact pass if this process has not made one)."""
        path = self.cell_dir / DIAGNOSTICS
        if not path.exists():
            with lock(self.cell_dir / "cells"):
                if not path.exists():
                    self._write_diagnostics()
        return path

    def _write_diagnostics(self) -> None:
        rows = self.evaluator.diagnostics()
        write_text(
            self.cell_dir / DIAGNOSTICS, pd.DataFrame(rows, columns=DIAGNOSTIC_COLUMNS).to_csv(index=False)
        )

    @staticmethod
    def _cell_ablation(ablate: AblateConfig, cell: tuple[int, int] | None) -> AblateConfig:
        if cell is None:
            return AblateConfig()  # the intact model, whatever the kind of the group's ablation
        return dataclasses.replace(ablate, first=cell[0], last=cell[1])

    def _path(self, ablate: AblateConfig) -> Path:
        return self.cell_dir / f"{cell_name(ablate)}.npy"


def read_predictions(path: Path, n: int) -> np.ndarray:
    """A cached cell's predictions; CacheError naming the file if it is unreadable or of another size."""
    try:
        preds = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CacheError(f"{path}: unreadable cell cache ({err}); delete the file to recompute it") from None
    if preds.shape != (n,) or preds.dtype.kind not in "iu":
        raise CacheError(
            f"{path}: holds {preds.dtype} {preds.shape}, expected {n} integer predictions; delete the file "
            "to recompute it"
        )
    return preds


def memory_budget(memory_gb: float | None, device: str) -> float:
    """Bytes the evaluator may hold in hidden states: eval.memory_gb, or a share of the device's memory
    (a quarter of the host's RAM on the CPU; 40% of what is free on the GPU, beside the model)."""
    if memory_gb is not None:
        return memory_gb * 2**30
    if device == "cuda":
        return 0.4 * torch.cuda.mem_get_info()[0]
    return 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def build_session(cfg: RunConfig, base: Pretrained, on_step: Callable[[dict], None] | None = None) -> Session:
    """Reset the shared model, add what the method trains, train or reuse it, and set up evaluation.

    `cfg` must be resolved for this machine (ablation.precision.resolve); `on_step` sees each training step
    as it is taken (ablation.train.train), when this call trains.
    """
    tic = time.perf_counter()
    model = base.fresh_model(cfg.seed)
    if cfg.method.head == "lm":  # no new head: the LM's own logits of the label words (frozen)
        use_label_words(model, base.label_word_rows(cfg))
    counts = prepare(model, cfg.model.family, cfg.method, cfg.adapter if cfg.trains_adapters else None)
    model.to(cfg.device)  # the shared model stays there; a no-op on the CPU
    kinds = ", ".join(
        f"{kind} {n:,}" for kind, n in counts.items() if kind not in ("total", "trainable") and n
    )
    share = 100 * counts["trainable"] / counts["total"]
    print(
        f"[params] {cfg.method.name}: trainable {counts['trainable']:,} of {counts['total']:,} ({share:.2f}%): "
        f"{kinds}",
        flush=True,
    )
    key = training_key(cfg)
    folder = store_path(cfg.paths.store, key)
    load_seconds = time.perf_counter() - tic

    def fit() -> dict:
        if cfg.method.load is not None or (cfg.trains_adapters and cfg.adapter.load is not None):
            return imported()
        train_data = base.task_split(cfg.task, "train", cfg.paths.cache, cfg.model.max_length)
        print(f"[train] training {key} ({len(train_data.labels)} examples)", flush=True)
        checkpoint = checkpoint_path(folder)
        evaluate = None
        if cfg.train.eval_every is not None:
            val = base.task_split(cfg.task, "validation", cfg.paths.cache, cfg.model.max_length)
            evaluate = functools.partial(
                validation_metric,
                model,
                val,
                cfg.task.metric,
                cfg.eval.batch_size,
                cfg.eval.precision,
                cfg.device,
            )
        metrics = train(model, train_data, cfg.train, cfg.seed, checkpoint, cfg.device, evaluate, on_step)
        metrics["counts"] = counts
        history = metrics.pop("history")
        save_trained(model, folder, training_spec(cfg), asdict(cfg), metrics, history)
        checkpoint.unlink(missing_ok=True)
        print(f"[train] stored in {folder} ({metrics['train_seconds']:.0f} s)", flush=True)
        return metrics

    def imported() -> dict:
        """A PEFT LoRA or AdapterHub folder's weights instead of a training: stored like one, with an empty
        history."""
        source = cfg.method.load if cfg.method.load is not None else cfg.adapter.load
        if cfg.method.load is not None:
            load_peft_lora(model, source)
        else:
            load_adapterhub(model, source, cfg.model.family, cfg.task.num_labels, cfg.model.num_layers)
        metrics = {"steps": 0, "planned_steps": 0, "train_seconds": 0.0, "diverged": False, "counts": counts,
                   "imported_from": str(Path(source).expanduser().resolve())}  # fmt: skip
        save_trained(
            model, folder, training_spec(cfg), asdict(cfg), metrics, {c: [] for c in HISTORY_COLUMNS}
        )
        print(f"[train] imported {source} into {folder} (no training)", flush=True)
        return metrics

    def load() -> dict:
        metrics = load_trained(model, folder)
        print(f"[train] reusing {folder} (trained in {metrics['train_seconds']:.0f} s)", flush=True)
        return metrics

    metrics, trained_now = train_once(folder, fit, load)
    model.eval()
    if cfg.ablatable:  # an ablation may give the ablated layers their pretrained LayerNorms back
        wrap_norms(model, cfg.model.family, base.pristine)
    val = base.task_split(cfg.task, "validation", cfg.paths.cache, cfg.model.max_length)
    budget = memory_budget(cfg.eval.memory_gb, cfg.device)
    evaluator = Evaluator(
        Stages(model, cfg.model.family), val, cfg.eval.batch_size, cfg.eval.precision, cfg.device, budget
    )
    if evaluator.sharded:
        print(
            f"[eval] states of {len(val.labels)} examples exceed eval.memory_gb={budget / 2**30:.2f}: "
            f"{len(evaluator.shards)} shards",
            flush=True,
        )
    examples = base.validation_examples(cfg.task, cfg.paths.cache)
    if not np.array_equal(examples["label"].to_numpy(), val.labels):  # the texts must be the scored ones
        raise CacheError(
            f"the examples of {data_key(cfg.task)} disagree with the tokenized validation labels"
        )
    cell_dir = folder / "eval" / eval_key(cfg, val.fingerprint())
    with lock(cell_dir / "cells"):
        save_array(cell_dir / "labels.npy", val.labels.astype(np.int16))
    timings = {"load_seconds": load_seconds, "setup_seconds": time.perf_counter() - tic}
    return Session(cfg, key, evaluator, counts, metrics, trained_now, cell_dir, examples, timings)


class ProcessState:
    """What one process keeps between the jobs it runs, and the process-wide settings it makes once.

    The entry point creates one; nothing else in the suite keeps state across jobs or changes the
    process's settings: the loaded Pretrained, the current Session, the precisions resolved on this machine
    (each logged once), TF32 matmuls on CUDA, glibc's allocator bound when an evaluation is sharded.
    """

    def __init__(self) -> None:
        self.pretrained: Pretrained | None = None
        self.session: Session | None = None
        self._precisions: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._logged: set[str] = set()
        self._stores_checked: set[str] = set()
        self._memory_bound = False

    def resolve(self, cfg: RunConfig) -> RunConfig:
        """The complete config of a validated one for this machine (ablation.precision.resolve), the bf16
        probe measured once per process and each choice logged once; called once per job, by the entry
        point."""

        def choose(requested: str, device: str, cache: str) -> tuple[str, str]:
            memo = (requested, device, cache)
            if memo not in self._precisions:
                self._precisions[memo] = resolve_precision(requested, device, cache)
            return self._precisions[memo]

        resolved, why = resolve(cfg, choose)
        for name, text in why.items():
            if name not in self._logged:
                print(f"[precision] {name}: {text}", flush=True)
                self._logged.add(name)
        if resolved.device == "cuda":  # fp32 matmuls on TF32 tensor cores (CUDA keys are apart anyway)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return resolved

    def open_session(self, cfg: RunConfig, on_step: Callable[[dict], None] | None = None) -> Session:
        """The session for a resolved config: the current one if the config allows, else built (and
        trained, once, each step shown to `on_step`) on the process's Pretrained."""
        if self.session is not None and process_spec(self.session.cfg) == process_spec(cfg):
            return self.session
        self.session = None  # release the previous evaluator's cached states before building another
        spec = pretrained_spec(cfg.model, cfg.task.num_labels, cfg.paths.cache)
        if self.pretrained is None or self.pretrained.spec != spec:
            self.pretrained = None  # release the previous model before loading another
            self.pretrained = load_pretrained(cfg.model, cfg.task.num_labels, cfg.paths.cache)
        self._notice_older_entries(Path(cfg.paths.store))
        self.session = build_session(cfg, self.pretrained, on_step)
        if self.session.evaluator.sharded and not self._memory_bound:
            bound_resident_memory()
            self._memory_bound = True
        return self.session

    def _notice_older_entries(self, store: Path) -> None:
        if str(store) in self._stores_checked:
            return
        self._stores_checked.add(str(store))
        older = older_entries(store)
        if older:
            print(
                f"[train] {store}: {older} entries of an older store version are not reused (cache misses: "
                "their keys were made by older code); delete them to free the space",
                flush=True,
            )


@functools.cache
def process_state() -> ProcessState:
    """The one ProcessState of this process, made on first use: the entry point asks for it once per job."""
    return ProcessState()
