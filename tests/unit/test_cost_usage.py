"""The usage ledgers and the chargeback: tallies merged month by month without ever going
back, one ConfigMap per month that stays well under 1 MiB, shares to the cent that add up
exactly, and answers that are not answers refused whole."""

from __future__ import annotations

import json
import logging
import random
from decimal import Decimal
from typing import Any, cast

import pytest

from privatellm.controllers.usage import store_usage
from privatellm.cost import usage
from privatellm.cost.chargeback import UNNAMED, UNUSED, chargeback, idle_gpu_share, usage_figures
from privatellm.cost.spend import Spend
from privatellm.cost.usage import (
    MAX_LEDGER_BYTES,
    UsageAnswer,
    UsageRow,
    answer_months,
    dump_entry,
    ledger_bytes,
    load,
    merge,
    month_usage,
    parse_answer,
    parse_entry,
    usage_configmap,
)
from privatellm.kube.client import ApiError, Kube
from privatellm.render.meta import MANAGED_BY, MANAGED_BY_LABEL
from tests.support.usage import usage_row

TALLY_A = "a1b2c3d4"
TALLY_B = "0f0f0f0f"


def item(
    subject: str,
    requests: int,
    prompt: int = 0,
    completion: int = 0,
    *,
    model: str = "llama",
    policy: str = "analysts",
    zone: str = "UTC",
    month: str = "2026-12",
) -> dict[str, Any]:
    return usage_row(zone, month, subject, policy, model, requests, prompt, completion)


def answer(tally: str, *items: dict[str, Any]) -> UsageAnswer:
    return parse_answer({"tally": tally, "usage": list(items)})


def row(subject: str, requests: int, prompt: int = 0, completion: int = 0, **kw: Any) -> UsageRow:
    return answer(TALLY_A, item(subject, requests, prompt, completion, **kw)).rows[0]


def test_an_answer_in_the_contract_shape_is_read_and_stored_compactly() -> None:
    body = {"tally": TALLY_A, "usage": [item("alice", 3, 120, 40)], "extra": "ignored"}
    read = parse_answer(body)
    assert read.rows == (UsageRow("UTC", "2026-12", "alice", "analysts", "llama", 3, 120, 40),)
    assert (read.requests, read.tokens, read.rows[0].tokens) == (3, 160, 160)
    text = dump_entry(read, "2026-12")
    # The month once, each row an array: no field name repeated per row.
    assert text == (
        '{"tally":"a1b2c3d4","month":"2026-12",'
        '"rows":[["UTC","alice","analysts","llama",3,120,40]]}'
    )
    assert parse_entry(text) == ("2026-12", read)
    with pytest.raises(ValueError, match="rows outside 2027-01"):
        dump_entry(read, "2027-01")


