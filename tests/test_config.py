"""Hydra configs: every YAML composes into a RunConfig; bad values are rejected with a named field."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

import ablation.config  # noqa: F401  (registers the schema and the sweeper)
from ablation.config import AdapterConfig, ConfigError, RunConfig, derive
from ablation.jobs import expand_range
from ablation.keys import variant

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
STUDIES = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))
GROUP_OPTIONS = [
    (group, p.stem)
    for group in ("adapter", "train", "method", "logger")
    for p in sorted((CONF / group).glob("*.yaml"))
]
PRESETS = sorted(p.stem for p in (CONF / "preset").glob("*.yaml"))


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def run_config(overrides: list[str]) -> RunConfig:
    """The validated config of these overrides, completed as the entry point completes it (derive)."""
    return derive(OmegaConf.to_object(compose_config(overrides)))


def test_conf_has_the_expected_options():
    assert {"mpnet_base", "minilm_l6", "bert_base_uncased", "roberta_base"} <= set(MODELS)
    assert {"rotten_tomatoes", "tweets", "rte", "mrpc", "cola"} <= set(TASKS)


def test_default_config():
    cfg = run_config([])
    assert isinstance(cfg, RunConfig)
    assert (cfg.model.name, cfg.model.num_layers, cfg.task.name) == ("mpnet_base", 12, "rotten_tomatoes")
    assert (cfg.adapter.size, cfg.adapter.init_std, cfg.adapter.positions) == (
        64,
        1e-3,
        ["attention", "output"],
    )
    assert cfg.ablate.first is None and cfg.ablate.last is None


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes(model):
    cfg = run_config([f"model={model}"])
    assert isinstance(cfg, RunConfig)
    assert cfg.model.name == model
    source = OmegaConf.load(CONF / "model" / f"{model}.yaml")
    assert cfg.model.num_layers == source.num_layers
    assert cfg.model.family == source.family


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes(task):
    cfg = run_config([f"task={task}"])
    assert isinstance(cfg, RunConfig)
    assert cfg.task.name == task
    source = OmegaConf.load(CONF / "task" / f"{task}.yaml")
    assert cfg.task.num_labels == source.num_labels
    assert list(cfg.task.text_fields) == list(source.text_fields)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_adapter_train_and_method_option_composes(group, option):
    cfg = run_config([f"{group}={option}"])
    source = OmegaConf.load(CONF / group / f"{option}.yaml")
    # what a null leaves to derive: the family's own names of PEFT's default LoRA targets
    filled = {("method", "target"): ["query", "value"]}  # the default model is an encoder
    for key, value in source.items():
        want = filled.get((group, key), value) if value is None else value
        assert getattr(getattr(cfg, group), key) == want


def _study_override(name: str) -> str:
    """`study=<name>` when config.yaml lists a study default, `+study=<name>` otherwise."""
    defaults = OmegaConf.load(CONF / "config.yaml").get("defaults", [])
    listed = any(
        (isinstance(d, str) and d.split("@")[0].split(":")[0].strip().lstrip("+") == "study")
        or (not isinstance(d, str) and any(str(k).split("@")[0] == "study" for k in d))
        for d in defaults
    )
    return f"study={name}" if listed else f"+study={name}"


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_composes(study):
    override = _study_override(study)
    cfg = run_config([override])
    assert isinstance(cfg, RunConfig)
    # the sweep parameters a study sets must be valid sweeps for the default model
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        full = compose("config", overrides=[override], return_hydra_config=True)
    params = full.hydra.sweeper.get("params") or {}
    for key, value in params.items():
        expanded = expand_range(key, str(value))
        if key in ("ablate.first", "ablate.last") and expanded.startswith("range("):
            lo, hi = (int(x) for x in expanded[len("range(") : -1].split(","))
            assert 0 <= lo < hi <= cfg.model.num_layers, (key, value)


BAD_VALUES = [
    (["ablate.first=12", "ablate.last=12"], "L=12"),
    (["ablate.first=0", "ablate.last=12"], "L=12"),
    (["ablate.first=-1", "ablate.last=3"], "L=12"),
    (["model=minilm_l6", "ablate.first=6", "ablate.last=6"], "L=6"),
    (["adapter.size=0"], "adapter.size"),
    (["adapter.size=-4"], "adapter.size"),
    (["adapter.init_std=0"], "adapter.init_std"),
    (["adapter.init_std=-1e-3"], "adapter.init_std"),
    (["ablate.first=5", "ablate.last=2"], "ablate.first"),
    (["ablate.first=3"], "ablate.first/last"),
    (["ablate.positions=middle"], "ablate.positions"),
    (["adapter.positions=[attention]", "ablate.first=0", "ablate.last=0", "ablate.positions=output"],
     "ablate.positions"),
    (["adapter.activation=softmax"], "adapter.activation"),
    (["train.precision=fp16"], "train.precision"),
    (["eval.batch_size=0"], "eval.batch_size"),
    (["task=tweets", "task.metric=f1"], "f1 needs num_labels=2"),
    (["method.name=bitfit"], "method.name='bitfit'"),
    (["method=top_k", "method.k=0"], "method.k=0"),
    (["method=top_k", "method.k=13"], "L=12"),
    (["method=top_k", "model=minilm_l6", "method.k=7"], "L=6"),
    (["method=top_k", "method.k=null"], "method.k=None"),
    (["method=layernorm", "method.k=3"], "only for method=top_k"),
    (["method=layernorm", "ablate.first=0", "ablate.last=0"], "method=layernorm has none"),
    (["method=full", "ablate.first=0", "ablate.last=11"], "method=full has none"),
    (["method=top_k", "ablate.first=2", "ablate.last=3"], "method=top_k has none"),
    (["adapter.norm=groupnorm"], "adapter.norm"),
    (["adapter.depth=0"], "adapter.depth"),
    (["adapter.placement=sideways"], "adapter.placement"),
    (["adapter.combine=concat"], "adapter.combine"),
    (["train.lr=0"], "train.lr=0.0 is not allowed"),
    (["train.epochs=0"], "train.epochs=0.0 is not allowed"),
    (["train.max_steps=0"], "train.max_steps=0 is not allowed"),
    (["seed=-3"], "seed=-3 is not allowed"),
    (["task.source=csv", "task.path=missing.csv"], "task.path='missing.csv' is not allowed: an existing CSV"),
    (["task.source=glue", "task.glue_name=null"], "task.glue_name=None is not allowed"),
    (["paths.store=/etc/hostname/store"], "/etc/hostname is a file"),
    (["ablate.kind=shuffle", "ablate.first=0", "ablate.last=0"], "ablate.kind='shuffle' is not allowed"),
    (["ablate.layernorm=random", "ablate.first=0", "ablate.last=0"], "ablate.layernorm='random'"),
    (["ablate.kind=scale", "ablate.first=0", "ablate.last=0"], "ablate.alpha=None is not allowed: a finite"),
    (["ablate.kind=scale", "ablate.alpha=nan", "ablate.first=0", "ablate.last=0"], "ablate.alpha=nan"),
    (["ablate.alpha=0.5", "ablate.first=0", "ablate.last=0"], "only for ablate.kind=scale, not zero"),
    (["ablate.kind=mean"], "set ablate.first and ablate.last too"),
    (["ablate.layernorm=pretrained"], "set ablate.first and ablate.last too"),
    (["ablate.estimate=taylor", "ablate.first=0", "ablate.last=0"], "ablate.estimate='taylor' is not allowed"),
    (["ablate.estimate=attribution"], "the intact model is always exact"),
    (["ablate.estimate=attribution", "ablate.layernorm=pretrained", "ablate.first=0", "ablate.last=0"],
     "only with ablate.layernorm=trained"),
    (["method=head", "ablate.first=0", "ablate.last=11"], "method=head has none"),
    (["train.eval_every=0"], "train.eval_every=0 is not allowed: None (off) or a positive"),
    (["logger=none", "logger.name=comet"], "logger='comet' is not allowed"),
    (["logger=wandb", "logger.mode=cloud"], "logger.mode='cloud' is not allowed"),
    (["method.layernorms=some"], "method.layernorms='some' is not allowed"),
    (["method=top_k", "method.layernorms=freeze"], "only for method=adapters or lora, not top_k"),
    (["method.head=pooler"], "method.head='pooler' is not allowed: 'classifier' for model.family=mpnet"),
    (["model=minilm_l6", "method=top_k", "method.head=classifier"], "'pooler' for method=top_k"),
    (["method.head=dense"], "method.head='dense' is not allowed"),
    (["model=minilm_l6", "adapter.layers=[6]"], "adapter.layers=[6] is not allowed: the model has L=6"),
    (["adapter.layers=[]"], "adapter.layers=[] is not allowed"),
    (["adapter.layers=[1,1]"], "adapter.layers=[1, 1] is not allowed: None (every layer) or distinct"),
    (["adapter.layers=[3,4]", "ablate.first=2", "ablate.last=3"], "layers [2] have no adapters"),
    (["adapter.layers=[3,4]", "ablate.kind=keep", "ablate.first=4", "ablate.last=5"], "layers [5] have no"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "field"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        run_config(overrides)
    assert field in str(info.value)


def test_methods_and_presets():
    cfg = run_config(["method=top_k", "method.k=12"])
    assert (cfg.method.name, cfg.method.k) == ("top_k", 12)
    assert run_config(["method=full"]).method.k is None
    assert run_config([]).method.name == "adapters"
    assert "quick" in PRESETS
    quick = run_config(["preset=quick"])
    assert quick.model.name == "minilm_l6" and quick.train.max_steps < run_config([]).train.max_steps
    assert (
        run_config(["preset=quick", "model=mpnet_base"]).model.name == "mpnet_base"
    )  # the command line wins


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_every_study_composes_with_every_preset(study, preset):
    overrides = [f"study={study}"] + ([f"preset={preset}"] if preset else [])
    assert isinstance(run_config(overrides), RunConfig)


def test_variant_names_what_differs_from_the_plain_adapter():
    assert variant(AdapterConfig()) == "plain"
    assert variant(AdapterConfig(size=8, init_std=1.0)) == "plain"  # size and std have their own studies
    assert variant(AdapterConfig(positions=["output"])) == "positions=output"
    both = AdapterConfig(placement="parallel", combine="multiply", activation="tanh")
    assert variant(both) == "activation=tanh,placement=parallel,combine=multiply"


def test_unknown_method_lists_available_options():
    with pytest.raises(HydraException) as info:
        compose_config(["method=bitfit"])
    message = str(info.value)
    assert "bitfit" in message and "top_k" in message and "layernorm" in message


def test_in_range_ablation_is_accepted():
    cfg = run_config(["ablate.first=0", "ablate.last=11", "ablate.positions=attention"])
    assert (cfg.ablate.first, cfg.ablate.last, cfg.ablate.positions) == (0, 11, "attention")
    cfg = run_config(["model=minilm_l6", "ablate.first=5", "ablate.last=5"])
    assert (cfg.model.num_layers, cfg.ablate.first) == (6, 5)


def test_unknown_model_lists_available_options():
    with pytest.raises(HydraException) as info:
        compose_config(["model=nope"])
    message = str(info.value)
    assert "nope" in message
    assert "mpnet_base" in message and "minilm_l6" in message


# --- the CLI: rejected runs fail in config validation, before any model is loaded or file written ---

# name -> arguments; {out} is the run or sweep folder. All start at once (they are ~7 s of imports each).
CLI_CASES = {
    "run": ["ablate.first=99", "ablate.last=99", "hydra.run.dir={out}"],
    "sweep_dots": [
        "-m",
        "model=minilm_l6",
        "ablate.first=0..11",
        "ablate.last=0..11",
        "hydra.sweep.dir={out}",
    ],
    # the study sweeps ablate.first/last=0..L-1; the command line's ablate.last=11 wins and is out of range
    "sweep_study": [
        "-m",
        "study=layer_ablation",
        "model=minilm_l6",
        "ablate.last=11",
        "hydra.sweep.dir={out}",
    ],
    # first=6 only ever appears with first > last, so the triangle filter drops every job asking for it
    "sweep_first_beyond": [
        "-m",
        "model=minilm_l6",
        "ablate.first=0..6",
        "ablate.last=0..5",
        "hydra.sweep.dir={out}",
    ],
    "sweep_method_ablate": [
        "-m",
        "model=minilm_l6",
        "method=top_k,layernorm",
        "ablate.first=0..1",
        "ablate.last=0..1",
        "hydra.sweep.dir={out}",
    ],
    "sweep_bad_k": ["-m", "model=minilm_l6", "method=top_k", "method.k=1..7", "hydra.sweep.dir={out}"],
    # launcher options, a store that cannot be created, a negative seed: named before anything runs
    "launcher_n_jobs": [
        "-m",
        "model=minilm_l6",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=0",
        "hydra.sweep.dir={out}",
    ],
    "launcher_timeout": [
        "-m",
        "model=minilm_l6",
        "seed=0,1",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=0",
        "hydra.sweep.dir={out}",
    ],
    "store_under_a_file": ["paths.store=/etc/hostname/store", "hydra.run.dir={out}"],
    "seed_negative_sweep": ["-m", "model=minilm_l6", "seed=-1..1", "hydra.sweep.dir={out}"],
    "seed_negative_run": ["seed=-3", "hydra.run.dir={out}"],
    "unknown_task": ["task=imdb", "hydra.run.dir={out}"],
    # nothing left to run: every job in the lower triangle, or a grid with no point
    "sweep_all_dropped": ["-m", "ablate.first=5", "ablate.last=2", "hydra.sweep.dir={out}"],
    "sweep_empty_grid": ["-m", "model=minilm_l6", "seed=range(3,3)", "hydra.sweep.dir={out}"],
    # damaged imported folders ({bad}: made by the fixture): named before any job, not from inside one
    "peft_truncated": [
        "-m",
        "model=bert_base_uncased",
        "method=lora",
        "method.load={bad}/peft",
        "ablate.first=0..1",
        "ablate.last=0..1",
        "hydra.sweep.dir={out}",
    ],
    "adapterhub_truncated": [
        "-m",
        "model=bert_base_uncased",
        "task=tweets",
        "adapter.load={bad}/pfeiffer",
        "ablate.first=0..1",
        "ablate.last=0..1",
        "hydra.sweep.dir={out}",
    ],
    # a SLURM launcher where sbatch/srun are not on PATH (the fixture hides them, even where slurm-wlm is installed)
    "launcher_no_slurm": [
        "-m",
        "model=minilm_l6",
        "seed=0,1",
        "hydra/launcher=slurm",
        "hydra.sweep.dir={out}",
    ],
    "launcher_no_slurm_submitit": [
        "-m",
        "model=minilm_l6",
        "seed=0,1",
        "hydra/launcher=submitit_slurm",
        "hydra.sweep.dir={out}",
    ],
    # adapters in chosen layers only: a range written backwards, a cell outside them, a sweep left with none
    "layers_backwards": ["model=minilm_l6", "adapter.layers=5..3", "hydra.run.dir={out}"],
    "run_unadapted_cell": [
        "model=minilm_l6",
        "adapter.layers=3..5",
        "ablate.first=1",
        "ablate.last=4",
        "hydra.run.dir={out}",
    ],
    "sweep_all_unadapted": [
        "-m",
        "model=minilm_l6",
        "adapter.layers=[5]",
        "ablate.first=0..4",
        "ablate.last=0..4",
        "hydra.sweep.dir={out}",
    ],
    # decoders: a head option they do not have, an encoder's LoRA target name, a layer past the 30th
    "decoder_pooler": ["model=smollm2_135m", "method.head=pooler", "hydra.run.dir={out}"],
    "decoder_lora_target": [
        "-m",
        "model=smollm2_135m",
        "method=lora",
        "method.target=[query,value]",
        "ablate.first=0..1",
        "ablate.last=0..1",
        "hydra.sweep.dir={out}",
    ],
    "decoder_last_30": [
        "-m",
        "model=smollm2_135m",
        "ablate.first=0",
        "ablate.last=0..30",
        "hydra.sweep.dir={out}",
    ],
    "block_zero": [
        "-m",
        "ablate.first=0..11",
        "ablate.last=0..11",
        "ablate.block=0",
        "hydra.sweep.dir={out}",
    ],
    "run_off_the_block_grid": [
        "ablate.block=3",
        "ablate.first=0",
        "ablate.last=3",
        "hydra.run.dir={out}",
    ],
    "dry_run": [
        "-m",
        "study=tradeoff",
        "preset=quick",
        "hydra.sweeper.dry_run=true",
        "hydra.sweep.dir={out}",
    ],
}


def peft_folder(folder: Path) -> Path:
    """A PEFT LoRA folder saved by PEFT on a tiny 12-layer BERT: one that fits model=bert_base_uncased's config."""
    from test_peft_import import save_peft
    from transformers import BertConfig as Bert
    from transformers import BertForSequenceClassification

    bert = BertForSequenceClassification(Bert(vocab_size=100, hidden_size=32, num_hidden_layers=12,
                                              num_attention_heads=4, intermediate_size=64))  # fmt: skip
    save_peft(bert, "bert", folder)
    return folder


