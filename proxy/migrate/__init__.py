"""Bulk paths between the two stores: backfill a legacy SQLite file, verify, reconcile."""

from proxy.migrate.backfill import BackfillReport, run_backfill
from proxy.migrate.reconcile import ReconcileReport, drain_outboxes, run_reconcile
from proxy.migrate.verify import VerifyReport, compare_stores, run_verify

__all__ = [
    "BackfillReport",
    "ReconcileReport",
    "VerifyReport",
    "compare_stores",
    "drain_outboxes",
    "run_backfill",
    "run_reconcile",
    "run_verify",
]
