"""Every option through the user's command: a matrix of user paths generated from conf/ and the config
declarations.

What must be covered is enumerated, not listed by hand: every file of every conf group, each ablation kind x
LayerNorm setting, each adapter placement, combine and norm, each kind of imported folder (AdapterHub Houlsby
and Pfeiffer in both weight formats, a PEFT LoRA folder), the basic and joblib launchers. Each row of MATRIX
combines several of them in one sweep of at least two jobs through `python -m ablation.run -m` on tiny models
(the conf file's own settings, its weights and data swapped for tiny ones on disk); what a row covers is read
from what it wrote (each job's Hydra choices and result row), so a row that silently ran something else covers
nothing. A new conf file or option value that no row covers fails `test_every_option_is_covered`.

Each row: exit 0, its rows written, the report written; the same command again trains and computes nothing.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import DECODER_OPTIONS, tiny_tokenizer
from e2e import FILLER, LABEL_WORDS, REPO, run
from transformers import (
    AutoModel,
    BertConfig,
    LlamaConfig,
    MistralConfig,
    MPNetConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    RobertaConfig,
)

from ablation.config import ABLATE_KINDS, ABLATE_NORMS, COMBINES, HEADS, LAYERNORMS, NORMS, PLACEMENTS
from ablation.data import deduplicate, split_frame
from ablation.trained_elsewhere import AH_HEAD_WEIGHTS, AH_WEIGHTS
from analysis.collect import load_runs
from analysis.examples import examples_of

pytestmark = pytest.mark.sweeps

CONF = REPO / "conf"
FIXTURE = Path(__file__).parent / "fixtures" / "adapterhub"
LAUNCHERS = ("basic", "joblib")
# The imported folders a user brings: AdapterHub's two adapters in each format it saves, and PEFT's LoRA.
AH_FORMATS = {
    Path(name).suffix.lstrip("."): (name, head)
    for name, head in zip(AH_WEIGHTS, AH_HEAD_WEIGHTS, strict=True)
}
IMPORTS = (
    *(f"adapterhub-{a}-{f}" for a in ("houlsby", "pfeiffer") for f in AH_FORMATS),
    "adapterhub-leaveout-bin",  # Houlsby trained with leave_out=[0]: adapter.layers=[1, 2]
    "adapterhub-houlsby-llama",  # a decoder's: after o_proj and the MLP, AdapterHub's two-layer head
    "peft-lora",
    "peft-lora-llama",  # a decoder's: LoRA on q_proj, v_proj, down_proj and its `score` head
)
# Hydra's choice of each group when the command line names none (conf/config.yaml's defaults)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
# as tests/e2e.py: the toy learns, in the same precision on any machine
TRAIN = ["train.lr=1e-2", "train.batch_size=8", "train.precision=fp32", "eval.precision=fp32"]
CELLS = ["ablate.first=0..1", "ablate.last=1..2"]  # 4 cells of a 3-layer model


def required() -> set[tuple[str, str]]:
    """Every (option, value) some row must cover, from conf/ and the config declarations."""
    need = {(group, p.stem) for group in GROUPS for p in (CONF / group).glob("*.yaml")}
    need |= {("ablate.kind/layernorm", f"{k}/{n}") for k in ABLATE_KINDS for n in ABLATE_NORMS}
    need |= {("adapter.placement", v) for v in PLACEMENTS} | {("adapter.combine", v) for v in COMBINES}
    need |= {("adapter.norm", v) for v in NORMS} | {("import", v) for v in IMPORTS}
    need |= {("hydra/launcher", v) for v in LAUNCHERS}
    need |= {("method.layernorms", v) for v in LAYERNORMS} | {("method.head", v) for v in HEADS}
    need |= {("adapter.layers", v) for v in ("every layer", "some layers")}
    return need


# --- tiny stand-ins on disk -----------------------------------------------------------------------------------

_CONFIGS = {"bert": BertConfig, "mpnet": MPNetConfig, "roberta": RobertaConfig, "llama": LlamaConfig,
            "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}  # fmt: skip


def _tiny_model(folder: Path, family: str, num_layers: int) -> Path:
    """A random tiny model of the family with the tests' word tokenizer (pad id 0 in every family; decoders:
    2 key-value heads and the sliding windows of tests/conftest.py)."""
    torch.manual_seed(0)
    # tied embeddings, as SmolLM2's: the base model saved alone still holds method.head=lm's LM head
    decoder = {}
    if family in DECODER_OPTIONS:
        decoder = {"num_key_value_heads": 2, "tie_word_embeddings": True, **DECODER_OPTIONS[family]}
    config = _CONFIGS[family](vocab_size=100, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                              intermediate_size=64, pad_token_id=0, **decoder)  # fmt: skip
    AutoModel.from_config(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _toy_csv(path: Path, fields: list[str], num_labels: int) -> Path:
    """160 examples whose label word decides the label (as tests/e2e.py's toy), in the task's text fields."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        label = i % num_labels
        words = [*rng.choice(FILLER, size=4), rng.choice(LABEL_WORDS[label])]
        rng.shuffle(words)
        texts = [" ".join(words), *(" ".join(rng.choice(FILLER, size=3)) for _ in fields[1:])]
        rows.append((*texts, label))
    pd.DataFrame(rows, columns=[*fields, "label"]).to_csv(path, index=False)
    return path


def _word_tokenizer(folder: Path) -> None:
    """A tokenizer whose word `w<i>` is token i and that adds nothing: the fixture's token ids as text."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i for i in range(4, 100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)  # fmt: skip


def adapterhub_world(root: Path) -> tuple[dict[str, Path], Path, Path, dict, list[str]]:
    """The AdapterHub fixture as a user meets it: its base model with a tokenizer, its four folders (Houlsby and
    Pfeiffer, as saved and converted to the other weight format), and a 3-label CSV whose validation split is
    exactly the fixture's four token sequences. Returns (folders by IMPORTS name, the base model, the CSV, the
    fixture's own predictions per folder and cell (first, last; None: intact) in validation order, the task
    arguments that split the CSV so)."""
    from safetensors.torch import load_file, save_file

    base = root / "hub_base"
    shutil.copytree(FIXTURE / "base", base)
    _word_tokenizer(base)
    folders = {}
    for adapter in ("houlsby", "pfeiffer"):
        saved = {f for f in AH_FORMATS if (FIXTURE / adapter / AH_FORMATS[f][0]).exists()}
        for fmt in AH_FORMATS:
            folder = root / f"adapterhub-{adapter}-{fmt}"
            shutil.copytree(FIXTURE / adapter, folder)
            if fmt not in saved:  # the other format AdapterHub writes: the same tensors
                (source,) = saved
                for weights, other in zip(AH_FORMATS[fmt], AH_FORMATS[source], strict=True):
                    if fmt == "safetensors":
                        save_file(torch.load(folder / other, weights_only=True), folder / weights)
                    else:
                        torch.save(load_file(folder / other), folder / weights)
                    (folder / other).unlink()
            folders[folder.name] = folder
    from test_adapterhub import leave_out_folder

    leave_out = leave_out_folder(root / "adapterhub-leaveout-bin")  # Houlsby without layer 0's adapters
    folders[leave_out.name] = leave_out
    folders["adapterhub-houlsby-llama"] = root / "adapterhub-houlsby-llama"
    shutil.copytree(FIXTURE / "llama" / "houlsby", folders["adapterhub-houlsby-llama"])
    shutil.copytree(FIXTURE / "llama" / "base", root / "hub_base_llama")
    _word_tokenizer(root / "hub_base_llama")  # pads with id 0 on the right, as the fixture's rows are
    expected = json.loads((FIXTURE / "expected.json").read_text())
    llama = json.loads((FIXTURE / "llama" / "expected.json").read_text())
    # the same four token sequences (the Llama rows padded with 0): one CSV and split serve both bases
    assert [[t for t, m in zip(*row, strict=True) if m] for row in zip(llama["input_ids"], llama["attention_mask"], strict=True)] == [
        [t for t, m in zip(*row, strict=True) if m] for row in zip(expected["input_ids"], expected["attention_mask"], strict=True)
    ]  # fmt: skip
    texts = [
        " ".join(f"w{t}" for t, m in zip(ids, mask, strict=True) if m)
        for ids, mask in zip(expected["input_ids"], expected["attention_mask"], strict=True)
    ]
    filler = ["w4 w5 w6", "w7 w8 w9 w10"]  # training examples (the import trains nothing)
    df = pd.DataFrame({"text": texts + filler, "label": [0, 1, 2, 0, 1, 2]})
    seed = next(s for s in range(100) if set(_validation(df, len(texts), s)) == set(texts))
    df.to_csv(root / "fixture.csv", index=False)
    order = [texts.index(t) for t in _validation(df, len(texts), seed)]
    predictions = {}
    for name in folders:
        saved = llama if name.endswith("-llama") else expected
        spans = saved["adapters"][name.split("-")[1].replace("leaveout", "houlsby")]
        predictions[name] = {
            None if span == "intact" else tuple(map(int, span.split("-"))): np.argmax(logits, -1)[
                order
            ].tolist()
            for span, logits in spans.items()
        }
    # without layer 0's adapters: intact is the Houlsby folder's 0..0 cell, 1..last its 0..last
    houlsby = predictions["adapterhub-houlsby-bin"]
    predictions[leave_out.name] = {None: houlsby[(0, 0)], (1, 1): houlsby[(0, 1)], (1, 2): houlsby[(0, 2)]}
    return (
        folders,
        base,
        root / "fixture.csv",
        predictions,
        [f"task.split_seed={seed}", "task.validation_size=4"],
    )


def _validation(df: pd.DataFrame, size: int, seed: int) -> list[str]:
    """The validation texts of the suite's own split, in its order."""
    kept, _ = deduplicate(df, ["text"])
    return list(split_frame(kept, size, seed, None)["validation"]["text"])


