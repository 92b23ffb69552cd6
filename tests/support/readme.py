"""The README's runnable snippets, run as another service would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_snippet(marker: str) -> str:
    """The python block right after `<!-- marker -->` in the README."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"the README lost its {marker}"
    return match.group(1)


def run_snippet(snippet: str, broker_url: str, absent: tuple[str, ...] = ("ingestor",)) -> None:
    """Run `snippet` in a fresh interpreter against `broker_url`; it must not import `absent`."""
    checks = "".join(f"\nassert {module!r} not in sys.modules" for module in absent)
    subprocess.run(
        [sys.executable, "-c", f"{snippet}\nimport sys{checks}\n"],
        env={**os.environ, "BROKER_URL": broker_url},
        check=True,
        timeout=60,
    )
