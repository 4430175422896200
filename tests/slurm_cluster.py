"""A real one-node SLURM cluster for the `slurm` tests: Debian's slurm-wlm and munge, started and stopped here.

    python tests/slurm_cluster.py up DIR     # install where missing, configure under DIR, start, wait for the node
    python tests/slurm_cluster.py down DIR   # stop exactly the daemons `up DIR` started (by their pid files)

`up` prints the environment the clients need (`SLURM_CONF`, and `PATH` with DIR/bin first) as shell `export`
lines. Everything the cluster writes (state, spool, logs, pid files) stays under DIR. No slurmdbd (it needs a
MariaDB server): DIR/bin/sacct answers submitit's one question, the state of given jobs, from `squeue
--states=all`, which keeps finished jobs for `MinJobAge` (an hour here). The settings are those checked in
SLURM.md (no systemd, no cgroups): loopback controller and node, linuxproc tracking, no accounting; and a
requeued job may start again 11 s after its requeue (`cred_expire=10`; SLURM's default makes it wait 121 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
NODE = "node0"
PARTITION = "debug"

SACCT = """#!/usr/bin/env python3
# A stand-in for sacct on a cluster without slurmdbd: job states from squeue --states=all (finished jobs stay
# there for MinJobAge). Answers the form submitit asks: sacct -o JobID,State,NodeList --parsable2 -j ID ...
import subprocess, sys
args, ids = sys.argv[1:], []
for i, a in enumerate(args):
    if a == "-j" and i + 1 < len(args):
        ids += args[i + 1].split(",")
cmd = ["squeue", "--states=all", "--noheader", "--array", "-o", "%i|%T|%N"]
if ids:
    cmd += ["-j", ",".join(ids)]
out = subprocess.run(cmd, capture_output=True, text=True)
print("JobID|State|NodeList")
if out.returncode == 0:
    sys.stdout.write(out.stdout)
sys.exit(0)
"""


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def install() -> None:
    """Install SLURM and munge from Debian's packages where missing (needs root and the apt mirror)."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            "SLURM is not installed and installing it needs root: apt-get install " + " ".join(PACKAGES)
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-q", env=env)
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES, env=env)


def _start_munge() -> None:
    """munged as its own user, once per machine (shared by every cluster started here)."""
    if subprocess.run(["bash", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        _run("mungekey", "--create")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    _run("runuser", "-u", "munge", "--", "/usr/sbin/munged")
    _wait(lambda: subprocess.run(["bash", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0,
          10, "munged did not answer")  # fmt: skip


def _hardware() -> str:
    """The node's hardware fields, as `slurmd -C` reports them (CPUs, sockets, cores, threads, memory)."""
    line = _run("slurmd", "-C").stdout.splitlines()[0]
    fields = [f for f in line.split() if not f.startswith(("NodeName=", "UpTime="))]
    return " ".join(fields)


def write_config(root: Path) -> Path:
    """slurm.conf for one node on the loopback address, every file under root; returns its path."""
    for sub in ("state", "spool", "log", "bin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=ablation-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
MinJobAge=3600
KillWait=5
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
NodeName={NODE} NodeAddr=127.0.0.1 {_hardware()}
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    sacct = root / "bin" / "sacct"
    sacct.write_text(SACCT)
    sacct.chmod(0o755)
    return conf


def env(root: Path) -> dict[str, str]:
    """The environment variables SLURM's clients (and submitit) need to reach this cluster."""
    return {"SLURM_CONF": str(root / "slurm.conf"), "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"}


def _wait(ready, seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(why)
        time.sleep(0.2)


def _node_idle(root: Path) -> bool:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                         env={**os.environ, **env(root)})  # fmt: skip
    return out.returncode == 0 and out.stdout.strip() == "idle"


def up(root: Path, timeout: float = 60) -> dict[str, str]:
    """Install where missing, configure under root, start munged, slurmctld and slurmd; wait for the node."""
    root = root.resolve()
    install()
    if (root / "slurmctld.pid").exists():
        raise RuntimeError(f"{root}: a cluster started there may still run; `down {root}` first")
    conf = write_config(root)
    _start_munge()
    clean = {**os.environ, "SLURM_CONF": str(conf)}
    _run("slurmctld", "-f", str(conf), env=clean)  # both daemonise, writing their pid files
    _run("slurmd", "-f", str(conf), "-N", NODE, env=clean)
    try:
        _wait(
            lambda: _node_idle(root),
            timeout,
            f"the node did not become idle in {timeout:.0f} s: see {root / 'log'}",
        )
    except RuntimeError:
        down(root)
        raise
    return env(root)


def down(root: Path, timeout: float = 30) -> None:
    """Stop the daemons started under root, by their pid files, and wait for them to go (munged stays)."""
    root = root.resolve()
    for name in ("slurmd", "slurmctld"):
        pidfile = root / f"{name}.pid"
        if not pidfile.exists():
            continue
        pid = int(pidfile.read_text().split()[0])
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            continue
        # slurmctld saves its state before it exits (about 5 s)
        _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout, f"{name} ({pid}) did not stop")
        pidfile.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: python tests/slurm_cluster.py up|down DIR")
    where = Path(sys.argv[2])
    if sys.argv[1] == "up":
        tic = time.monotonic()
        for name, value in up(where).items():
            print(f"export {name}={value}")
        print(
            f"# cluster up in {time.monotonic() - tic:.1f} s: {where.resolve() / 'slurm.conf'}",
            file=sys.stderr,
        )
    else:
        down(where)
