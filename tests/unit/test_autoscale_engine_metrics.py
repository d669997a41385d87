"""vLLM's metrics page read into an engine report: the figures, the older name, malformed pages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privatellm.autoscale import (
    EngineReport,
    GatewayReport,
    MetricsError,
    aggregate_demand,
    engine_report_problem,
    read_engine_metrics,
)
from tests.support.fake_openai import GPU_CACHE_USAGE, vllm_metrics_text

SOURCE = "https://10.0.0.7:8000"


def test_the_three_gauges_are_read_among_everything_else_vllm_reports() -> None:
    report = read_engine_metrics(SOURCE, vllm_metrics_text("llama", 7, 2, 0.83))
    assert report == EngineReport(SOURCE, running=7, waiting=2, kv_cache_usage=0.83)
    assert engine_report_problem(report) is None


def test_the_kv_cache_fraction_under_its_older_name_is_read_too() -> None:
    page = vllm_metrics_text("llama", 1, 0, 0.25, kv_cache_name=GPU_CACHE_USAGE)
    assert read_engine_metrics(SOURCE, page).kv_cache_usage == 0.25


def test_where_both_names_are_shown_the_current_one_counts() -> None:
    page = vllm_metrics_text("llama", 1, 0, 0.6) + (
        f'{GPU_CACHE_USAGE}{{engine="0",model_name="llama"}} 0.1\n'
    )
    assert read_engine_metrics(SOURCE, page).kv_cache_usage == 0.6


@pytest.mark.parametrize(
    ("page", "reason"),
    [
        ("<html>Not Found</html>", "not Prometheus text"),
        ("vllm:num_requests_running{engine=0} 1\n", "not Prometheus text"),
        ("vllm:num_requests_running many\n", "not Prometheus text"),
        ("", "vllm:num_requests_running is missing"),
        (
            vllm_metrics_text("llama", 1, 0, 0.5).replace("vllm:num_requests_waiting", "other"),
            "vllm:num_requests_waiting is missing",
        ),
        (
            vllm_metrics_text("llama", 1, 0, 0.5).replace("vllm:kv_cache_usage_perc", "other"),
            "vllm:kv_cache_usage_perc is missing",
        ),
        (
            vllm_metrics_text("llama", 1, 0, 0.5)
            + 'vllm:num_requests_running{engine="1",model_name="llama"} 4\n',
            "vllm:num_requests_running is given 2 times",
        ),
    ],
)
def test_a_page_that_is_not_one_engines_figures_is_refused_with_the_reason(
    page: str, reason: str
) -> None:
    with pytest.raises(MetricsError) as refused:
        read_engine_metrics(SOURCE, page)
    assert str(refused.value).startswith(f"{SOURCE}: ")
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("running", "waiting", "kv", "problem"),
    [
        (-1, 0, 0.5, "numRequestsRunning is not a finite number >= 0"),
        ("NaN", 0, 0.5, "numRequestsRunning is not a finite number >= 0"),
        (1.5, 0, 0.5, "numRequestsRunning is not a whole number"),
        (1, "+Inf", 0.5, "numRequestsWaiting is not a finite number >= 0"),
        (1, 0, 42.0, "kvCacheUsagePerc is beyond any real reporter"),
    ],
)
def test_absurd_figures_parse_and_are_then_refused_by_the_decision(
    running: float | str, waiting: float | str, kv: float | str, problem: str
) -> None:
    page = vllm_metrics_text("llama", running, waiting, kv)
    report = read_engine_metrics(SOURCE, page)
    demand = aggregate_demand([GatewayReport("gw-0", 1, 0, 0, 0, 0.0, 0.0)], [report])
    assert demand.engines == 0 and demand.kv_cache_usage is None
    [refusal] = demand.refused
    assert refusal.startswith(SOURCE) and problem in refusal


PROMETHEUS_ALPHABET = 'vlm:_nuqestrigkcpf{}="\\, #\n\t0123456789.+-eENaI'


@given(st.text(max_size=300) | st.text(PROMETHEUS_ALPHABET, max_size=300))
def test_any_text_after_a_good_page_gives_a_report_or_a_metrics_error(garbage: str) -> None:
    try:
        report = read_engine_metrics(SOURCE, vllm_metrics_text("llama", 1, 0, 0.5) + garbage)
    except MetricsError as refused:
        assert str(refused).startswith(SOURCE)
    else:
        assert report.source == SOURCE
