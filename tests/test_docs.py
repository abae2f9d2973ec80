"""The README documents what the registries hold, and the CLI's commands."""

from __future__ import annotations

import re

from kdlab.cli.main import build_parser
from kdlab.data import dataset_names
from kdlab.methods import METHODS
from kdlab.models import model_names

from conftest import REPO

README = (REPO / "README.md").read_text()


def _documented(name: str) -> bool:
    return re.search(rf"`{re.escape(name)}`", README) is not None


def test_every_registered_model_method_and_dataset_is_in_the_readme():
    missing = [n for n in [*model_names(), *METHODS.names(), *dataset_names()] if not _documented(n)]
    assert not missing, f"document these in README.md: {missing}"


def test_readme_names_every_cli_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in sub.choices:
        assert f"kdlab {command}" in README or f"make {command}" in README, command


def test_readme_has_the_two_setup_commands_and_make_has_them():
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
