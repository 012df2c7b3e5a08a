"""Operator verbs: `cutover status`, `cutover read-primary`, `cutover shadow list|replay`.

They run in their own process beside the service: they read the stores' outboxes, the shadow
comparisons file and the control record, and change the primary through the record (every
running repository follows it within a second).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import typer

from config import Settings
from config.settings import BACKENDS, Backend, other_backend
from proxy.app.cli import (
    EXIT_DIFFER,
    EXIT_REFUSED,
    EXIT_USAGE,
    app,
    fail,
    load_settings,
    require_initialised,
    run,
)
from proxy.connect import open_store
from proxy.errors import FlipRefused
from proxy.flip_gate import outbox_figures
from proxy.primary_source import current_primary
from proxy.repository import default_shadow_path, open_repository
from proxy.stores.base import OutboxStats
from proxy.stores.searchtext import parse_query
from shadow.compare import Reason
from shadow.store import ShadowStore
from shadow.verdict import OutboxFigures, Verdict, evaluate

shadow_app = typer.Typer(help="Recent shadow mismatches, and re-running them.",
                         no_args_is_help=True)
app.add_typer(shadow_app, name="shadow")


async def _outbox(settings: Settings) -> dict[str, OutboxFigures]:
    """Mirror writes waiting to reach each backend (they live in the other store)."""
    stats: dict[str, OutboxStats] = {}
    for source in BACKENDS:
        target = other_backend(source)
        async with open_store(settings, source) as store:
            stats[target] = await store.outbox_stats(target)
    return outbox_figures(stats)


def _verdict(settings: Settings, outbox: dict[str, OutboxFigures]) -> Verdict:
    with ShadowStore(default_shadow_path(settings)) as store:
        return evaluate(store, outbox)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="One JSON document."),
    check: bool = typer.Option(False, "--check",
                               help="Exit 1 when the verdict says no-go (for scripts)."),
) -> None:
    """Primary, outbox depth and age per store, shadow agreement, the go/no-go verdict.

    With --check the exit status is the verdict's: 0 go, 1 no-go.
    """
    settings = load_settings()
    require_initialised(settings)
    outbox = run(lambda: _outbox(settings))
    verdict = _verdict(settings, outbox)
    report: dict[str, Any] = {
        "read_primary": run(lambda: current_primary(settings)),
        "dual_write": settings.dual_write,
        "outbox": {b: {"pending": f.pending, "oldest_age_s": round(f.oldest_age_s, 3),
                       "dead_letters": f.dead_letters} for b, f in outbox.items()},
        "verdict": verdict.to_json(),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_status(report, verdict, settings.dual_write)
    if check and not verdict.go:
        raise typer.Exit(EXIT_DIFFER)


def _print_status(report: dict[str, Any], verdict: Verdict, dual_write: bool) -> None:
    typer.echo(f"read primary: {report['read_primary']}   dual write: "
               f"{'on' if dual_write else 'off'}")
    for backend, figures in report["outbox"].items():
        typer.echo(f"outbox -> {backend:<8} pending {figures['pending']:>6}   oldest "
                   f"{figures['oldest_age_s']:>8.1f} s   dead letters {figures['dead_letters']}")
    for name in ("comparisons", "mean_rbo", "mean_jaccard", "top1_rate"):
        if name in verdict.figures:
            typer.echo(f"shadow {name}: {verdict.figures[name]}")
    typer.echo(f"verdict: {'GO' if verdict.go else 'NO-GO'}")
    for reason in verdict.reasons:
        typer.echo(f"  - {reason}")


@app.command("read-primary")
def read_primary(
    backend: Backend | None = typer.Argument(
        None, help="The store to make primary; omit to show the current one."),
    force: bool = typer.Option(
        False, "--force",
        help="Flip despite a no-go verdict, pending mirror writes or dead letters, or to SQLite "
             "after dual writes stopped: SQLite then lacks every write since (an emergency "
             "rollback; those rows need a backfill the other way)."),
) -> None:
    """Show the primary, or set it for every process (the control record on both stores).

    A refused flip exits 4 with the reason; bad usage exits 2.
    """
    settings = load_settings()
    require_initialised(settings)
    if backend is None:
        typer.echo(run(lambda: current_primary(settings)))
        return

    async def flip() -> int | FlipRefused | None:
        # this command's own READ_PRIMARY (or its default) asks for nothing
        quiet = replace(settings, read_primary_given=False, shadow_worker="inline",
                        metrics_port=None)
        async with open_repository(quiet, init_schema=False) as repo:
            try:
                refused = None if force else await repo.flip_refusal(backend,
                                                                     override="use --force")
                if refused is not None:
                    raise FlipRefused(refused)
                await repo.set_read_primary(backend, force=force)
            except FlipRefused as exc:  # returned: `run` maps other errors to exit 2
                return exc
            return repo.epoch

    epoch = run(flip)
    if isinstance(epoch, FlipRefused):
        raise fail(f"refused: {epoch}", EXIT_REFUSED)
    typer.echo(f"read primary set to {backend} for every process (epoch {epoch})"
               + (" (forced)" if force else ""))


@shadow_app.command("list")
def shadow_list(
    limit: int = typer.Option(20, "--limit", min=1, max=1000),
    reason: Reason | None = typer.Option(None, "--reason",
                                         help="Only this discrepancy reason."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The most recent mismatches (query fingerprints, both id lists, the reason)."""
    settings = load_settings()
    require_initialised(settings)
    with ShadowStore(default_shadow_path(settings)) as store:
        try:
            records = store.recent_mismatches(
                limit, reason=None if reason is None else reason.value)
        except ValueError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
    if as_json:
        typer.echo(json.dumps([_record_json(r) for r in records], indent=2, default=str))
        return
    if not records:
        typer.echo("no mismatches recorded")
    for r in records:
        when = datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        only_primary = len(set(r.primary_ids) - set(r.shadow_ids))
        only_shadow = len(set(r.shadow_ids) - set(r.primary_ids))
        typer.echo(f"#{r.id} {when} {r.reason.value:<20} {r.fingerprint} "
                   f"primary={r.primary_backend} only-primary={only_primary} "
                   f"only-shadow={only_shadow} rbo={'-' if r.rbo is None else f'{r.rbo:.2f}'}")


