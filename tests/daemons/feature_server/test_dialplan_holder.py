"""The plan in force and its reload (daemons/feature_server/dialplan.py), in
process: queries answered while a large plan compiles see the old plan or the
new one, never a mix and never nothing; a broken candidate leaves the old one."""

from __future__ import annotations

import asyncio

import pytest

from daemons.feature_server.dialplan import DialPlanHolder, PlanSources, Query
from protocols.dialplan import DialPlanError

RULES = 20_000


def sources(target: str) -> PlanSources:
    rules = [f"{1_000_000 + i}X=>{target}${{DIGITS}}@trunk" for i in range(RULES)]
    return PlanSources(partitions={"Big": {"rules": rules}})


async def test_queries_during_a_reload_see_one_plan_or_the_other() -> None:
    holder = DialPlanHolder(is_internal=lambda dn: dn.startswith("1"))
    await holder.install(sources("+1"))
    seen: dict[str, int] = {}
    stop = asyncio.Event()

    async def ask() -> None:
        i = 0
        while not stop.is_set():
            digits = f"{1_000_000 + i % RULES}5"
            decision = holder.answer(Query(digits=digits, caller="1001"))
            assert decision.number is not None, decision
            prefix = decision.number[: -len(digits)]
            seen[prefix] = seen.get(prefix, 0) + 1
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ask())
    await asyncio.sleep(0.05)
    await holder.install(sources("+44"))
    await asyncio.sleep(0.05)
    stop.set()
    await task
    assert set(seen) == {"+1", "+44"} and seen["+1"] > 0 and seen["+44"] > 0


async def test_a_broken_candidate_leaves_the_plan_in_force() -> None:
    holder = DialPlanHolder(is_internal=lambda dn: False)
    await holder.install(PlanSources(partitions={"P": {"rules": ["1=>+1@trunk"]}}))
    broken = PlanSources(partitions={"P": {"rules": ["1=>+1@trunk", "2=>${OOPS}"]}})
    with pytest.raises(DialPlanError, match="partition P, rule 2"):
        await holder.install(broken)
    assert holder.answer(Query(digits="1")).number == "+1"
    assert holder.sources.partitions["P"]["rules"] == ["1=>+1@trunk"]
