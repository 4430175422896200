"""A SLURM launcher on a machine without SLURM: one line naming what is missing, before any job is planned."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from ablation.config import ConfigError  # noqa: E402
from ablation.launcher import SLURM_LAUNCHERS, check_slurm_available  # noqa: E402


def _commands(folder: Path, *names: str) -> str:
    """A PATH of one folder holding stand-in executables with these names."""
    folder.mkdir()
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return str(folder)


@pytest.mark.parametrize(("target", "choice"), SLURM_LAUNCHERS.items(), ids=SLURM_LAUNCHERS.values())
def test_a_slurm_launcher_without_sbatch_and_srun_is_one_line_naming_them(
    tmp_path, monkeypatch, target, choice
):
    monkeypatch.setenv("PATH", _commands(tmp_path / "bin"))
    with pytest.raises(ConfigError) as info:
        check_slurm_available(OmegaConf.create({"_target_": target}))
    message = str(info.value)
    assert message.startswith("no SLURM found here: sbatch/srun not on PATH") and "\n" not in message
    assert f"hydra/launcher={choice} submits to a SLURM cluster" in message
    assert "hydra/launcher=basic|joblib|submitit_local" in message


def test_only_the_missing_command_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _commands(tmp_path / "bin", "sbatch"))
    with pytest.raises(ConfigError, match=r"^no SLURM found here: srun not on PATH \(hydra/launcher=slurm "):
        check_slurm_available(OmegaConf.create({"_target_": "hydra_plugins.ablation_sweeper.SlurmLauncher"}))


def test_with_sbatch_and_srun_or_another_launcher_nothing_is_said(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _commands(tmp_path / "bin", "sbatch", "srun"))
    for target in SLURM_LAUNCHERS:
        check_slurm_available(OmegaConf.create({"_target_": target}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    for target in (local, "hydra._internal.core_plugins.basic_launcher.BasicLauncher"):
        check_slurm_available(OmegaConf.create({"_target_": target}))
