"""Dependencies between the ingestor's packages run one way, as read from the imports."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tests.support.imports import imported_modules

PACKAGE = Path(__file__).resolve().parents[2] / "ingestor"
PACKAGES = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}

# Plumbing: knows the broker, HTTP or metrics, and no domain (the domains call it).
PLUMBING = {"messaging", "observability"}
DOMAINS = {"pulses", "auth", "api"}


def package_imports() -> dict[str, set[str]]:
    """{package: the other ingestor packages its modules import}."""
    edges: dict[str, set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in (PACKAGE / package).rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] == "ingestor" and len(parts) > 1 and parts[1] in PACKAGES - {package}:
                    edges[package].add(parts[1])
    return edges


def test_no_package_imports_one_that_imports_it_back() -> None:
    edges = package_imports()
    circles = {frozenset({a, b}) for a in edges for b in edges[a] if a in edges.get(b, set())}
    assert not circles, circles


def test_the_packages_form_no_circle_of_any_length() -> None:
    """A topological order exists: peel off packages that import no remaining one."""
    edges = package_imports()
    remaining = set(PACKAGES)
    while remaining:
        leaves = {package for package in remaining if not edges.get(package, set()) & remaining}
        assert leaves, f"a circle runs through {sorted(remaining)}"
        remaining -= leaves


def test_plumbing_imports_no_domain() -> None:
    edges = package_imports()
    assert {package: edges.get(package, set()) & DOMAINS for package in PLUMBING} == {
        package: set() for package in PLUMBING
    }


def test_the_users_domain_knows_no_http() -> None:
    """ingestor.auth holds the users; logging in and tokens are the API's, which calls it."""
    http = ("ingestor.api", "flask_jwt_extended", "flask_limiter", "flask_smorest")
    found = {
        (path.name, module)
        for path in (PACKAGE / "auth").rglob("*.py")
        for module in imported_modules(path)
        if module.startswith(http)
    }
    assert not found
