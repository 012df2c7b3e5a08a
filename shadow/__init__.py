"""Shadow comparison of searches: graded figures, a reason for every difference, a verdict.

Imports `metrics` and `config` and nothing else of the project (results are read through the
`RankedHit` protocol, which `proxy.models.SearchResult` satisfies; the worker's child is handed
the searches to run, see `shadow.worker`).
"""

from shadow.compare import (
    CompareContext,
    Comparison,
    Hit,
    Outcome,
    RankedHit,
    Reason,
    analysis_hints,
    classify,
    jaccard_at_k,
    kendall_tau,
    only_in_each,
    overlap_at_k,
    query_terms,
    rbo,
    snapshot,
    top1_agreement,
)
from shadow.experiment import ShadowRunner
from shadow.recorder import fingerprint
from shadow.replay import replay_mismatch
from shadow.store import ComparisonRecord, MismatchRecord, ShadowStore, WindowSummary
from shadow.verdict import (
    DEFAULT_THRESHOLDS,
    Check,
    MirrorFigures,
    OutboxFigures,
    Thresholds,
    Verdict,
    decide,
    evaluate,
    refresh_ready,
)
from shadow.worker import (
    SearchWorker,
    ShadowWorkerError,
    WorkerBusy,
    WorkerSearchFailed,
    WorkerUnavailable,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Check",
    "CompareContext",
    "Comparison",
    "ComparisonRecord",
    "Hit",
    "MirrorFigures",
    "MismatchRecord",
    "OutboxFigures",
    "Outcome",
    "RankedHit",
    "Reason",
    "SearchWorker",
    "ShadowRunner",
    "ShadowStore",
    "ShadowWorkerError",
    "Thresholds",
    "Verdict",
    "WindowSummary",
    "WorkerBusy",
    "WorkerSearchFailed",
    "WorkerUnavailable",
    "analysis_hints",
    "classify",
    "decide",
    "evaluate",
    "fingerprint",
    "jaccard_at_k",
    "kendall_tau",
    "only_in_each",
    "overlap_at_k",
    "query_terms",
    "rbo",
    "refresh_ready",
    "replay_mismatch",
    "snapshot",
    "top1_agreement",
]