def damaged_folders(root: Path) -> Path:
    """A PEFT LoRA folder and an AdapterHub one, each with its safetensors file cut short (an interrupted copy)."""
    peft_folder(root / "peft")
    shutil.copytree(REPO / "tests" / "fixtures" / "adapterhub" / "pfeiffer", root / "pfeiffer")
    for path in (root / "peft" / "adapter_model.safetensors", root / "pfeiffer" / "adapter.safetensors"):
        path.write_bytes(path.read_bytes()[:-100])
    return root


# run with PATH = a folder that does not exist: no sbatch or srun anywhere (the CLI runs as sys.executable by its
# full path and needs nothing else from PATH before it stops)
NO_SLURM = {"launcher_no_slurm", "launcher_no_slurm_submitit"}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run every CLI case (in one process, tests/cli_cases.py: the imports paid once); returns name ->
    (folder, returncode, output)."""
    bad = damaged_folders(tmp_path_factory.mktemp("bad"))
    cases, folders = {}, {}
    for name, args in CLI_CASES.items():
        folder = folders[name] = tmp_path_factory.mktemp(name)
        # An empty artifact cache: loading a model would fail (and leave a cache dir).
        env = {"ABLATION_CACHE": str(folder / "cache")}
        if name in NO_SLURM:
            env["PATH"] = str(folder / "no-commands")  # never created: the folder stays empty
        cases[name] = {"argv": [a.format(out=folder / "out", bad=bad) for a in args], "env": env}
    work = tmp_path_factory.mktemp("cases")
    (work / "cases.json").write_text(json.dumps(cases))
    # No package index and no hub: a download would fail rather than happen.
    env = {**os.environ, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "cli_cases.py"), str(work / "cases.json"), str(work / "out.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((work / "out.json").read_text())
    return {name: (folders[name], code, output) for name, (code, output) in results.items()}


def test_cli_rejected_run_writes_nothing(cli):
    folder, returncode, output = cli["run"]
    assert returncode != 0
    assert "L=12" in output, output[-2000:]
    assert "ablate.first=99" in output
    assert list(folder.iterdir()) == []  # no run folder, no cache: nothing written, nothing loaded


@pytest.mark.parametrize("case", ["sweep_dots", "sweep_study", "sweep_first_beyond"])
def test_cli_sweep_beyond_the_model_fails_at_once(cli, case):
    """`0..11` on a 6-layer model: the sweeper rejects it before any job, suggesting 0..5."""
    if case == "sweep_study" and "layer_ablation" not in STUDIES:
        pytest.skip("no conf/study/layer_ablation.yaml")
    folder, returncode, output = cli[case]
    assert returncode != 0
    assert "6 layers" in output, output[-2000:]
    assert "0..5" in output
    assert "Traceback" not in output
    assert list(folder.iterdir()) == []  # no sweep folder, no cache


BAD_CLI = [
    ("sweep_method_ablate", ["ablate.first", "has none"]),
    ("sweep_bad_k", ["method.k=7", "L=6"]),
    ("launcher_n_jobs", ["hydra.launcher.n_jobs=0 is not allowed", "non-zero"]),
    ("launcher_timeout", ["hydra.launcher.timeout_min=0 is not allowed", "positive"]),
    ("store_under_a_file", ["paths.store='/etc/hostname/store' is not allowed", "is a file"]),
    ("seed_negative_sweep", ["seed=-1 is not allowed", "integer >= 0"]),
    ("seed_negative_run", ["seed=-3 is not allowed", "integer >= 0"]),
    ("unknown_task", ["task/imdb", "rotten_tomatoes"]),
    (
        "sweep_all_dropped",
        ["the sweep has no job to run", "each of its 1 jobs has ablate.first > ablate.last"],
    ),
    ("sweep_empty_grid", ["the sweep has no job to run", "its grid is empty"]),
    (
        "launcher_no_slurm",
        [
            "no SLURM found here: sbatch/srun not on PATH",
            "hydra/launcher=slurm submits to a SLURM cluster",
            "hydra/launcher=basic|joblib|submitit_local",
        ],
    ),
    (
        "launcher_no_slurm_submitit",
        [
            "no SLURM found here: sbatch/srun not on PATH",
            "hydra/launcher=submitit_slurm submits to a SLURM cluster",
        ],
    ),
    (
        "peft_truncated",
        ["peft/adapter_model.safetensors: truncated or damaged", "copy or save the folder again"],
    ),
    ("adapterhub_truncated", ["pfeiffer/adapter.safetensors: truncated or damaged", "its header describes"]),
    ("layers_backwards", ["adapter.layers=5..3: empty range 5..3"]),
    ("decoder_pooler", ["method.head='pooler' is not allowed", "a decoder's head is `score`"]),
    (
        "decoder_lora_target",
        ["method.target=['query', 'value'] is not allowed", "model.family=llama", "'q_proj'"],
    ),
    ("decoder_last_30", ["30 layers", "0..29"]),
    ("block_zero", ["ablate.block=0 is not allowed", "an integer >= 1"]),
    (
        "run_off_the_block_grid",
        ["ablate.last=3 is not allowed", "ablate.block=3 on L=12 layers (2, 5, 8, 11)"],
    ),
    ("run_unadapted_cell", ["ablate.first..last='1..4' is not allowed", "layers [1, 2] have no adapters"]),
    (
        "sweep_all_unadapted",
        [
            "the sweep has no job to run: of its 25 jobs, 10 have ablate.first > ablate.last and 15 ablate layers without"
        ],
    ),
]


@pytest.mark.parametrize(("case", "words"), BAD_CLI, ids=[c for c, _ in BAD_CLI])
def test_cli_bad_input_is_named_in_one_line_and_nothing_is_written(cli, case, words):
    folder, returncode, output = cli[case]
    assert returncode != 0
    for word in words:
        assert word in output, output[-2000:]
    assert "Traceback" not in output
    assert list(folder.iterdir()) == []


def test_cli_dry_run_lists_a_study_without_running_it(cli):
    folder, returncode, output = cli["dry_run"]
    assert returncode == 0, output[-2000:]
    # quick: 3 sizes, 3 k, LayerNorm-only, full, 2 LoRA ranks
    assert "Dry run: 10 jobs listed, none launched" in output
    assert "method=top_k" in output and "method.k=6" in output
    assert list(folder.iterdir()) == []


# --- validation changes nothing: every composed config is accepted again, unchanged ----------------------------

GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}


def _composed_runs(tmp_path: Path) -> dict[str, RunConfig]:
    """Every config a user's command composes: each job of every study x preset (one cell and one seed per
    setting), each method, and each kind of imported folder; name -> the completed config (derive)."""
    from omegaconf import open_dict
    from test_sweeper import study_jobs

    jobs = {f"method={m}": [f"method={m}", *(["method.k=2"] if m == "top_k" else [])] for m in METHOD_FILES}
    planned = [study_jobs(s, *([f"preset={p}"] if p else [])) for s in STUDIES for p in [None, *PRESETS]]
    for job in (job for study in planned for job in study):
        job = {k: v for k, v in job.items() if k != "seed"} | {"seed": "1"}
        if "ablate.first" in job:  # one cell per setting: the top layer alone
            job |= {"ablate.first": job["ablate.last"]}
        jobs[" ".join(f"{k}={v}" for k, v in sorted(job.items()))] = [f"{k}={v}" for k, v in job.items()]
    hub = REPO / "tests" / "fixtures" / "adapterhub"
    for name in ("houlsby", "pfeiffer"):
        jobs[f"adapterhub {name}"] = ["model=bert_base_uncased", "task=tweets", f"adapter.load={hub / name}"]
    jobs["peft lora"] = [
        "model=bert_base_uncased",
        "method=lora",
        f"method.load={peft_folder(tmp_path / 'peft')}",
    ]
    composed: dict[tuple[str, ...], object] = {}  # composing is the slow part: once per group choice
    runs = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, overrides in jobs.items():
            # a study file holds its sweep (the jobs above) and may choose the model (study=recipe: a BERT one)
            groups = tuple(sorted(o for o in overrides if o.split("=")[0] in GROUPS))
            if groups not in composed:
                composed[groups] = compose("config", overrides=list(groups))
            cfg = composed[groups].copy()
            with open_dict(cfg):
                for override in overrides:
                    key, value = override.split("=", 1)
                    if key not in GROUPS:
                        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=False)
            runs[name] = derive(OmegaConf.to_object(cfg))
    return runs


METHOD_FILES = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def test_every_composed_config_is_accepted_again_unchanged_and_its_columns_name_the_same_run(tmp_path):
    from ablation.keys import cell_name, config_columns

    runs = _composed_runs(tmp_path)
    assert len(runs) > 100 and {"peft lora", "adapterhub pfeiffer"} <= set(runs)
    for name, cfg in runs.items():
        assert dataclasses.replace(cfg) == cfg, name  # validation again: nothing changes
        assert derive(cfg) == cfg, name  # complete already: nothing more to derive
        again = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.structured(cfg))
        )
        assert again == cfg, name  # through Hydra's schema, as the sweeper's check builds it
        rebuilt = derive(from_columns(config_columns(cfg), cfg))
        assert config_columns(rebuilt) == config_columns(cfg), name
        assert cell_name(rebuilt.ablate) == cell_name(cfg.ablate), name


def from_columns(columns: dict, like: RunConfig) -> RunConfig:
    """The config whose fields with a column take the row's values (lists from their '+'-joined text) and whose
    other fields are `like`'s: what a row alone says of its run."""
    from ablation.keys import _leaves

    sections: dict[tuple[str, ...], dict] = {}
    for path, _, f, hint in _leaves(RunConfig):
        column = f.metadata.get("column")
        if column is None or columns.get(column) is None:
            continue
        value = columns[column]
        lists = [h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) is list]
        if lists:
            (item,) = typing.get_args(lists[0])
            value = [item(v) for v in value.split("+")]
        sections.setdefault(path, {})[f.name] = value
    top = sections.pop((), {})
    return dataclasses.replace(
        like, **top, **{p[0]: dataclasses.replace(getattr(like, p[0]), **v) for p, v in sections.items()}
    )
