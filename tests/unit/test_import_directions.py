"""Dependencies between the ingestor's packages run one way, as read from the imports."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tests.support.imports import imported_modules

PACKAGE = Path(__file__).resolve().parents[2] / "ingestor"
PACKAGES = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}

# The circles issue 14's other part removes (messaging and observability around the
# pulses); none may be added, and an entry goes once its circle is gone.
KNOWN_CIRCLES = {frozenset({"messaging", "pulses"}), frozenset({"observability", "pulses"})}


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
    assert circles <= KNOWN_CIRCLES, circles - KNOWN_CIRCLES


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
