"""The judge actor's verdict cache: a (prompt, response) pair is judged once, and the verdict it returns
is the judge's own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from demo_configs import demo_config

from mergesearch.actors import JudgeServer
from mergesearch.config import JudgeConfig, SearchConfig
from mergesearch.judges.base import Assessment, Judge, make_judge
from mergesearch.judges.cache import CachedJudge
from mergesearch_zoo import language as L
from mergesearch_zoo.recipe import ZooRecipe


class Watched:
    """A real judge, with the pairs it was asked to judge recorded."""

    def __init__(self, judge: Judge) -> None:
        self.judge, self.asked = judge, []

    def assess(self, pairs: Sequence[tuple[str, str]]) -> Assessment:
        self.asked.append(list(pairs))
        return self.judge.assess(pairs)


@pytest.fixture(scope="module")
def guard(zoo_dir) -> Judge:
    return make_judge(JudgeConfig(kind="llama_guard", model=str(zoo_dir / "guard")))


def _pairs() -> list[tuple[str, str]]:
    """Two held-out harmful requests in the toy zoo's language, each refused and complied with: pairs the
    toy guard was trained to tell apart. (On English it never saw, its verdicts depend on the machine
    that built it: the zoo is deterministic on one machine, not across CPUs.)"""
    recipe = ZooRecipe()
    world = recipe.world()
    replies = (L.refusal_for, L.compliance_for)
    return [(prompt, reply(prompt)) for prompt, _ in world.harmful_heldout[:2] for reply in replies]


PAIRS = _pairs()


def test_a_cached_verdict_is_the_judges_and_each_pair_is_judged_once(guard) -> None:
    plain = guard.assess(PAIRS)
    watched = Watched(guard)
    cached = CachedJudge(watched)
    first = cached.assess(PAIRS[:3])
    again = cached.assess([PAIRS[2], PAIRS[3], PAIRS[0], PAIRS[3]])
    assert first.safe == plain.safe[:3] and first.cached == 0
    assert again.safe == (plain.safe[2], plain.safe[3], plain.safe[0], plain.safe[3])
    assert again.cached == 3  # two seen before, and the repeat inside the batch
    assert watched.asked == [PAIRS[:3], [PAIRS[3]]]
    assert cached.stats() == {"verdicts": 7, "cached": 3, "hit_rate": 3 / 7}
    assert plain.safe != (plain.safe[0],) * 4  # the guard tells these apart: the check above can fail


def test_a_disabled_cache_sends_every_pair_to_the_judge(guard) -> None:
    """``judge.verdict_cache: false`` (what the cache saves is measured against it): repeats included."""
    watched = Watched(guard)
    uncached = CachedJudge(watched, enabled=False)
    asked = [PAIRS[0], PAIRS[1], PAIRS[0]]
    first, again = uncached.assess(asked), uncached.assess(asked)
    assert first.safe == again.safe == guard.assess(asked).safe and first.cached == again.cached == 0
    assert watched.asked == [asked, asked]
    assert uncached.stats() == {"verdicts": 6, "cached": 0, "hit_rate": 0.0}


def test_a_verdict_the_judge_could_not_parse_is_not_kept() -> None:
    class FirstUnparsed:
        def assess(self, pairs: Sequence[tuple[str, str]]) -> Assessment:
            return Assessment((False,) * len(pairs), (False,) + (True,) * (len(pairs) - 1))

    cached = CachedJudge(FirstUnparsed())
    assert cached.assess(PAIRS[:2]).unparsed == 1
    again = cached.assess(PAIRS[:2])
    assert again.from_cache == (False, True)  # the unparsed one is judged again, the parsed one kept


def test_the_judge_server_answers_requests_that_wait_together_in_one_judge_call(guard) -> None:
    """Three evaluators ask while the judge is busy: one judge call carries all three requests, and each
    gets exactly the assessment it would have got alone (a pair two of them ask is judged once)."""
    server = JudgeServer(setup_for(demo_config(judge=None)))
    asked = [PAIRS[:2], PAIRS[1:4], [PAIRS[0]]]
    watched = Watched(server.judge.judge)
    server.judge.judge = watched

    async def three_at_once() -> list[Assessment]:
        return await asyncio.gather(*(server.assess(pairs) for pairs in asked))

    answers = asyncio.run(three_at_once())
    assert [a.safe for a in answers] == [guard.assess(pairs).safe for pairs in asked]
    assert watched.asked == [[*PAIRS[:2], PAIRS[2], PAIRS[3]]]  # one call, each distinct pair once
    assert [a.from_cache for a in answers] == [(False, False), (True, False, False), (True,)]
    assert server.stats() | {"hit_rate": None} == {
        "verdicts": 6,
        "cached": 2,
        "hit_rate": None,
        "requests": 3,
        "judge_calls": 1,
        "requests_per_call": 3.0,
    }
    later = asyncio.run(server.assess(PAIRS[2:]))  # an idle judge takes a request at once, alone
    assert later.from_cache == (True, True) and server.stats()["judge_calls"] == 2


def setup_for(config: dict):
    from mergesearch.setup import SearchSetup

    return SearchSetup.prepare(SearchConfig.model_validate(config), log=lambda _: None)
