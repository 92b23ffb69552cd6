"""CSV text cells a spreadsheet would run as formulas get a leading "'"; numbers never change."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from ingestor.api.usage import _csv_fields, spreadsheet_safe
from ingestor.pulses.usage import UsageRow


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("-1+2", "'-1+2"),
        ("+1", "'+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("'=1", "''=1"),  # the rule stays reversible: drop one leading "'"
        ("acme", "acme"),
        ("vm.small", "vm.small"),
        ("a=b", "a=b"),  # only the first character counts
        ("vCPU-hour", "vCPU-hour"),
        ("initech ☕", "initech ☕"),
        ("", ""),
    ],
)
def test_text_cells_starting_with_a_formula_character_get_a_quote(text: str, cell: str) -> None:
    assert spreadsheet_safe(text) == cell


def test_only_the_group_fields_change_never_the_numbers_or_the_bounds() -> None:
    row = UsageRow(
        window_start=datetime(2026, 11, 1, tzinfo=UTC),
        window_end=datetime(2026, 11, 2, tzinfo=UTC),
        tenant="-1+2",
        product_sku="=1",
        use_unity="GB",
        used_amount=Decimal("-5.000000"),
        pulse_count=3,
    )
    fields = _csv_fields(row, ZoneInfo("UTC"), ("tenant", "product_sku", "use_unity"))
    assert fields == {
        "window_start": "2026-11-01T00:00:00+00:00",
        "window_end": "2026-11-02T00:00:00+00:00",
        "tenant": "'-1+2",
        "product_sku": "'=1",
        "use_unity": "GB",
        "used_amount": "-5.000000",
        "pulse_count": 3,
    }
