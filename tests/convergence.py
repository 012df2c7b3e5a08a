"""Row-by-row comparison of the two stores, used by the convergence tests."""

from __future__ import annotations

from typing import Any

from proxy.models import ENTITIES


async def all_rows(store: Any) -> dict[str, dict[Any, dict[str, Any]]]:
    out = {}
    for entity in ENTITIES:
        rows, offset = {}, 0
        while True:
            batch = await store.list_rows(entity, None, limit=5000, offset=offset)
            rows.update({r["id"]: r for r in batch})
            if len(batch) < 5000:
                break
            offset += 5000
        out[entity.table] = rows
    return out


async def count_rows(store: Any) -> dict[str, int]:
    return {table: len(rows) for table, rows in (await all_rows(store)).items()}


async def differences(a: Any, b: Any) -> list[str]:
    left, right = await all_rows(a), await all_rows(b)
    diffs = []
    for table in left:
        for row_id in left[table].keys() | right[table].keys():
            if left[table].get(row_id) != right[table].get(row_id):
                diffs.append(f"{table} {row_id}: {left[table].get(row_id)} != "
                             f"{right[table].get(row_id)}")
    return diffs


async def assert_converged(a: Any, b: Any) -> None:
    diffs = await differences(a, b)
    assert not diffs, f"{len(diffs)} differences, first: {diffs[:3]}"
