"""The configuration reference, generated from the config declarations: every field of every group, its
default, what is allowed (read from the checks in `ablation.config`), the keys it enters and the column it
fills, and what it is (the comments beside it). `python -m ablation.reference` writes
docs/configuration-reference.md; a test fails when that file is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from ablation import config

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "configuration-reference.md"
CHECKS = ("_one_of", "_positive", "_check")


def _described(cls: type) -> dict[str, str]:
    """Each field's comments: the lines above it and the one beside it, joined."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in textwrap.dedent(inspect.getsource(cls)).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("#").strip())
            continue
        found = re.match(r"    (\w+): [^=]+ = ", line)
        if found:
            beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            out[found.group(1)] = " ".join([*pending, beside]).strip()
        pending = []
    return out


def _text(node: ast.expr) -> str:
    """A check's message as written: a string, or an f-string with its {expressions} left in."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(_part(v) for v in node.values)
    return ast.unparse(node)


def _part(node: ast.expr) -> str:
    """One part of an f-string: its text, a constant of ablation.config by its value, else {expression}."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    value = node.value
    if isinstance(value, ast.Name) and isinstance(getattr(config, value.id, None), tuple | dict):
        return ", ".join(map(str, getattr(config, value.id)))
    return "{" + ast.unparse(value).replace("self.", "") + "}"


def allowed() -> dict[str, list[str]]:
    """What each field allows, from every `_one_of`, `_positive` and `_check` call in ablation.config."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(inspect.getsource(config))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CHECKS):
            continue
        name_at = 1 if node.func.id == "_check" else 0
        if len(node.args) <= name_at or not isinstance(node.args[name_at], ast.Constant):
            continue  # a name made at run time
        name = node.args[name_at].value
        if node.func.id == "_one_of":
            values = eval(ast.unparse(node.args[2]), vars(config))  # a constant of ablation.config
            text = "one of " + ", ".join(f"`{v}`" for v in values)
        elif node.func.id == "_positive":
            text = _text(node.args[2]) if len(node.args) > 2 else "a positive integer"
        else:
            text = _text(node.args[3])
        if text not in out.setdefault(name, []):
            out[name].append(text)
    return out


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:
        return f"`{_value(f.default_factory())}`"
    if f.default is dataclasses.MISSING or f.default == "???":
        return "from the group's file"
    return f"`{_value(f.default)}`"


def _options(group: str) -> str:
    """The group's files in conf/, the default first."""
    names = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    chosen = _defaults().get(group)
    names = sorted(names, key=lambda n: n != chosen)
    return ", ".join(f"`{n}`" + (" (default)" if n == chosen else "") for n in names)


def _defaults() -> dict[str, str | None]:
    listed = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["defaults"]
    return {k: v for item in listed if isinstance(item, dict) for k, v in item.items()}


def _cell(text: str) -> str:
    """A table cell's text as Markdown shows it: pipes escaped, angle brackets as text, one line."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _table(prefix: str, cls: type, checks: dict[str, list[str]]) -> list[str]:
    described = _described(cls)
    lines = ["| field | default | allowed | keys | column | what it is |", "|---|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if "applies" in f.metadata:
            continue  # a group: its own section
        name = f"{prefix}{f.name}"
        keys = ", ".join(f.metadata.get("keys", ())) + (" (when set)" if f.metadata.get("when_set") else "")
        column = f.metadata.get("column") or ""
        column = f"`{column}`" + (" (names a variant)" if f.metadata.get("variant") else "") if column else ""
        cells = [
            f"`{name}`",
            _default(f),
            "; ".join(checks.get(name, [])),
            keys,
            column,
            described.get(f.name, ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def markdown() -> str:
    """The whole reference page."""
    checks = allowed()
    parts = [
        "# Configuration reference",
        "",
        "Generated from the config declarations by `python -m ablation.reference` (do not edit: a test compares",
        "this page with what the code declares). Each field: its default, what is allowed (the checks a config",
        "passes before any job runs), the keys it enters (train: the stored training; data: the split; eval and",
        "cell: the cached predictions; process: what a process keeps loaded between jobs), the result column it",
        "fills, and what it is. Set any field on the command line as `group.field=value`; the overview, with",
        "examples, is [configuration.md](configuration.md).",
        "",
        "## Run",
        "",
        *_table("", config.RunConfig, checks),
    ]
    for f in dataclasses.fields(config.RunConfig):
        if "applies" not in f.metadata:
            continue
        cls = f.type if isinstance(f.type, type) else getattr(config, f.type)
        parts += ["", f"## {f.name}", "", (inspect.getdoc(cls) or "").replace("\n", " "), ""]
        if (ROOT / "conf" / f.name).is_dir():
            parts += [f"Files: {_options(f.name)} (`{f.name}=<file>`).", ""]
        parts += _table(f"{f.name}.", cls, checks)
    for group in ("study", "preset"):
        parts += [
            "",
            f"## {group}",
            "",
            f"Files, no fields: {_options(group)} (`{group}=<file>`, sweeps only).",
        ]
    return "\n".join(parts) + "\n"


def main() -> int:
    """Write the reference page (or, with --check, say whether it is current)."""
    text = markdown()
    if "--check" in sys.argv[1:]:
        current = OUT.exists() and OUT.read_text() == text
        print(f"{OUT}: {'current' if current else 'stale: run python -m ablation.reference'}")
        return 0 if current else 1
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
