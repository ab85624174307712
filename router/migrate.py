"""The gateway's migration sources: its own tenancy schema and the ledger's.

The runner itself (``core.migrate``) knows no source; ``sluicegate db migrate``
applies them all.
"""

from __future__ import annotations

from pathlib import Path

import budgets
from core.migrate import Source

TENANCY: Source = ("tenancy", Path(__file__).with_name("migrations"))
LEDGER: Source = ("ledger", Path(budgets.__file__).with_name("migrations"))
ALL_SOURCES: list[Source] = [LEDGER, TENANCY]

