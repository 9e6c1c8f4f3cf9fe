"""The reference of every config key (docs/config.md, "Every key"), made from the schema itself: each
field's type, bounds and default, and the comment beside it in the source, so the reference cannot drift
from the code (a test compares the two). `python -m xr_nemo.config.reference [docs/config.md]` rewrites
that section."""

from __future__ import annotations

import ast
import io
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import Field, dataclass, fields, is_dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from xr_nemo.config.schema import DistillConfig, EvalConfig, GRPOConfig, SFTConfig

COMMANDS: dict[str, type] = {
    "sft": SFTConfig,
    "grpo": GRPOConfig,
    "eval": EvalConfig,
    "distill": DistillConfig,
}
HEADING = "## Every key"
INTRO = (
    "Generated from `xr_nemo/config/schema.py` (types, bounds, defaults and the comment beside each\n"
    "field) by `python -m xr_nemo.config.reference docs/config.md`; a test fails when this section and\n"
    "the schema differ. Defaults are the dataclasses'; recipes set their own."
)


@dataclass(frozen=True)
class Leaf:
    """One key of one command's config, as overrides write it."""

    command: str
    key: str  # trainer.seq_length; eval's and distill's own keys have no section: samples
    owner: type  # the dataclass whose field this is
    spec: Field
    default: Any

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]


def leaves(command: str) -> Iterator[Leaf]:
    """Every key of `command`'s config, in the schema's order."""

    def walk(config: Any, prefix: str) -> Iterator[Leaf]:
        for spec in fields(config):
            value = getattr(config, spec.name)
            if is_dataclass(value):
                yield from walk(value, f"{prefix}{spec.name}.")
            else:
                yield Leaf(command, f"{prefix}{spec.name}", type(config), spec, value)

    yield from walk(COMMANDS[command](), "")


@cache
def _source_comments(path: str) -> dict[tuple[str, str], str]:
    """(class, field) → the comment on the field's lines and the comment lines right above it."""
    source = Path(path).read_text(encoding="utf-8")
    lines = source.splitlines()
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    found = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            above, line = [], statement.lineno - 1
            while line in comments and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            end = statement.end_lineno or statement.lineno
            beside = [comments[n] for n in range(statement.lineno, end + 1) if n in comments]
            found[(node.name, statement.target.id)] = " ".join(above + beside)
    return found


def description(owner: type, name: str) -> str:
    """The field's comment, from the first class of `owner`'s bases that has one (a subclass that only
    changes a default keeps its base's words)."""
    for cls in owner.__mro__:
        if is_dataclass(cls):
            text = _source_comments(sys.modules[cls.__module__].__file__).get((cls.__name__, name))
            if text:
                return text
    return ""


def _bounds(metadata: typing.Mapping[str, Any]) -> str:
    if "low" not in metadata:
        return ""
    low, high = metadata["low"], metadata.get("high")
    if high is None:
        return f" {'>' if metadata.get('low_open') else '≥'} {low:g}"
    opening = "(" if metadata.get("low_open") else "["
    closing = ")" if metadata.get("high_open") else "]"
    return f" in {opening}{low:g}, {high:g}{closing}"


def values(leaf: Leaf) -> str:
    """What the key takes: the choices of an Enum, or the type with its bounds; `or null` if optional."""
    hint = typing.get_type_hints(leaf.owner)[leaf.spec.name]
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kind = next(k for k in kinds if k is not type(None))
    if isinstance(kind, type) and issubclass(kind, Enum):
        text = ", ".join(member.name for member in kind)
    else:
        text = (str(kind) if typing.get_origin(kind) else kind.__name__) + _bounds(leaf.spec.metadata)
    return text + (" or null" if type(None) in kinds else "")


def _default(value: Any) -> str:
    if value is None:
        return "null"
    if value == "???":
        return "required"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, list):
        return f"`[{', '.join(map(str, value))}]`"
    if isinstance(value, dict):
        return f"`{value}`".replace("'", "")
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(group: list[Leaf]) -> str:
    """One key in the commands that share its field; defaults by command where they differ."""
    first = group[0]
    defaults = {leaf.command: _default(leaf.default) for leaf in group}
    if len(set(defaults.values())) == 1:
        default = defaults[first.command]
    else:
        default = ", ".join(f"{text} ({command})" for command, text in defaults.items())
    commands = ", ".join(leaf.command for leaf in group)
    what = description(first.owner, first.spec.name)
    if not what:
        raise ValueError(
            f"{first.owner.__name__}.{first.spec.name} ({first.key}) has no comment to document it"
        )
    return f"| `{first.key}` | {commands} | {_cell(values(first))} | {_cell(default)} | {_cell(what)} |"


Rows = dict[tuple[str, str, str], list[Leaf]]


def _tables() -> dict[tuple[str, str], Rows]:
    """(section, or "" and the command for eval's and distill's own keys) → rows; a row is a key with one
    meaning (the commands whose fields share its type and comment)."""
    tables: dict[tuple[str, str], Rows] = {}
    for command in COMMANDS:
        for leaf in leaves(command):
            table = (leaf.section, "" if leaf.section else command)
            identity = (leaf.key, values(leaf), description(leaf.owner, leaf.spec.name))
            tables.setdefault(table, {}).setdefault(identity, []).append(leaf)
    return tables


def reference() -> str:
    """The "Every key" section of docs/config.md."""
    out = [HEADING, INTRO]
    for (section, command), rows in _tables().items():
        commands = list(dict.fromkeys(leaf.command for group in rows.values() for leaf in group))
        title = f"`{section}`" if section else f"{command}'s own keys"
        out += [
            "",
            f"### {title} ({', '.join(commands)})",
            "| key | in | values | default | what |",
            "|---|---|---|---|---|",
        ]
        out += [_row(group) for group in rows.values()]
    return "\n".join(out) + "\n"


def with_reference(markdown: str) -> str:
    """`markdown` with its "Every key" section (to the next `## ` heading or the end) replaced."""
    start = markdown.index(f"\n{HEADING}\n") + 1
    end = markdown.find("\n## ", start + len(HEADING))
    return markdown[:start] + reference() + (markdown[end:] if end != -1 else "")


def main(argv: list[str]) -> None:
    path = Path(argv[0] if argv else "docs/config.md")
    path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
