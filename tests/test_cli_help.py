"""Every subcommand and option of ``recsieve`` is explained in ``--help``, and the README's
command table names every subcommand."""

import argparse
import re
from pathlib import Path

import pytest

from recsieve.cli import build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    return dict(build_parser()._subparsers._group_actions[0].choices)


def test_every_subcommand_and_option_has_a_help_text():
    parser = build_parser()
    listed = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
    subs = _subcommands()
    assert len(subs) >= 15
    for name, sub in subs.items():
        assert listed.get(name), f"{name}: no help line in `recsieve --help`"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = action.option_strings[0] if action.option_strings else action.dest
            assert action.help and action.help != argparse.SUPPRESS, f"recsieve {name} {what}: no help text"


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_help_prints_every_option(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for action in _subcommands()[name]._actions:
        for flag in action.option_strings:
            assert flag in text, f"recsieve {name} --help does not show {flag}"


def test_the_readme_command_table_names_every_subcommand():
    table = README.read_text(encoding="utf-8").split("## Command line", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`recsieve ([a-z][a-z-]*)", table))
    assert set(_subcommands()) <= named, sorted(set(_subcommands()) - named)
