"""Every distribution the ingestor's code imports directly is declared in setup.cfg."""

from __future__ import annotations

import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.support.imports import imported_modules

ROOT = Path(__file__).resolve().parents[2]


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """The distributions install_requires names, without versions or extras."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    return {canonical(re.match(r"[A-Za-z0-9._-]+", line.strip())[0]) for line in lines if line.strip()}


def imported_top_level_modules() -> set[str]:
    """The top-level modules ingestor/ imports that are neither the stdlib nor its own."""
    modules = {
        module.split(".")[0]
        for path in (ROOT / "ingestor").rglob("*.py")
        for module in imported_modules(path)
    }
    return modules - set(sys.stdlib_module_names) - {"ingestor"}


def test_every_directly_imported_distribution_is_declared() -> None:
    """An import served only by a dependency's dependency breaks when that one changes."""
    requirements = declared()
    distributions = packages_distributions()
    undeclared = {}
    for module in imported_top_level_modules():
        providers = {canonical(name) for name in distributions.get(module, [module])}
        if not requirements & providers:
            undeclared[module] = sorted(providers)
    assert not undeclared, f"imported but not in install_requires: {undeclared}"
