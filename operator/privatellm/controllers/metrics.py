"""Prometheus metrics of the operator: how long reconciles take and what they write."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Fine buckets at the low end: a reconcile of an unchanged object is a few reads.
RECONCILE_SECONDS = Histogram(
    "privatellm_reconcile_duration_seconds",
    "Time to reconcile one object, from dequeue to status written.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30),
)
RECONCILES = Counter("privatellm_reconciles_total", "Reconciles by outcome.", ["kind", "result"])
QUEUE_DEPTH = Gauge(
    "privatellm_work_queue_depth", "Keys waiting to be reconciled, per controller.", ["kind"]
)
# The autoscaler: what it saw and what it decided, per model.
DEMAND_REQUESTS = Gauge(
    "privatellm_autoscaler_demand_requests",
    "Requests in flight and held at the namespace's gateways, per model.",
    ["namespace", "model"],
)
DESIRED_REPLICAS = Gauge(
    "privatellm_autoscaler_desired_replicas",
    "Replicas the autoscaler asks for, per model.",
    ["namespace", "model"],
)
SCALING_DECISIONS = Counter(
    "privatellm_autoscaler_decisions_total",
    "Decisions that changed a model's replica count, by reason.",
    ["reason"],
)
# CostBudgets: spend against the limit, and the actions in force (alert-ready: an alert
# rule on privatellm_budget_action_active == 1 fires with the budget's own threshold).
BUDGET_SPENT_RATIO = Gauge(
    "privatellm_budget_spent_ratio",
    "Spend this month over the monthly limit, per CostBudget.",
    ["namespace", "budget"],
)
BUDGET_ACTION_ACTIVE = Gauge(
    "privatellm_budget_action_active",
    "1 while a threshold action is in force, per CostBudget and action.",
    ["namespace", "budget", "action"],
)
