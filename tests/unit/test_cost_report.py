"""`privatellm cost report`: each CostBudget's models priced from the GPU ledger, to the cent,
in the budget's own month; incomplete spend named, never shown as 0; table, JSON and CSV;
by subject and by policy, each model's amount shared out by the usage ledger, exactly."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from privatellm.api import CostBudget
from privatellm.cli.main import main
from privatellm.cost import usage
from privatellm.cost.ledger import Capacity, Run, dump, merge, timestamp
from privatellm.cost.report import (
    UNLABELLED_PRODUCT,
    ReportError,
    ReportRow,
    ShareRow,
    cost_report,
    format_report,
    format_shares,
    parse_month,
    usage_months,
    usage_report,
)
from tests.support.usage import usage_row

NS = "team-a"
H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
A100 = "NVIDIA-A100-SXM4-80GB"  # no budget has a price for it
PRICES = [
    {"gpuProduct": H100, "onDemandPerHour": 4.10, "spotPerHour": 1.64},
    {"gpuProduct": L4, "onDemandPerHour": 0.81},
]


def at(text: str) -> int:
    moment = timestamp(text)
    assert moment is not None
    return moment


def budget(
    name: str,
    *,
    limit: float,
    match_labels: dict[str, str] | None = None,
    zone: str | None = None,
    namespace: str = NS,
) -> CostBudget:
    spec: dict[str, Any] = {
        "currency": "EUR",
        "monthlyLimit": limit,
        "gpuPrices": PRICES,
        "selector": {"matchLabels": match_labels or {}},
    }
    if zone is not None:
        spec["businessHours"] = {"timezone": zone}
    return CostBudget.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    )


def run(
    uid: str,
    model: str,
    start: str,
    end: str,
    *,
    product: str = H100,
    capacity: Capacity = "on-demand",
    gpus: int = 1,
) -> Run:
    ended = at(end)
    return Run(
        uid,
        f"{model}-{uid}",
        model,
        product,
        capacity,
        gpus,
        at(start),
        ended,
        ended,
        labels(model),
    )


def labels(model: str) -> dict[str, str]:
    """The model's labels as the ledger recorded them when it ran (gemma's, since deleted)."""
    return MODELS[NS].get(model, {"team": "research"})


def deleted_pods_run() -> Run:
    """llama's first Pod, 2 H100s on demand, from 10:00; the operator last saw it at 13:30,
    then the Pod was gone: the ledger closes the run at 13:30, not at the next look."""
    opened = Run(
        "u1",
        "llama-1",
        "llama",
        H100,
        "on-demand",
        2,
        at("2026-12-01T10:00:00Z"),
        None,
        0,
        labels("llama"),
    )
    seen = merge({}, [opened], at("2026-12-01T13:30:00Z"))
    closed = merge(seen, [], at("2026-12-01T18:00:00Z"))["u1"]
    assert (closed.end, closed.seen) == (at("2026-12-01T13:30:00Z"),) * 2
    return closed


# The InferenceDeployments of the namespace; gemma was deleted, its runs stay in the ledger.
MODELS = {
    NS: {
        "llama": {"team": "search", "tier": "prod"},
        "mistral": {"team": "search"},
        "qwen": {"team": "support"},
    }
}
RUNS = [
    deleted_pods_run(),
    # llama, 1 H100 on a spot node, 5 hours.
    run("u2", "llama", "2026-12-02T00:00:00Z", "2026-12-02T05:00:00Z", capacity="spot"),
    # mistral, 2 L4s across New Year: 21:30Z to 01:00Z. December ends at 23:00Z in
    # Amsterdam (UTC+1) and at 00:00Z in UTC.
    run("u3", "mistral", "2026-12-31T21:30:00Z", "2027-01-01T01:00:00Z", product=L4, gpus=2),
    # mistral, 1 L4, half an hour: 0.81 / 2 = 0.405, half a cent.
    run("u4", "mistral", "2026-12-10T09:00:00Z", "2026-12-10T09:30:00Z", product=L4),
    # qwen, 1 A100 (no price), 10 hours.
    run("u5", "qwen", "2026-12-03T00:00:00Z", "2026-12-03T10:00:00Z", product=A100),
    # gemma, deleted since: 1 L4, 2 hours.
    run("u6", "gemma", "2026-12-05T00:00:00Z", "2026-12-05T02:00:00Z", product=L4),
    # llama in November: in no December.
    run("u7", "llama", "2026-11-10T00:00:00Z", "2026-11-10T08:00:00Z"),
]
LEDGER = {NS: {r.uid: r for r in RUNS}}
# The search team's budget in Amsterdam, and the namespace's budget in UTC (empty selector).
SEARCH = budget("search", limit=1000, match_labels={"team": "search"}, zone="Europe/Amsterdam")
EVERYTHING = budget("everything", limit=500)
NOW = at("2027-01-15T12:00:00Z")


def by_key(rows: list[ReportRow]) -> dict[tuple[str, str | None], ReportRow]:
    return {(r.budget, r.model): r for r in rows}


def december() -> dict[tuple[str, str | None], ReportRow]:
    return by_key(cost_report([SEARCH, EVERYTHING], MODELS, LEDGER, "2026-12", NOW))


def test_a_budget_in_amsterdam_prices_its_selected_models_to_the_cent() -> None:
    rows = december()
    assert [m for b, m in rows if b == "search"] == ["llama", "mistral", None]
    llama = rows["search", "llama"]
    # u1: 2 GPUs x 3.5 h (10:00-13:30) = 7 GPU-h x 4.10 = 28.70
    # u2: 1 GPU x 5 h on spot           = 5 GPU-h x 1.64 =  8.20
    assert (llama.gpu_hours, llama.amount) == (Decimal("12.00"), Decimal("36.90"))
    mistral = rows["search", "mistral"]
    # u3 in Amsterdam's December: 21:30Z-23:00Z = 1.5 h x 2 GPUs = 3 GPU-h x 0.81 = 2.43
    # u4: 0.5 GPU-h x 0.81 = 0.405; 2.43 + 0.405 = 2.835 -> 2.84 (half to even)
    assert (mistral.gpu_hours, mistral.amount) == (Decimal("3.50"), Decimal("2.84"))
    total = rows["search", None]
    # 36.90 + 2.835 = 39.735 -> 39.74; 39.735 / 1000 = 3.9735 % -> 4.0 %
    assert (total.gpu_hours, total.amount) == (Decimal("15.50"), Decimal("39.74"))
    assert (total.limit, total.percent, total.currency) == (
        Decimal("1000.00"),
        Decimal("4.0"),
        "EUR",
    )
    assert (total.month, total.timezone) == ("2026-12", "Europe/Amsterdam")
    assert all(r.complete and r.note == "" for b, r in rows.items() if b[0] == "search")


def test_an_empty_selector_takes_every_model_in_utc_and_names_what_has_no_price() -> None:
    rows = december()
    assert [m for b, m in rows if b == "everything"] == ["gemma", "llama", "mistral", "qwen", None]
    # gemma: 1 GPU x 2 h x 0.81 = 1.62; its InferenceDeployment is gone, its spend is not.
    gemma = rows["everything", "gemma"]
    assert (gemma.gpu_hours, gemma.amount, gemma.deleted) == (
        Decimal("2.00"),
        Decimal("1.62"),
        True,
    )
    assert "deleted" in gemma.note
    assert rows["everything", "llama"].amount == Decimal("36.90")
    mistral = rows["everything", "mistral"]
    # u3 in UTC's December: 21:30Z-00:00Z = 2.5 h x 2 GPUs = 5 GPU-h x 0.81 = 4.05
    # u4: 0.405; 4.05 + 0.405 = 4.455 -> 4.46 (half to even)
    assert (mistral.gpu_hours, mistral.amount) == (Decimal("5.50"), Decimal("4.46"))
    # qwen ran 10 GPU-h on an A100 without a price: hours shown, no amount, never 0.
    qwen = rows["everything", "qwen"]
    assert (qwen.gpu_hours, qwen.amount, qwen.unpriced) == (Decimal("10.00"), None, (A100,))
    assert not qwen.complete
    assert qwen.note == f"incomplete: no price for {A100} (the amount leaves those runs out)"
    total = rows["everything", None]
    # 1.62 + 36.90 + 4.455 = 42.975 -> 42.98 (what was priced); 2 + 12 + 5.5 + 10 = 29.5 GPU-h
    assert (total.gpu_hours, total.amount) == (Decimal("29.50"), Decimal("42.98"))
    # 42.975 / 500 = 8.595 % -> 8.6 %, at least: the A100 hours are not in it.
    assert (total.limit, total.percent) == (Decimal("500.00"), Decimal("8.6"))
    assert (total.complete, total.unpriced, total.timezone) == (False, (A100,), "UTC")


def test_a_model_selected_by_two_budgets_appears_under_each() -> None:
    prod = budget("prod", limit=100, match_labels={"tier": "prod"})
    rows = by_key(cost_report([SEARCH, EVERYTHING, prod], MODELS, LEDGER, "2026-12", NOW))
    assert {b for b, m in rows if m == "llama"} == {"search", "everything", "prod"}
    assert rows["prod", "llama"].amount == rows["prod", None].amount == Decimal("36.90")
    # 36.90 / 100 = 36.9 %
    assert rows["prod", None].percent == Decimal("36.9")


def test_january_of_amsterdam_holds_the_rest_of_the_new_year_run() -> None:
    rows = by_key(cost_report([SEARCH], MODELS, LEDGER, "2027-01", NOW))
    # u3 from 23:00Z to 01:00Z = 2 h x 2 GPUs = 4 GPU-h x 0.81 = 3.24
    assert rows["search", "mistral"].amount == Decimal("3.24")
    assert (rows["search", "llama"].gpu_hours, rows["search", "llama"].amount) == (
        Decimal("0.00"),
        Decimal("0.00"),
    )
    assert rows["search", None].month == "2027-01"


def test_without_a_month_each_budget_reports_the_current_month_of_its_zone() -> None:
    # 23:30Z on New Year's Eve: already January in Amsterdam, still December in UTC.
    rows = by_key(
        cost_report([SEARCH, EVERYTHING], MODELS, LEDGER, None, at("2026-12-31T23:30:00Z"))
    )
    assert rows["search", None].month == "2027-01"
    assert rows["everything", None].month == "2026-12"


def test_only_unpriced_runs_give_no_amount_and_a_namespace_without_ledger_is_not_measured() -> None:
    support = budget("support", limit=50, match_labels={"team": "support"})
    total = by_key(cost_report([support], MODELS, LEDGER, "2026-12", NOW))["support", None]
    assert (total.gpu_hours, total.amount, total.percent) == (Decimal("10.00"), None, None)
    # A run on a node without a product label is unpriced too, and named as such.
    blank = {"u8": run("u8", "qwen", "2026-12-04T00:00:00Z", "2026-12-04T01:00:00Z", product="")}
    qwen = by_key(cost_report([support], MODELS, {NS: blank}, "2026-12", NOW))["support", "qwen"]
    assert qwen.unpriced == (UNLABELLED_PRODUCT,)
    # No ledger at all: nothing was measured, which is not a spend of 0.
    rows = cost_report([support], MODELS, {}, "2026-12", NOW)
    assert [(r.model, r.gpu_hours, r.amount, r.measured) for r in rows] == [
        ("qwen", None, None, False),
        (None, None, None, False),
    ]
    assert "no GPU ledger" in rows[-1].note


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "26-12", "2026-1", "2026/12", "1969-12"])
def test_a_malformed_month_is_refused(text: str) -> None:
    with pytest.raises(ReportError):
        parse_month(text)
    with pytest.raises(ReportError):
        cost_report([SEARCH], MODELS, LEDGER, text, NOW)
    assert parse_month("2026-12") == (2026, 12)


def support_rows() -> list[ReportRow]:
    """Two small budgets: one complete, one whose only model has no price."""
    search = budget("search", limit=1000, match_labels={"team": "search"}, zone="Europe/Amsterdam")
    support = budget("support", limit=50, match_labels={"team": "support"})
    ledger = {NS: {r.uid: r for r in RUNS if r.uid in ("u2", "u5")}}
    models = {NS: {k: v for k, v in MODELS[NS].items() if k != "mistral"}}
    return cost_report([search, support], models, ledger, "2026-12", NOW)


def test_the_table_aligns_columns_and_marks_lower_bounds() -> None:
    assert format_report(support_rows(), "table") == "\n".join(
        [
            "NAMESPACE  BUDGET   MODEL    MONTH    GPU-HOURS    AMOUNT  CURRENCY    LIMIT"
            "   PERCENT  NOTE",
            "team-a     search   llama    2026-12       5.00      8.20  EUR",
            "team-a     search   (total)  2026-12       5.00      8.20  EUR       1000.00"
            "      0.8%",
            "team-a     support  qwen     2026-12      10.00  unpriced  EUR"
            f"                          incomplete: no price for {A100} (the amount leaves"
            " those runs out)",
            "team-a     support  (total)  2026-12      10.00  unpriced  EUR         50.00"
            f"  unpriced  incomplete: no price for {A100} (the amount leaves those runs out)",
        ]
    )
    # A partly priced amount is a lower bound: ">=".
    everything = [r for r in december().values() if r.budget == "everything"]
    last = format_report(everything, "table").splitlines()[-1]
    assert ">=42.98" in last and ">=8.6%" in last


def test_json_keeps_amounts_exact_as_strings() -> None:
    records = json.loads(format_report(support_rows(), "json"))
    assert records[1] == {
        "namespace": NS,
        "budget": "search",
        "row": "total",
        "model": None,
        "month": "2026-12",
        "timezone": "Europe/Amsterdam",
        "gpu_hours": "5.00",
        "amount": "8.20",
        "currency": "EUR",
        "limit": "1000.00",
        # 8.20 / 1000 = 0.82 % -> 0.8 %
        "percent": "0.8",
        "complete": True,
        "unpriced": [],
        "measured": True,
        "note": "",
    }
    assert records[2]["model"] == "qwen" and records[2]["amount"] is None
    assert (records[2]["complete"], records[2]["unpriced"]) == (False, [A100])
    assert [r["row"] for r in records] == ["model", "total", "model", "total"]


def test_csv_has_a_header_and_one_line_per_row() -> None:
    lines = format_report(support_rows(), "csv").splitlines()
    assert lines[0] == (
        "namespace,budget,row,model,month,timezone,gpu_hours,amount,currency,limit,percent,"
        "complete,unpriced,measured,note"
    )
    assert (
        lines[1] == "team-a,search,model,llama,2026-12,Europe/Amsterdam,5.00,8.20,EUR,,,true,,true,"
    )
    assert lines[2] == (
        "team-a,search,total,,2026-12,Europe/Amsterdam,5.00,8.20,EUR,1000.00,0.8,true,,true,"
    )
    assert lines[4] == (
        f"team-a,support,total,,2026-12,UTC,10.00,,EUR,50.00,,false,{A100},true,"
        f"incomplete: no price for {A100} (the amount leaves those runs out)"
    )
    assert len(lines) == 5


AMSTERDAM = "Europe/Amsterdam"


def usage_item(
    zone: str,
    subject: str,
    policy: str,
    model: str,
    requests: int,
    prompt: int,
    completion: int,
    month: str = "2026-12",
) -> dict[str, Any]:
    return usage_row(zone, month, subject, policy, model, requests, prompt, completion)


# Two gateway replicas' tallies: each counts in the budgets' zones (Amsterdam) and UTC.
ANSWERS = [
    usage.parse_answer(
        {
            "tally": "aa01",
            "usage": [
                usage_item(AMSTERDAM, "alice", "analysts", "mistral", 2, 100, 20),
                usage_item(AMSTERDAM, "bob", "analysts", "mistral", 1, 100, 20),
                usage_item(AMSTERDAM, "alice", "analysts", "llama", 1, 300, 100),
                usage_item("UTC", "alice", "analysts", "llama", 3, 120, 40),
            ],
        }
    ),
    usage.parse_answer(
        {
            "tally": "bb02",
            "usage": [
                usage_item(AMSTERDAM, "carol", "support", "mistral", 4, 90, 30),
                usage_item(AMSTERDAM, "bob", "support", "llama", 2, 150, 50),
                usage_item("UTC", "bob", "support", "qwen", 2, 10, 10),
                usage_item("UTC", "bob", "support", "llama", 1, 50, 30),
                # November: in no December.
                usage_item(AMSTERDAM, "dave", "support", "mistral", 9, 900, 300, "2026-11"),
            ],
        }
    ),
]
# The namespace's usage ledgers, one per month, as the operator stores them.
USAGE_DATA = {
    usage.usage_configmap(month): usage.merge(month, None, ANSWERS)
    for month in usage.answer_months(ANSWERS)
}
USAGE = {
    (NS, month): usage.load(USAGE_DATA[usage.usage_configmap(month)])
    for month in ("2026-11", "2026-12")
}


def shares(by: usage.Grouping, budgets: list[CostBudget] | None = None) -> list[ShareRow]:
    return usage_report(budgets or [SEARCH, EVERYTHING], MODELS, LEDGER, USAGE, by, "2026-12", NOW)


def test_by_subject_each_model_s_amount_is_shared_by_tokens_to_the_cent() -> None:
    assert format_shares(shares("subject", [SEARCH]), "subject", "table") == "\n".join(
        [
            "NAMESPACE  BUDGET  MODEL    SUBJECT  MONTH    REQUESTS  PROMPT-TOKENS"
            "  COMPLETION-TOKENS  AMOUNT  CURRENCY  NOTE",
            # llama 36.90 by tokens in Amsterdam's December: alice 400, bob 200.
            "team-a     search  llama    alice    2026-12         1            300"
            "                100   24.60  EUR",
            "team-a     search  llama    bob      2026-12         2            150"
            "                 50   12.30  EUR",
            "team-a     search  llama    (total)  2026-12         3            450"
            "                150   36.90  EUR",
            # mistral 2.84 in three equal parts: 0.9466...; the cent left goes to alice.
            "team-a     search  mistral  alice    2026-12         2            100"
            "                 20    0.95  EUR",
            "team-a     search  mistral  bob      2026-12         1            100"
            "                 20    0.95  EUR",
            "team-a     search  mistral  carol    2026-12         4             90"
            "                 30    0.94  EUR",
            "team-a     search  mistral  (total)  2026-12         7            290"
            "                 70    2.84  EUR",
            "team-a     search  (total)           2026-12        10            740"
            "                220   39.74  EUR",
        ]
    )


def test_by_policy_in_utc_unused_spend_is_its_own_row_and_unpriced_is_never_0() -> None:
    records = json.loads(format_shares(shares("policy", [EVERYTHING]), "policy", "json"))
    assert [(r["row"], r["model"], r["policy"], r["requests"], r["amount"]) for r in records] == [
        # gemma ran and nobody asked it anything: its 1.62 is nobody's share, yet shown.
        ("unused", "gemma", "(unused)", 0, "1.62"),
        ("model", "gemma", None, 0, "1.62"),
        # llama 36.90 by tokens in UTC's December: analysts 160, support 80.
        ("policy", "llama", "analysts", 3, "24.60"),
        ("policy", "llama", "support", 1, "12.30"),
        ("model", "llama", None, 4, "36.90"),
        ("unused", "mistral", "(unused)", 0, "4.46"),
        ("model", "mistral", None, 0, "4.46"),
        # qwen has no price: its use is shown, no amount.
        ("policy", "qwen", "support", 2, None),
        ("model", "qwen", None, 2, None),
        ("total", None, None, 6, "42.98"),
    ]
    assert records[2] == {
        "namespace": NS,
        "budget": "everything",
        "row": "policy",
        "model": "llama",
        "policy": "analysts",
        "month": "2026-12",
        "timezone": "UTC",
        "requests": 3,
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "amount": "24.60",
        "currency": "EUR",
        "complete": True,
        "unpriced": [],
        "measured": True,
        "note": "",
    }
    assert records[7]["unpriced"] == [A100] and records[7]["note"] == ""
    assert "incomplete" in records[-1]["note"]


@pytest.mark.parametrize("by", ["subject", "policy"])
def test_the_shares_of_every_model_add_up_to_its_amount_by_model(by: usage.Grouping) -> None:
    by_model = december()
    rows = shares(by)
    for (budget_name, model), row in by_model.items():
        if model is None or row.amount is None:
            continue
        parts = [
            s.amount
            for s in rows
            if s.model_row.budget == budget_name
            and s.model_row.model == model
            and s.kind in ("share", "unused")
        ]
        assert parts and sum(p for p in parts if p is not None) == row.amount


def test_without_a_usage_ledger_models_are_not_shared_out_and_say_so() -> None:
    rows = usage_report([SEARCH], MODELS, LEDGER, {}, "subject", "2026-12", NOW)
    assert [(r.kind, r.model_row.model, r.requests, r.amount) for r in rows] == [
        ("model", "llama", None, Decimal("36.90")),
        ("model", "mistral", None, Decimal("2.84")),
        ("total", None, None, Decimal("39.74")),
    ]
    assert "no usage ledger (ConfigMap privatellm-usage-ledger-2026-12)" in rows[0].note
    lines = format_shares(rows, "subject", "csv").splitlines()
    assert lines[0] == (
        "namespace,budget,row,model,subject,month,timezone,requests,prompt_tokens,"
        "completion_tokens,amount,currency,complete,unpriced,measured,note"
    )
    assert lines[1].startswith("team-a,search,model,llama,,2026-12,Europe/Amsterdam,,,,36.90,")
    assert format_shares(rows, "subject", "table").splitlines()[1].split()[5:8] == ["-"] * 3


def test_each_budget_s_month_is_shared_out_by_the_usage_ledger_of_that_month() -> None:
    # 23:30Z on New Year's Eve: January in Amsterdam (search), December in UTC (everything).
    new_year = at("2026-12-31T23:30:00Z")
    assert usage_months([SEARCH, EVERYTHING], None, new_year) == [(NS, "2026-12"), (NS, "2027-01")]
    assert usage_months([EVERYTHING, SEARCH], "2026-11", NOW) == [(NS, "2026-11")]
    # November is in November's ledger only: dave's use, none of December's.
    november = usage_report([SEARCH], MODELS, LEDGER, USAGE, "subject", "2026-11", NOW)
    assert [(r.kind, r.model_row.model, r.name, r.requests, r.amount) for r in november] == [
        ("unused", "llama", None, 0, Decimal("32.80")),
        ("model", "llama", None, 0, Decimal("32.80")),
        ("share", "mistral", "dave", 9, Decimal("0.00")),
        ("model", "mistral", None, 9, Decimal("0.00")),
        ("total", None, None, 9, Decimal("32.80")),
    ]
    # A month whose ledger is absent is not shared out, and says which ConfigMap it missed.
    january = usage_report([SEARCH], MODELS, LEDGER, USAGE, "subject", "2027-01", NOW)
    assert [r.requests for r in january] == [None, None, None]
    assert "(ConfigMap privatellm-usage-ledger-2027-01)" in january[0].note


def test_an_invalid_month_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["cost", "report", "--month", "2026-13"])
    assert exit_.value.code == 2
    assert "--month: month '2026-13' has no month 13" in capsys.readouterr().err


class FakeKube:
    """The objects `cost report` reads, served as the Kube client would."""

    def __init__(self) -> None:
        raw_budget = SEARCH.model_dump(by_alias=True, exclude_none=True)
        self.objects: dict[str, list[dict[str, Any]]] = {
            "CostBudget": [raw_budget],
            "InferenceDeployment": [
                {"metadata": {"name": n, "namespace": NS, "labels": labels}}
                for n, labels in MODELS[NS].items()
            ],
        }
        self.listed: list[tuple[str, str | None]] = []
        self.read: list[str] = []

    def list(self, kind: Any, namespace: str | None = None) -> list[dict[str, Any]]:
        self.listed.append((kind.kind, namespace))
        assert kind.path(namespace).endswith(kind.plural)
        return self.objects[kind.kind]

    def get(self, kind: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert (kind.kind, namespace) == ("ConfigMap", NS)
        self.read.append(name)
        data = {"privatellm-gpu-ledger": dump(LEDGER[NS]), **USAGE_DATA}
        return {"metadata": {"name": name}, "data": data[name]} if name in data else None


def test_the_command_reads_budgets_models_and_ledger_and_prints_csv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube()
    monkeypatch.setattr("privatellm.kube.client.new_api_client", lambda: None)
    monkeypatch.setattr("privatellm.kube.client.Kube", lambda api: kube)
    assert main(["cost", "report", "-A", "--month", "2026-12", "--format", "csv"]) == 0
    assert kube.listed == [("CostBudget", None), ("InferenceDeployment", NS)]
    # By model, the usage ledger is not read.
    assert kube.read == ["privatellm-gpu-ledger"]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[3] for line in lines[1:]] == ["llama", "mistral", ""]
    assert lines[-1].split(",")[7] == "39.74"


def test_the_command_by_subject_reads_the_usage_ledger_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube()
    monkeypatch.setattr("privatellm.kube.client.new_api_client", lambda: None)
    monkeypatch.setattr("privatellm.kube.client.Kube", lambda api: kube)
    argv = ["cost", "report", "-n", NS, "--by", "subject", "--month", "2026-12"]
    assert main([*argv, "--format", "json"]) == 0
    # The usage ledger of the month asked for only.
    assert kube.read == ["privatellm-gpu-ledger", "privatellm-usage-ledger-2026-12"]
    records = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["subject"], r["amount"]) for r in records if r["row"] == "subject"] == [
        ("llama", "alice", "24.60"),
        ("llama", "bob", "12.30"),
        ("mistral", "alice", "0.95"),
        ("mistral", "bob", "0.95"),
        ("mistral", "carol", "0.94"),
    ]
    assert main([*argv, "--by", "policy"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["NAMESPACE", "BUDGET", "MODEL", "POLICY", "MONTH"]
    # mistral by policy: analysts 240 tokens, support 120 of 2.84: 1.8933 and 0.9466.
    assert [line.split()[3:] for line in table if " mistral " in line] == [
        ["analysts", "2026-12", "3", "200", "40", "1.89", "EUR"],
        ["support", "2026-12", "4", "90", "30", "0.95", "EUR"],
        ["(total)", "2026-12", "7", "290", "70", "2.84", "EUR"],
    ]


def test_without_a_month_the_command_reads_the_ledger_of_each_budget_s_month(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube()
    kube.objects["CostBudget"].append(EVERYTHING.model_dump(by_alias=True, exclude_none=True))
    monkeypatch.setattr("privatellm.kube.client.new_api_client", lambda: None)
    monkeypatch.setattr("privatellm.kube.client.Kube", lambda api: kube)
    monkeypatch.setattr("time.time", lambda: float(at("2026-12-31T23:30:00Z")))
    assert main(["cost", "report", "-n", NS, "--by", "policy", "--format", "json"]) == 0
    assert kube.read == [
        "privatellm-gpu-ledger",
        "privatellm-usage-ledger-2026-12",
        "privatellm-usage-ledger-2027-01",
    ]
    records = json.loads(capsys.readouterr().out)
    # everything: UTC's December, shared out; search: Amsterdam's January, no ledger yet.
    assert {(r["budget"], r["month"]) for r in records} == {
        ("everything", "2026-12"),
        ("search", "2027-01"),
    }
    assert [r["policy"] for r in records if r["row"] == "policy"] == [
        "analysts",
        "support",
        "support",
    ]
    assert all(r["requests"] is None for r in records if r["budget"] == "search")


def test_a_ledger_of_the_month_that_does_not_load_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube()
    monkeypatch.setitem(USAGE_DATA, "privatellm-usage-ledger-2026-12", {"aa01": "{"})
    monkeypatch.setattr("privatellm.kube.client.new_api_client", lambda: None)
    monkeypatch.setattr("privatellm.kube.client.Kube", lambda api: kube)
    argv = ["cost", "report", "-n", NS, "--by", "subject", "--month", "2026-12"]
    assert main(argv) == 2
    assert (
        f"the usage ledger {NS}/privatellm-usage-ledger-2026-12 does not load: tally aa01: "
        in capsys.readouterr().err
    )


def test_a_budget_that_does_not_validate_is_named_and_the_exit_status_is_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube()
    stale = {"metadata": {"name": "stale", "namespace": NS}, "spec": {"currency": "euro"}}
    kube.objects["CostBudget"].append(stale)
    monkeypatch.setattr("privatellm.kube.client.new_api_client", lambda: None)
    monkeypatch.setattr("privatellm.kube.client.Kube", lambda api: kube)
    assert main(["cost", "report", "-n", NS, "--month", "2026-12", "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert f"skipped CostBudget {NS}/stale" in captured.err
    assert [r["budget"] for r in json.loads(captured.out)] == ["search"] * 3
