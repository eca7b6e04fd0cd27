"""The README's command reference against the argparse definitions (kindling.cli.COMMANDS): every
command and subcommand has a section, every flag is in a table of its section (or of its parent
command's, for flags all its subcommands share), every positional argument is named, and nothing
is documented that does not exist. A new command or flag needs its README line, nothing else."""
import argparse
import re
from pathlib import Path

import pytest

from kindling.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Command reference"


def sections() -> dict[str, str]:
    """'kindling convert caffe' -> its section's text, from the reference's ### headings."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    body = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### (kindling[\w -]*)$", body, flags=re.M)
    return {name.strip(): part for name, part in zip(parts[1::2], parts[2::2])}


def documented_flags(section: str) -> set[str]:
    """The flags in the first column of the section's tables."""
    flags = set()
    for row in re.findall(r"^\|([^|\n]*)\|", section, flags=re.M):
        flags.update(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", row))
    return flags


def parsers() -> dict[str, argparse.ArgumentParser]:
    """'kindling convert caffe' -> its parser, every level of subcommands."""
    found = {}

    def walk(parser, name):
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    walk(p, f"{name} {sub}")

    walk(build_parser(), "kindling")
    return found


def flags(parser) -> set[str]:
    return {o for a in parser._actions if not isinstance(a, argparse._HelpAction) for o in a.option_strings}


def ancestors(name: str) -> list[str]:
    words = name.split()
    return [" ".join(words[:i]) for i in range(2, len(words))]


PARSERS = parsers()


def test_every_command_has_a_section_and_every_section_a_command():
    documented = sections()
    assert sorted(set(PARSERS) - set(documented)) == [], "commands missing from the README's reference"
    assert sorted(set(documented) - set(PARSERS)) == [], "README documents commands that do not exist"


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_flag_is_documented_and_nothing_else(name):
    documented = sections()
    if name not in documented:
        pytest.skip("no section (the test above fails)")
    own = documented_flags(documented[name])
    inherited = set().union(*(documented_flags(documented.get(a, "")) for a in ancestors(name)))
    actual = flags(PARSERS[name])
    assert sorted(actual - own - inherited) == [], f"flags of `{name}` missing from its README section"
    assert sorted(own - actual) == [] or _shared_by_subcommands(name, own - actual), \
        f"README's `{name}` section documents flags it does not have: {sorted(own - actual)}"
    positionals = [a for a in PARSERS[name]._actions if not a.option_strings
                   and not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction))]
    for a in positionals:
        assert (a.metavar or a.dest.upper()) in documented[name], f"`{name}`: positional {a.dest} not named"


def _shared_by_subcommands(name, extra) -> bool:
    """A parent command's section may document flags that every one of its subcommands has."""
    children = [p for n, p in PARSERS.items() if n.startswith(name + " ") and len(n.split()) == len(name.split()) + 1]
    return bool(children) and all(extra <= flags(child) for child in children)
