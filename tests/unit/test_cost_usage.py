"""The usage ledger and the chargeback: tallies merged without ever going back, shares to
the cent that add up exactly, and answers that are not answers refused whole."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest

from privatellm.cost.usage import (
    UNNAMED,
    UNUSED,
    UsageAnswer,
    UsageRow,
    chargeback,
    dump_answer,
    load,
    merge,
    month_usage,
    parse_answer,
    usage_figures,
)

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
    return {
        "zone": zone,
        "month": month,
        "subject": subject,
        "policy": policy,
        "model": model,
        "requests": requests,
        "promptTokens": prompt,
        "completionTokens": completion,
    }


def answer(tally: str, *items: dict[str, Any]) -> UsageAnswer:
    return parse_answer({"tally": tally, "usage": list(items)})


def row(subject: str, requests: int, prompt: int = 0, completion: int = 0, **kw: Any) -> UsageRow:
    return answer(TALLY_A, item(subject, requests, prompt, completion, **kw)).rows[0]


def test_an_answer_in_the_contract_shape_is_read_and_stored_compactly() -> None:
    body = {"tally": TALLY_A, "usage": [item("alice", 3, 120, 40)], "extra": "ignored"}
    read = parse_answer(body)
    assert read.rows == (UsageRow("UTC", "2026-12", "alice", "analysts", "llama", 3, 120, 40),)
    assert (read.requests, read.tokens, read.rows[0].tokens) == (3, 160, 160)
    text = dump_answer(read)
    assert " " not in text
    assert json.loads(text) == {"tally": TALLY_A, "usage": [item("alice", 3, 120, 40)]}
    assert parse_answer(json.loads(text)) == read


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


def test_merge_adds_new_tallies_keeps_gone_ones_and_never_goes_back() -> None:
    first = merge(None, [answer(TALLY_A, item("alice", 3, 120, 40))])
    assert list(first) == [TALLY_A]
    # B is new: added; A answers with more: replaced.
    later = merge(
        first,
        [answer(TALLY_A, item("alice", 5, 200, 60)), answer(TALLY_B, item("bob", 1, 10, 5))],
    )
    assert list(later) == [TALLY_B, TALLY_A]
    assert json.loads(later[TALLY_A])["usage"][0]["requests"] == 5
    # A stale read of A (a replica read before the other's write landed) changes nothing.
    assert merge(later, [answer(TALLY_A, item("alice", 4, 150, 50))]) == later
    # Same requests, more tokens: a request's tokens counted after the request itself.
    more_tokens = merge(later, [answer(TALLY_A, item("alice", 5, 200, 90))])
    assert json.loads(more_tokens[TALLY_A])["usage"][0]["completionTokens"] == 90
    # B's replica is gone (its volume with it): what it counted still counts.
    gone = merge(later, [answer(TALLY_A, item("alice", 6, 210, 70))])
    assert gone[TALLY_B] == later[TALLY_B]
    assert [r.requests for r in load(gone)] == [6, 1]
    # The same answer again writes nothing new.
    assert merge(gone, [answer(TALLY_A, item("alice", 6, 210, 70))]) == gone


def test_a_stored_copy_that_does_not_parse_is_replaced_by_its_tally_s_answer() -> None:
    stored = {TALLY_A: "{not json", TALLY_B: dump_answer(answer(TALLY_B, item("bob", 1)))}
    merged = merge(stored, [answer(TALLY_A, item("alice", 1))])
    assert load(merged) == [row("alice", 1), row("bob", 1)]


def test_load_sums_the_tallies_and_refuses_what_is_not_an_answer() -> None:
    data = merge(
        None,
        [
            answer(TALLY_A, item("alice", 3, 120, 40), item("bob", 1, 5, 5, model="qwen")),
            answer(TALLY_B, item("alice", 2, 80, 10)),
        ],
    )
    assert load(data) == [row("alice", 5, 200, 50), row("bob", 1, 5, 5, model="qwen")]
    assert load(None) == load({}) == []
    with pytest.raises(ValueError, match=f"tally {TALLY_A}: "):
        load({TALLY_A: json.dumps({"tally": TALLY_A, "usage": [item("a", -1)]})})
    with pytest.raises(ValueError, match=f"tally {TALLY_B} holds the answer of tally {TALLY_A}"):
        load({TALLY_B: data[TALLY_A]})


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
    assert figures == (2, Decimal("50.00"), Decimal("100.00"), 1_000_000)
    assert figures.active_users == 2 and figures.tokens == 1_000_000
    # 10 / 3 users = 3.333 -> 3.33; per million of 3 tokens: 3,333,333.33.
    thirds = usage_figures([row(n, 1, 1) for n in "abc"], Decimal("10"))
    assert thirds == (3, Decimal("3.33"), Decimal("3333333.33"), 3)
    assert usage_figures([], Decimal("100")) == (0, None, None, 0)
    # Requests without token counts: users, but no cost per token.
    assert usage_figures([row("alice", 2)], Decimal("5")) == (1, Decimal("5.00"), None, 0)
