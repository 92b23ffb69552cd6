"""Pulses for tests: `pulse(**overrides)` is a valid pulse, changed only where the scenario says.

    pulse()                                  # acme, vm.small, vCPU-hour, used_amount "1"
    pulse(id="p-1", tenant="globex", used_amount="0.000001", timestamp=hour + timedelta(minutes=5))
    pulse(tenant=MISSING)                    # a pulse without a tenant
    pulse(used_amount=None)                  # used_amount sent as JSON null (not left out)

Overrides win and may add any field (an unknown one included). A `datetime` value is
written in ISO-8601 with its offset, as a producer sends it; a string is taken as it
is, so a test can send a malformed timestamp. `MISSING` leaves a field out: `None`
cannot, since null is a value a producer can send. By default a pulse has neither an
id nor a timestamp (it then counts in the hour it is received): a scenario adds them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

DEFAULTS: dict[str, Any] = {
    "tenant": "acme",
    "product_sku": "vm.small",
    "use_unity": "vCPU-hour",
    "used_amount": "1",
}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


# Passed as a field's value: the pulse has no such field.
MISSING: Any = _Missing()


def pulse(**overrides: Any) -> dict[str, Any]:
    """A valid pulse (DEFAULTS) with `overrides` applied; see the module's docstring."""
    fields = {**DEFAULTS, **overrides}
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in fields.items()
        if value is not MISSING
    }