def _record_json(r: Any) -> dict[str, Any]:
    return {
        "id": r.id, "ts": r.ts, "outcome": r.outcome.value, "reason": r.reason.value,
        "fingerprint": r.fingerprint, "primary_backend": r.primary_backend,
        "primary_ids": [str(i) for i in r.primary_ids],
        "shadow_ids": [str(i) for i in r.shadow_ids], "jaccard": r.jaccard, "rbo": r.rbo,
    }


@shadow_app.command("replay")
def shadow_replay(
    mismatch_id: int | None = typer.Argument(None, help="One mismatch id; omit for recent ones."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-run recorded mismatches against both stores and compare again."""
    from shadow.replay import replay_mismatch

    settings = load_settings()
    require_initialised(settings)
    with ShadowStore(default_shadow_path(settings)) as store:
        if mismatch_id is not None:
            one = store.get_mismatch(mismatch_id)
            if one is None:
                raise fail(f"no mismatch #{mismatch_id}", EXIT_USAGE)
            records = [one]
        else:
            records = store.recent_mismatches(limit)

    async def main() -> list[dict[str, Any]]:
        out = []
        async with open_store(settings, "sqlite") as sq, open_store(settings, "postgres") as pg:
            stores = {"sqlite": sq, "postgres": pg}

            async def search(backend: str, query: str, user_id: str, lim: int) -> Any:
                parse_query(query)
                return await stores[backend].search(query, uuid.UUID(user_id), lim)

            for r in records:
                try:
                    c = await replay_mismatch(r, search)
                    out.append({"id": r.id, "was": r.reason.value, "now": c.outcome.value,
                                "reason": c.reason.value if c.reason else None})
                except ValueError as exc:
                    out.append({"id": r.id, "was": r.reason.value, "error": str(exc)})
        return out

    results = run(main)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    if not results:
        typer.echo("no mismatches recorded")
    for item in results:
        now = item.get("error") or f"{item['now']} ({item.get('reason') or '-'})"
        typer.echo(f"#{item['id']} was {item['was']}: now {now}")
