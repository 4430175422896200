"""Run many `python -m ablation.run ARGS` command lines in one process, one after another, and write each one's
exit status and output (stdout and stderr together) to a JSON file.

    python tests/cli_cases.py CASES.json RESULTS.json

CASES.json: {name: {"argv": [...], "env": {VAR: value}}}. Each case runs the same entry point as the command
(the module run as __main__, as `python -m` runs it; Hydra leaves the process as it found it), with its environment variables set for its duration;
it pays the imports once instead of once per case. Meant for command lines that stop before any job runs
(rejected configs): nothing a job would leave in the process is cleaned up between cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
from pathlib import Path


def run_case(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """One command line in this process: (exit status, what it printed)."""
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update(env)
    sys.argv = ["-m", *argv]  # runpy puts the module's file first, as `python -m` does
    out = io.StringIO()
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                # as `python -m ablation.run`: run as __main__, so Hydra finds conf/ beside the file
                runpy.run_module("ablation.run", run_name="__main__", alter_sys=True)
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    if isinstance(code, str):  # sys.exit("message"): Python prints it and exits 1
        out.write(code + "\n")
        code = 1
    return int(code or 0), out.getvalue()


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = {name: run_case(case["argv"], case["env"]) for name, case in cases.items()}
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
