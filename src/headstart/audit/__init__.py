"""The deep data audit (`headstart check DATA --deep`): label issues, near-duplicates, outliers and class health
from the cached features, a review page, and the fixes file training applies (`train --fixes`).

    from headstart.audit import audit_dataset, write_audit
    report = audit_dataset("photos/")          # the same report `check --deep` prints and writes
"""

from __future__ import annotations

__all__ = ["audit_dataset", "write_audit"]


def __getattr__(name: str):
    if name in __all__:  # lazily: importing the package costs nothing until it is used
        from headstart.audit import report

        return getattr(report, name)
    raise AttributeError(f"module 'headstart.audit' has no attribute {name!r}")