def test_each_month_has_a_configmap_of_its_own() -> None:
    assert usage_configmap("2026-12") == "privatellm-usage-ledger-2026-12"
    with pytest.raises(ValueError, match="is not YYYY-MM"):
        usage_configmap("2026-13")
    both = answer(
        TALLY_A,
        item("alice", 1, month="2026-12"),
        item("alice", 2, month="2027-01", zone="Europe/Amsterdam"),
    )
    assert answer_months([both, answer(TALLY_B, item("bob", 1, month="2026-11"))]) == [
        "2026-11",
        "2026-12",
        "2027-01",
    ]
    assert both.of_month("2027-01").rows == both.rows[1:]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "not a JSON object"),
        ({"usage": []}, "is not a hex id"),
        ({"tally": "../etc", "usage": []}, "is not a hex id"),
        ({"tally": TALLY_A, "usage": {}}, "usage is not a list"),
        ({"tally": TALLY_A, "usage": ["alice"]}, "usage[0] is not an object"),
        ({"tally": TALLY_A, "usage": [{**item("a", 1), "subject": None}]}, "[0].subject is not"),
        ({"tally": TALLY_A, "usage": [{**item("a", 1), "model": 7}]}, "usage[0].model is not"),
        ({"tally": TALLY_A, "usage": [{**item("a", 1), "model": ""}]}, "usage[0].model is empty"),
        ({"tally": TALLY_A, "usage": [item("a", 1, month="2026-13")]}, "is not YYYY-MM"),
        ({"tally": TALLY_A, "usage": [{**item("a", 1), "requests": "3"}]}, "requests is not"),
        ({"tally": TALLY_A, "usage": [{**item("a", 1), "requests": True}]}, "requests is not"),
        ({"tally": TALLY_A, "usage": [{**item("a", 1), "promptTokens": 1.5}]}, "promptTokens"),
        ({"tally": TALLY_A, "usage": [item("a", 1), item("b", -1)]}, "usage[1].requests is neg"),
        ({"tally": TALLY_A, "usage": [item("a", 1, 0, -4)]}, "completionTokens is negative"),
        ({"tally": TALLY_A, "usage": [item("a", 1), item("a", 2)]}, "more than once"),
    ],
)
def test_a_malformed_answer_is_refused_whole(body: Any, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_answer(body)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ([], "not a JSON object"),
        ({"month": "2026-12", "rows": []}, "is not a hex id"),
        ({"tally": TALLY_A, "month": "12-2026", "rows": []}, "month '12-2026' is not YYYY-MM"),
        ({"tally": TALLY_A, "month": "2026-12", "rows": {}}, "rows is not a list"),
        ({"tally": TALLY_A, "month": "2026-12", "rows": [["UTC"]]}, "rows[0] is not an array"),
        (
            {"tally": TALLY_A, "month": "2026-12", "rows": [["UTC", "a", "p", "m", 1, -2, 0]]},
            "rows[0].promptTokens is negative",
        ),
        (
            {"tally": TALLY_A, "month": "2026-12", "rows": [["", "a", "p", "m", 1, 0, 0]]},
            "rows[0].zone is empty",
        ),
        (
            {"tally": TALLY_A, "month": "2026-12", "rows": [["UTC", "a", "p", "m", 1, 0, 0]] * 2},
            "more than once",
        ),
    ],
)
def test_a_malformed_stored_entry_is_refused(entry: Any, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_entry(json.dumps(entry))
    assert says in str(refused.value)


def stored_requests(data: dict[str, str], tally: str) -> list[int]:
    return [row.requests for row in parse_entry(data[tally])[1].rows]


def test_merge_adds_new_tallies_keeps_gone_ones_and_never_goes_back() -> None:
    first = merge("2026-12", None, [answer(TALLY_A, item("alice", 3, 120, 40))])
    assert list(first) == [TALLY_A]
    # B is new: added; A answers with more: replaced.
    later = merge(
        "2026-12",
        first,
        [answer(TALLY_A, item("alice", 5, 200, 60)), answer(TALLY_B, item("bob", 1, 10, 5))],
    )
    assert list(later) == [TALLY_B, TALLY_A]
    assert stored_requests(later, TALLY_A) == [5]
    # A stale read of A (a replica read before the other's write landed) changes nothing.
    assert merge("2026-12", later, [answer(TALLY_A, item("alice", 4, 150, 50))]) == later
    # Same requests, more tokens: a request's tokens counted after the request itself.
    more_tokens = merge("2026-12", later, [answer(TALLY_A, item("alice", 5, 200, 90))])
    assert parse_entry(more_tokens[TALLY_A])[1].rows[0].completion_tokens == 90
    # B's replica is gone (its volume with it): what it counted still counts.
    gone = merge("2026-12", later, [answer(TALLY_A, item("alice", 6, 210, 70))])
    assert gone[TALLY_B] == later[TALLY_B]
    assert [r.requests for r in load(gone)] == [6, 1]
    # The same answer again writes nothing new.
    assert merge("2026-12", gone, [answer(TALLY_A, item("alice", 6, 210, 70))]) == gone


def test_each_month_is_merged_on_its_own() -> None:
    december = item("alice", 5, 50, month="2026-12")
    # Amsterdam's January begins an hour before UTC's: a row of each zone in one month.
    january = [item("alice", 2, 20, month="2027-01"), item("bob", 1, 10, month="2027-01")]
    january[1]["zone"] = "Europe/Amsterdam"
    ledgers = {
        m: merge(m, None, [answer(TALLY_A, december, *january)]) for m in ("2026-12", "2027-01")
    }
    assert stored_requests(ledgers["2026-12"], TALLY_A) == [5]
    assert stored_requests(ledgers["2027-01"], TALLY_A) == [1, 2]
    assert {r.zone for r in load(ledgers["2027-01"])} == {"UTC", "Europe/Amsterdam"}
    # A month the answer counts nothing in is left as it is.
    assert merge("2026-11", None, [answer(TALLY_A, december)]) == {}
    # January grew, December did not: December's ledger is unchanged.
    grown = answer(TALLY_A, december, {**january[0], "requests": 3}, january[1])
    assert merge("2026-12", ledgers["2026-12"], [grown]) == ledgers["2026-12"]
    assert stored_requests(merge("2027-01", ledgers["2027-01"], [grown]), TALLY_A) == [1, 3]
    # Compared month by month: a stale January is refused though December grew since.
    stale = answer(TALLY_A, {**december, "requests": 9}, january[0])
    assert merge("2027-01", ledgers["2027-01"], [stale]) == ledgers["2027-01"]


def test_a_stored_copy_that_does_not_parse_is_replaced_by_its_tally_s_answer() -> None:
    bob = dump_entry(answer(TALLY_B, item("bob", 1)), "2026-12")
    stored = {TALLY_A: "{not json", TALLY_B: bob}
    merged = merge("2026-12", stored, [answer(TALLY_A, item("alice", 1))])
    assert load(merged) == [row("alice", 1), row("bob", 1)]
    # Nor is a copy kept that is of another tally or another month.
    for wrong in (bob, dump_entry(answer(TALLY_A, item("alice", 9, month="2026-11")), "2026-11")):
        merged = merge("2026-12", {TALLY_A: wrong}, [answer(TALLY_A, item("alice", 1))])
        assert load(merged) == [row("alice", 1)]


def test_load_sums_the_tallies_and_refuses_what_is_not_an_entry() -> None:
    data = merge(
        "2026-12",
        None,
        [
            answer(TALLY_A, item("alice", 3, 120, 40), item("bob", 1, 5, 5, model="qwen")),
            answer(TALLY_B, item("alice", 2, 80, 10)),
        ],
    )
    assert load(data) == [row("alice", 5, 200, 50), row("bob", 1, 5, 5, model="qwen")]
    assert load(None) == load({}) == []
    with pytest.raises(ValueError, match=f"tally {TALLY_A}: "):
        load({TALLY_A: json.dumps({"tally": TALLY_A, "month": "2026-12", "rows": [[]]})})
    with pytest.raises(ValueError, match=f"tally {TALLY_B} holds the rows of tally {TALLY_A}"):
        load({TALLY_B: data[TALLY_A]})


def big_month(subjects: int, month: str = "2026-12") -> list[UsageAnswer]:
    """Two tallies counting `subjects` subjects on 3 models in 2 zones, with names and
    counters of a realistic length."""
    models = ("llama-3-1-70b-instruct", "mistral-small-24b", "qwen2-5-coder-32b")
    return [
        answer(
            tally * 4,
            *(
                item(
                    f"user-{n:04d}.lastname@example.com",
                    12_345,
                    123_456_789,
                    12_345_678,
                    model=model,
                    policy="analysts-eu",
                    zone=zone,
                    month=month,
                )
                for n in range(subjects)
                for model in models
                for zone in ("Europe/Amsterdam", "UTC")
            ),
        )
        for tally in (TALLY_A, TALLY_B)
    ]


def test_a_month_of_200_subjects_fits_well_within_a_configmap() -> None:
    data = merge("2026-12", None, big_month(200))
    assert len(load(data)) == 200 * 3 * 2
    size = ledger_bytes(data)
    # 2,400 stored rows (1,200 per tally): about 260 KB, a quarter of a ConfigMap's 1 MiB.
    assert size < 300_000 < MAX_LEDGER_BYTES
    assert size == sum(len(v.encode()) for v in data.values()) + len(TALLY_A * 4) * 2


class FakeKube:
    """ConfigMaps by name, with resourceVersions and the conflicts of the API server."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.conflicts = 0
        self.refuse: set[str] = set()

    def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        assert (kind.kind, namespace) == ("ConfigMap", "team-a")
        return self.objects.get(name)

    def write_if_unchanged(self, manifest: dict[str, Any], live: dict[str, Any] | None) -> None:
        name = manifest["metadata"]["name"]
        if name in self.refuse:
            raise ApiError(422, "refused")
        if self.conflicts:
            self.conflicts -= 1
            raise ApiError(409, "conflict")
        now = self.objects.get(name)
        version = (now or {}).get("metadata", {}).get("resourceVersion")
        assert version == (live or {}).get("metadata", {}).get("resourceVersion")
        meta = {**manifest["metadata"], "resourceVersion": str(int(version or 0) + 1)}
        self.objects[name] = {**manifest, "metadata": meta}
        self.writes.append(name)


def store(kube: FakeKube, answers: list[UsageAnswer]) -> bool:
    return store_usage(cast(Kube, kube), "team-a", answers)


def test_the_collector_writes_each_month_that_changed_in_its_own_configmap() -> None:
    kube = FakeKube()
    first = answer(TALLY_A, item("alice", 1, month="2026-11"), item("alice", 2, month="2026-12"))
    assert store(kube, [first])
    assert kube.writes == ["privatellm-usage-ledger-2026-11", "privatellm-usage-ledger-2026-12"]
    # Only December moved; a conflict is re-read and written again.
    kube.writes.clear()
    kube.conflicts = 1
    later = answer(TALLY_A, item("alice", 1, month="2026-11"), item("alice", 3, month="2026-12"))
    assert store(kube, [later])
    assert kube.writes == ["privatellm-usage-ledger-2026-12"]
    assert not store(kube, [later])
    december = kube.objects["privatellm-usage-ledger-2026-12"]
    assert december["metadata"]["labels"] == {MANAGED_BY_LABEL: MANAGED_BY}
    assert [r.requests for r in load(december["data"])] == [3]
    # A month the API server refuses does not hold the others back, and is said.
    kube.refuse.add("privatellm-usage-ledger-2026-11")
    grown = answer(TALLY_A, item("alice", 4, month="2026-11"), item("alice", 4, month="2026-12"))
    with pytest.raises(RuntimeError, match="privatellm-usage-ledger-2026-11 not written: "):
        store(kube, [grown])
    assert [r.requests for r in load(kube.objects["privatellm-usage-ledger-2026-12"]["data"])] == [
        4
    ]


def test_a_month_too_large_for_a_configmap_is_logged_and_keeps_what_was_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = FakeKube()
    assert store(kube, big_month(10))
    before = kube.objects["privatellm-usage-ledger-2026-12"]
    kube.writes.clear()
    # 800 subjects: about 1 MB, over the 900 KiB a ledger may hold. January still fits.
    january = answer(TALLY_B, item("bob", 1, month="2027-01"))
    with caplog.at_level(logging.ERROR, logger="privatellm.controllers.usage"):
        assert store(kube, [*big_month(800), january])
    assert kube.writes == ["privatellm-usage-ledger-2027-01"]
    assert kube.objects["privatellm-usage-ledger-2026-12"] is before
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert "usage of namespace team-a in 2026-12 is not recorded" in record.getMessage()
    assert "privatellm-usage-ledger-2026-12" in record.getMessage()


def test_month_usage_takes_the_month_of_one_zone_and_the_models_in_scope() -> None:
    rows = [
        row("alice", 1),
        row("alice", 2, zone="Europe/Amsterdam"),
        row("alice", 4, month="2026-11"),
        row("bob", 8, model="qwen"),
    ]
    assert month_usage(rows, "UTC", "2026-12", {"llama"}) == [rows[0]]
    assert month_usage(rows, "UTC", "2026-12", None) == [rows[0], rows[3]]
    assert month_usage(rows, "Europe/Amsterdam", "2026-12", ["llama"]) == [rows[1]]
    assert month_usage(rows, "UTC", "2027-01", None) == []


def amounts(shares: list[Any]) -> dict[tuple[str, str], Decimal]:
    return {(s.model, s.label): s.amount for s in shares}


def test_thirds_are_shared_to_the_cent_and_add_up_exactly() -> None:
    rows = [row(name, 1, 10, 5) for name in ("carol", "alice", "bob")]
    # 10.00 / 3 = 3.333...: the cent left goes to the first name of the tie.
    assert amounts(chargeback({"llama": Decimal("10")}, rows, "subject")) == {
        ("llama", "alice"): Decimal("3.34"),
        ("llama", "bob"): Decimal("3.33"),
        ("llama", "carol"): Decimal("3.33"),
    }
    # 0.05 / 3: two cents left over.
    shares = chargeback({"llama": Decimal("0.05")}, rows, "subject")
    assert [str(s.amount) for s in shares] == ["0.02", "0.02", "0.01"]
    # 2:1 of 0.10 = 0.0666 / 0.0333: the larger remainder takes the cent.
    two_to_one = [row("alice", 1, 10), row("bob", 1, 20)]
    assert [
        str(s.amount) for s in chargeback({"llama": Decimal("0.1")}, two_to_one, "subject")
    ] == [
        "0.03",
        "0.07",
    ]
    # The spend is rounded once (half to even), then shared: 82.005 -> 82.00.
    assert sum(s.amount for s in chargeback({"llama": Decimal("82.005")}, rows, "subject")) == (
        Decimal("82.00")
    )


def test_any_split_adds_up_to_the_rounded_spend() -> None:
    draw = random.Random(7)
    for _ in range(300):
        cost = Decimal(draw.randrange(0, 10**7)) / Decimal(10 ** draw.randrange(0, 5))
        rows = [
            row(f"u{i}", draw.randrange(1, 9), draw.randrange(0, 10**6), draw.randrange(0, 99))
            for i in range(draw.randrange(1, 12))
        ]
        shares = chargeback({"llama": cost}, rows, "subject")
        assert sum(s.amount for s in shares) == cost.quantize(Decimal("0.01"))
        assert all(s.amount == s.amount.quantize(Decimal("0.01")) >= 0 for s in shares)


def test_spend_that_nobody_used_is_its_own_row() -> None:
    shares = chargeback(
        {"llama": Decimal("3"), "gemma": Decimal("1.62"), "idle": Decimal(0)},
        [row("alice", 1, 5)],
        "subject",
    )
    assert [(s.model, s.name, s.label, s.requests, str(s.amount)) for s in shares] == [
        ("gemma", None, UNUSED, 0, "1.62"),
        ("llama", "alice", "alice", 1, "3.00"),
    ]
    # A subject who happens to be called "(unused)" is still somebody; requests counted
    # without a subject are shared too.
    named = chargeback({"llama": Decimal(1)}, [row(UNUSED, 1, 5), row("", 1, 5)], "subject")
    assert [(s.name, s.label, str(s.amount)) for s in named] == [
        ("", UNNAMED, "0.50"),
        (UNUSED, UNUSED, "0.50"),
    ]


def test_requests_without_token_counts_share_by_requests() -> None:
    rows = [row("alice", 2), row("bob", 1), row("bob", 0, model="qwen")]
    assert amounts(chargeback({"llama": Decimal("1.00")}, rows, "subject")) == {
        ("llama", "alice"): Decimal("0.67"),
        ("llama", "bob"): Decimal("0.33"),
    }
    # Once tokens are counted, they decide: requests without tokens share nothing.
    rows.append(row("carol", 1, 30, 10))
    assert amounts(chargeback({"llama": Decimal("1.00")}, rows, "subject")) == {
        ("llama", "alice"): Decimal("0.00"),
        ("llama", "bob"): Decimal("0.00"),
        ("llama", "carol"): Decimal("1.00"),
    }


def test_shares_by_policy_add_up_the_subjects_of_each_policy() -> None:
    rows = [
        row("alice", 1, 100, policy="analysts"),
        row("bob", 1, 100, policy="analysts"),
        row("bob", 1, 100, policy="support"),
        row("bob", 3, 0, model="qwen", policy="support"),
    ]
    shares = chargeback({"llama": Decimal("9.00"), "qwen": Decimal("1")}, rows, "policy")
    assert [(s.model, s.label, s.requests, s.prompt_tokens, str(s.amount)) for s in shares] == [
        ("llama", "analysts", 2, 200, "6.00"),
        ("llama", "support", 1, 100, "3.00"),
        ("qwen", "support", 3, 0, "1.00"),
    ]
    # Use of a model without spend shares nothing.
    assert [str(s.amount) for s in chargeback({}, rows[:1], "policy")] == ["0.00"]


def test_usage_figures_count_active_users_and_never_divide_by_zero() -> None:
    rows = [row("alice", 3, 600_000, 150_000), row("bob", 1, 250_000), row("carol", 0)]
    figures = usage_figures(rows, Decimal("100"))
    # alice and bob asked; carol did not. 100 / 2 = 50; 100 / 1.0 M tokens.
    assert figures == (2, Decimal("50.00"), Decimal("100.00"), 1_000_000, 4)
    assert figures.active_users == 2 and figures.tokens == 1_000_000
    # 10 / 3 users = 3.333 -> 3.33; per million of 3 tokens: 3,333,333.33.
    thirds = usage_figures([row(n, 1, 1) for n in "abc"], Decimal("10"))
    assert thirds == (3, Decimal("3.33"), Decimal("3333333.33"), 3, 3)
    assert usage_figures([], Decimal("100")) == (0, None, None, 0, 0)
    # Requests without token counts: users, but no cost per token.
    assert usage_figures([row("alice", 2)], Decimal("5")) == (1, Decimal("5.00"), None, 0, 2)


def test_busy_time_is_parsed_stored_merged_by_month_and_summed_over_tallies() -> None:
    body = {
        "tally": "ab12",
        "usage": [],
        "busy": [
            {"zone": "UTC", "month": "2026-12", "model": "llama", "replicaMilliseconds": 9000},
            {"zone": "UTC", "month": "2026-11", "model": "llama", "replicaMilliseconds": 500},
        ],
    }
    answer = usage.parse_answer(body)
    assert usage.answer_months([answer]) == ["2026-11", "2026-12"]
    december = usage.merge("2026-12", None, [answer])
    assert usage.load_busy(december) == {("UTC", "2026-12", "llama"): 9000}
    # A later answer of the same tally with more busy time replaces it; a stale one not.
    later = {**body, "busy": [{**body["busy"][0], "replicaMilliseconds": 12000}]}
    newer = usage.merge("2026-12", december, [usage.parse_answer(later)])
    assert usage.load_busy(newer) == {("UTC", "2026-12", "llama"): 12000}
    assert usage.merge("2026-12", newer, [answer]) == newer
    other = {**later, "tally": "cd34"}
    both = usage.merge("2026-12", newer, [usage.parse_answer(other)])
    assert usage.load_busy(both) == {("UTC", "2026-12", "llama"): 24000}
    assert usage.month_busy(usage.load_busy(both), "UTC", "2026-12", {"llama"}) == {"llama": 24000}
    bad = {**body, "busy": [{**body["busy"][0], "replicaMilliseconds": -1}]}
    with pytest.raises(ValueError, match="replicaMilliseconds"):
        usage.parse_answer(bad)
    assert usage.parse_answer({"tally": "ab12", "usage": []}).busy == (), "older gateways"


def test_the_idle_share_is_the_gpu_time_no_request_was_in_flight_on() -> None:
    spent = Spend(gpu_seconds=4 * 3600)  # llama: 2 replicas of 2 GPUs, 1 h
    # Its replicas were busy 1.5 h between them: 3 GPU-hours of 4.
    assert idle_gpu_share(spent, {"llama": 5_400_000}, {"llama": 2}) == Decimal("0.250")
    assert idle_gpu_share(spent, {}, {"llama": 2}) == Decimal("1.000"), "never asked"
    overlapping = idle_gpu_share(spent, {"llama": 9_000_000}, {"llama": 2})
    assert overlapping == Decimal("0.000"), "two gateways' busy times exceed the GPU time"
    assert idle_gpu_share(Spend(), {"llama": 1}, {"llama": 1}) is None