def peft_folder(root: Path, model: Path, family: str = "bert", name: str = "peft-lora") -> Path:
    """A PEFT LoRA folder saved by PEFT itself on a tiny model (tests/test_peft_import.py's)."""
    from test_peft_import import save_peft
    from transformers import AutoModelForSequenceClassification

    save_peft(AutoModelForSequenceClassification.from_pretrained(model, num_labels=2), family, root / name)
    return root / name


def _model(name: str, folder: Path, layers: int) -> list[str]:
    """The model conf file `name` with the weights of `folder`."""
    return [f"model={name}", "model.source=hub", f"model.hub_id={folder}", f"model.num_layers={layers}",
            "model.artifact=null"]  # fmt: skip


def _task(name: str, csv: Path, validation: int, split: list[str] = ()) -> list[str]:
    """The task conf file `name` with the examples of `csv`."""
    return [f"task={name}", "task.source=csv", f"task.path={csv}", "task.artifact=null", "task.glue_name=null",
            f"task.validation_size={validation}", *split]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Tiny models of each family (3 layers; 2 and 6 for the studies' quick presets), a toy CSV per task file's
    fields and labels, the imported folders: the arguments that swap each conf file's weights and data."""
    root = tmp_path_factory.mktemp("world")
    models = {f: _tiny_model(root / f, f, 3) for f in _CONFIGS}
    six = _tiny_model(root / "bert6", "bert", 6)
    folders, hub_base, fixture_csv, predictions, fixture_split = adapterhub_world(root)
    folders["peft-lora"] = peft_folder(root, models["bert"])
    folders["peft-lora-llama"] = peft_folder(root, models["llama"], "llama", "peft-lora-llama")
    model_args, task_args = {}, {}
    for path in sorted((CONF / "model").glob("*.yaml")):
        family = yaml.safe_load(path.read_text()).get("family", "bert")
        layers = 6 if path.stem == "minilm_l6" else 3
        model_args[path.stem] = _model(path.stem, six if layers == 6 else models[family], layers)
    for path in sorted((CONF / "task").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        fields, labels = spec.get("text_fields", ["text"]), spec.get("num_labels", 2)
        task_args[path.stem] = _task(path.stem, _toy_csv(root / f"{path.stem}.csv", fields, labels), 40)
    model_args["minilm_l6/L2"] = _model("minilm_l6", _tiny_model(root / "bert2", "bert", 2), 2)
    # the AdapterHub fixture's base model and four sentences, as a BERT model's and a 3-label task's conf files
    model_args["bert_base_uncased/fixture"] = _model("bert_base_uncased", hub_base, 3)
    model_args["llama3_2_1b/fixture"] = _model("llama3_2_1b", hub_base.parent / "hub_base_llama", 3)
    task_args["tweets/fixture"] = _task("tweets", fixture_csv, 4, fixture_split)
    return {
        "root": root,
        "model": model_args,
        "task": task_args,
        "folders": folders,
        "predictions": predictions,
    }


# --- the matrix -----------------------------------------------------------------------------------------------

# name -> (model conf, task conf, further arguments); {folders[NAME]} is an imported folder of the world. Rows
# combine options so that few sweeps cover every value; the studies run their quick preset on a stand-in of
# minilm_l6 (the preset's model).
MATRIX: dict[str, tuple[str, str, list[str]]] = {
    "parallel-multiply-mean-pretrained-joblib": ("bert_base_uncased", "cola", [
        *CELLS, "adapter.placement=parallel", "adapter.combine=multiply", "adapter.norm=layernorm",
        "ablate.kind=mean", "ablate.layernorm=pretrained", "logger=tensorboard", "train=paper",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    "normed-batchnorm-keep": ("mpnet_base", "mrpc", [
        *CELLS, "adapter.placement=normed", "adapter.norm=batchnorm", "ablate.kind=keep", "logger=mlflow",
        "adapter.layers=1..2", "method.layernorms=adapted"]),  # the cells with layer 0 dropped: 2 jobs
    "lora-scale-pretrained": ("roberta_base", "mnli", [
        *CELLS, "method=lora", "ablate.kind=scale", "ablate.alpha=0.5", "ablate.layernorm=pretrained",
        "logger=wandb", "logger.mode=offline", "method.layernorms=train"]),
    "serial-zero-pretrained": ("bert_base_uncased", "qnli", [
        *CELLS, "ablate.layernorm=pretrained", "train.max_steps=100", "method.head=pooler"]),
    "mean-keep-trained": ("mpnet_base", "qqp", [
        *CELLS[:1], "ablate.last=2", "ablate.kind=mean,keep", "train.max_steps=100"]),
    "keep-pretrained": ("roberta_base", "rte", [
        "ablate.first=0", "ablate.last=0..1", "ablate.kind=keep", "ablate.layernorm=pretrained"]),
    "scale-trained": ("bert_base_uncased", "sst2", [
        "ablate.first=1", "ablate.last=1..2", "ablate.kind=scale", "ablate.alpha=0,2"]),
    "adapterhub-folders": ("bert_base_uncased/fixture", "tweets/fixture", [
        "ablate.first=0..2", "ablate.last=0..2",
        "adapter.load={folders[adapterhub-houlsby-bin]},{folders[adapterhub-houlsby-safetensors]},"
        "{folders[adapterhub-pfeiffer-bin]},{folders[adapterhub-pfeiffer-safetensors]},"
        "{folders[adapterhub-leaveout-bin]}"]),
    "adapterhub-llama-folder": ("llama3_2_1b/fixture", "tweets/fixture", [
        "ablate.first=0..2", "ablate.last=0..2", "adapter.load={folders[adapterhub-houlsby-llama]}"]),
    "peft-folder": ("bert_base_uncased", "rotten_tomatoes", [
        *CELLS, "method=lora", "method.load={folders[peft-lora]}"]),
    # decoders: each model file, both methods, a decoder's PEFT folder (2 cells each: 0..1, 0..2)
    "decoder-smollm2-parallel-pretrained-lm": ("smollm2_135m", "tweets", [
        "ablate.first=0", "ablate.last=1..2", "adapter.placement=parallel", "ablate.layernorm=pretrained",
        "method.head=lm", "task.label_words=[bad,good,great]"]),  # words of the tiny tokenizer
    "decoder-qwen2-lora-mean": ("qwen2_5_0_5b", "sst2", [
        "ablate.first=0", "ablate.last=1..2", "method=lora", "method.target=[q_proj,v_proj,down_proj]",
        "ablate.kind=mean"]),
    "decoder-qwen3-keep-adapted": ("qwen3_0_6b", "cola", [
        "ablate.first=1", "ablate.last=1..2", "ablate.kind=keep", "method.layernorms=adapted"]),
    "decoder-mistral-lora-scale": ("mistral_7b", "rotten_tomatoes", [
        "ablate.first=0", "ablate.last=1..2", "method=lora", "ablate.kind=scale", "ablate.alpha=0.5"]),
    "decoder-llama3-peft-folder": ("llama3_2_1b", "rotten_tomatoes", [
        "ablate.first=0", "ablate.last=1..2", "method=lora", "method.load={folders[peft-lora-llama]}"]),
    **{
        # the trade-off's quick grid asks for top_k with k = 6: the 6-layer stand-in; the others on 2 layers
        f"study-{p.stem}": (
            "minilm_l6" if p.stem == "tradeoff" else "minilm_l6/L2",
            "rotten_tomatoes",
            [f"study={p.stem}", "preset=quick"],
        )
        for p in sorted((CONF / "study").glob("*.yaml"))
    },
}  # fmt: skip


def _arguments(world: dict, name: str, sweep: Path) -> list[str]:
    model, task, extra = MATRIX[name]
    extra = [arg.format(folders=world["folders"]) for arg in extra]
    return ["-m", *world["model"][model], *world["task"][task], *TRAIN, *extra,
            f"paths.store={world['root'] / 'store'}", f"paths.cache={world['root'] / 'cache'}",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip


def _covers(sweep: Path, folders: dict[str, Path]) -> set[tuple[str, str]]:
    """What a sweep ran: each job's Hydra choices and the settings its result row records."""
    names = {str(path): name for name, path in folders.items()}
    got = set()
    for job in sweep.iterdir():
        if not (job / "result.json").exists():
            continue
        choices = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
        got |= {
            (group, str(choice))
            for group, choice in choices.items()
            if group in GROUPS or group == "hydra/launcher"
        }
        row = json.loads((job / "result.json").read_text())  # the row's columns and more
        if row["first"] is not None:
            got.add(("ablate.kind/layernorm", f"{row['ablate_kind']}/{row['ablate_layernorm']}"))
        for column in ("adapter_placement", "adapter_combine", "adapter_norm"):
            if row[column] is not None:
                got.add((column.replace("_", "."), row[column]))
        for column in ("layernorms", "head"):
            if row[column] is not None:
                got.add((f"method.{column}", row[column]))
        if row["adapter_layers"] is not None:
            every = "+".join(map(str, range(row["config"]["model"]["num_layers"])))
            got.add(("adapter.layers", "every layer" if row["adapter_layers"] == every else "some layers"))
        for column in ("adapter_loaded_from", "lora_loaded_from"):
            if row[column] is not None:
                got.add(("import", names[row[column]]))
    return got


@pytest.fixture(scope="module")
def sweeps(world, request) -> dict[str, tuple]:
    """The rows of MATRIX that the selected tests read, each run twice (the second must compute nothing), two
    rows at a time (each job uses one thread): name -> (sweep folder, first run, second run)."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    wanted = set()
    for item in request.session.items:
        if item.module is not request.module:
            continue
        params = getattr(item, "callspec", None)
        wanted |= {params.params["name"]} if params else set(READS.get(item.originalname, MATRIX))

    def twice(name: str) -> tuple:
        sweep = world["root"] / "sweeps" / name
        first = run(_arguments(world, name, sweep), env=env, timeout=600)
        again = run(_arguments(world, name, sweep), env=env, timeout=600) if first.returncode == 0 else None
        return sweep, first, again

    names = [name for name in MATRIX if name in wanted]
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(names, pool.map(twice, names), strict=True))


def test_every_option_is_covered(world, sweeps):
    covered = set()
    for sweep, first, _ in sweeps.values():
        if first.returncode == 0:
            covered |= _covers(sweep, world["folders"])
    missing = required() - covered
    assert not missing, f"options no row of MATRIX covers (add them to a row): {sorted(missing)}"


@pytest.mark.parametrize("name", list(MATRIX))
def test_a_user_path_runs_writes_its_report_and_reruns_computing_nothing(sweeps, name):
    sweep, first, again = sweeps[name]
    assert first.returncode == 0, first.stderr[-3000:]
    rows = pd.read_csv(sweep / "results.csv")
    assert len(rows) >= 2 and rows["accuracy"].notna().all()
    assert (sweep / "report.html").exists()
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = pd.read_csv(sweep / "results.csv")
    assert len(rerun) == len(rows)
    assert not rerun["trained_now"].any() and not rerun["cell_computed"].any()
    _examples_join(sweep)


def _examples_join(sweep: Path) -> None:
    """Every row names the examples file its sweep kept, whose ids and labels hash to its name, in the order
    of the row's predictions (its labels those of predictions.npz)."""
    table = load_runs([sweep]).table
    assert table["examples"].notna().all()
    for name, rows in table.groupby("examples"):
        examples = examples_of(rows)
        assert len(examples) == rows["n_eval"].iloc[0] and examples["id"].is_unique
        for job in rows["job_dir"]:
            with np.load(sweep / str(job) / "predictions.npz") as p:
                assert np.array_equal(p["labels"], examples["label"].to_numpy()), (name, job)


READS = {
    "test_imported_adapterhub_folders_give_the_library_s_own_predictions_for_every_cell": [
        "adapterhub-folders",
        "adapterhub-llama-folder",
    ]
}


def test_imported_adapterhub_folders_give_the_library_s_own_predictions_for_every_cell(world, sweeps):
    """The Pfeiffer (normed) and Houlsby folders, each weight format, in one sweep: every cell's predictions on
    the fixture's four sentences are those of the `adapters` library itself (tests/fixtures/adapterhub)."""
    sweep, first, _ = sweeps["adapterhub-folders"]
    assert first.returncode == 0, first.stderr[-3000:]
    names = {str(path): name for name, path in world["folders"].items()}
    rows = pd.read_csv(sweep / "results.csv")
    # 6 cells of each full folder; the leave_out one's 3 within layers 1..2 (those with layer 0 dropped)
    assert len(rows) == 4 * 6 + 3 and (rows["train_steps"] == 0).all()
    checked = 0
    for row in rows.itertuples():
        expected = world["predictions"][names[row.adapter_loaded_from]]
        saved = np.load(sweep / str(row.job_dir) / "predictions.npz")
        assert saved["intact"].tolist() == expected[None]
        if (row.first, row.last) in expected:  # leave_out's cell 2..2 (layers 0 and 2 off) has no fixture
            assert saved["ablated"].tolist() == expected[(row.first, row.last)], (
                row.adapter_loaded_from,
                row.first,
            )
            checked += 1
    assert checked == 4 * 6 + 2
    leave_out = rows[rows["adapter_loaded_from"] == str(world["folders"]["adapterhub-leaveout-bin"])]
    assert set(leave_out["adapter_layers"]) == {"1+2"} and set(leave_out["layernorms"]) == {"freeze"}
    pfeiffer = rows[rows["adapter_placement"] == "normed"]
    assert len(pfeiffer) == 12 and pfeiffer["accuracy"].nunique() > 1  # its cells differ: the check has teeth
    # the Llama folder on the fixture's Llama base: every cell's predictions are the library's own
    sweep, first, _ = sweeps["adapterhub-llama-folder"]
    assert first.returncode == 0, first.stderr[-3000:]
    rows = pd.read_csv(sweep / "results.csv")
    expected = world["predictions"]["adapterhub-houlsby-llama"]
    assert len(rows) == 6 and (rows["train_steps"] == 0).all() and (rows["model"] == "llama3_2_1b").all()
    for row in rows.itertuples():
        saved = np.load(sweep / str(row.job_dir) / "predictions.npz")
        assert saved["intact"].tolist() == expected[None]
        assert saved["ablated"].tolist() == expected[(row.first, row.last)], (row.first, row.last)
    assert (
        len({tuple(v) for v in expected.values()}) > 1
    )  # some span changes a prediction: the check has teeth
