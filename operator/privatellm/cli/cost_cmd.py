"""`privatellm cost report`: GPU spend of each CostBudget's models in a month, from the ledger,
per model or shared out per subject or AccessPolicy by the usage ledger.

The report itself is privatellm.cost.report; this reads the budgets, the models and the
ledgers from the cluster and prints it.

Exit codes: 0 the report was printed, 1 it was printed without a budget that could not
be read, 2 on usage errors or when the cluster could not be read.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from privatellm.api import CostBudget
from privatellm.cost.ledger import LEDGER_CONFIGMAP, Run
from privatellm.cost.report import (
    FORMATS,
    ReportError,
    cost_report,
    format_report,
    format_shares,
    parse_month,
    usage_months,
    usage_report,
)
from privatellm.cost.usage import UsageRow, usage_configmap
from privatellm.cost.usage import load as load_usage

if TYPE_CHECKING:
    from privatellm.kube.client import Kube

GROUPINGS = ("model", "subject", "policy")


def month_argument(text: str) -> str:
    """argparse's check of --month: a usage error for anything but a valid YYYY-MM."""
    try:
        parse_month(text)
    except ReportError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_cost_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cost = commands.add_parser("cost", help="GPU spend of CostBudgets, from the GPU ledger")
    actions = cost.add_subparsers(dest="cost_command", required=True)
    report = actions.add_parser(
        "report",
        help="GPU-hours and spend of each CostBudget's models in a month",
        description="GPU-hours and spend of each CostBudget's models in a calendar month "
        "of the budget's time zone (spec.businessHours.timezone; UTC without it), priced "
        "with its spec.gpuPrices, and a total per budget with its limit and the percent of "
        "it spent. An InferenceDeployment that several budgets select appears under each "
        "of them, so the totals of a namespace's budgets may count it more than once. A run "
        "on a GPU product without a price makes its rows incomplete: they name the product "
        "and their amount is what the priced runs cost (at least that much). By subject or "
        "policy, each model's amount is shared out in proportion to the tokens (else the "
        "requests) each subject or AccessPolicy used on it, as the gateways counted them in "
        "the usage ledger of that month, to the cent: the shares add up to the model's "
        "amount exactly.",
    )
    scope = report.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default="default", help="the namespace to report")
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace with a CostBudget"
    )
    report.add_argument(
        "--by",
        choices=GROUPINGS,
        default="model",
        help="rows per model, or each model's amount shared out per subject or per "
        "AccessPolicy by the usage the gateways counted",
    )
    report.add_argument(
        "--month",
        type=month_argument,
        default=None,
        metavar="YYYY-MM",
        help="the month in each budget's time zone (default: its current month)",
    )
    report.add_argument("--format", choices=FORMATS, default="table")


@dataclass
class ClusterView:
    """What the report reads from the cluster, and the budgets it could not read."""

    budgets: list[CostBudget]
    models_labels: dict[str, dict[str, dict[str, str]]]
    ledger_runs: dict[str, dict[str, Run]]
    unreadable: list[str]
    # By (namespace, month): the usage ledger of that month, where there is one.
    usage_rows: dict[tuple[str, str], list[UsageRow]]


def read_cluster(kube: Kube, namespace: str | None, first_month: str) -> ClusterView:
    """CostBudgets of `namespace` (None: every namespace), then the InferenceDeployments
    and the GPU ledger of each namespace that has one, with its archives of `first_month`
    (YYYY-MM) and after. Raises ReportError for a ledger that does not load or an archive
    that is missing: a report never presents part of the spend as the whole."""
    from privatellm.controllers.ledger import read_runs
    from privatellm.kube.client import KINDS

    view = ClusterView([], {}, {}, [], {})
    for raw in kube.list(KINDS["CostBudget"], namespace):
        meta = raw.get("metadata") or {}
        try:
            view.budgets.append(CostBudget.model_validate(raw))
        except ValidationError as error:
            where = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            view.unreadable.append(f"CostBudget {where}: {error.error_count()} invalid field(s)")
    for space in sorted({b.metadata.namespace or "" for b in view.budgets}):
        view.models_labels[space] = {
            o["metadata"]["name"]: dict(o["metadata"].get("labels") or {})
            for o in kube.list(KINDS["InferenceDeployment"], space)
        }
        try:
            runs, missing = read_runs(kube, space, first_month)
        except (ValueError, TypeError) as error:
            raise ReportError(
                f"the GPU ledger {space}/{LEDGER_CONFIGMAP} does not load: {error}"
            ) from None
        if missing:
            raise ReportError(f"the GPU ledger archives {space}/{', '.join(missing)} are missing")
        if runs:
            view.ledger_runs[space] = runs
    return view


def read_usage(kube: Kube, view: ClusterView, month_label: str | None, now: int) -> None:
    """Into `view`, the usage ledger of each budget's month (one ConfigMap per namespace
    and month), where there is one. Raises ReportError for one that does not load."""
    from privatellm.kube.client import KINDS

    for space, month in usage_months(view.budgets, month_label, now):
        name = usage_configmap(month)
        tallies = kube.get(KINDS["ConfigMap"], space, name)
        if tallies is None:
            continue
        try:
            view.usage_rows[space, month] = load_usage(tallies.get("data"))
        except ValueError as error:
            raise ReportError(f"the usage ledger {space}/{name} does not load: {error}") from None


def run_cost(args: argparse.Namespace) -> int:
    """Print the report; exit 2 when the cluster cannot be read."""
    failed = f"privatellm cost {args.cost_command}:"
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    from privatellm.kube.client import ApiError, InvalidObjectNameError, Kube, new_api_client

    namespace = None if args.all_namespaces else args.namespace
    try:
        kube = Kube(new_api_client())
        moment = int(time.time())
        # Without --month each budget's own month: a zone behind UTC may still be in the
        # month before UTC's.
        earliest = datetime.datetime.fromtimestamp(moment - 86_400, datetime.UTC)
        view = read_cluster(kube, namespace, args.month or f"{earliest:%Y-%m}")
        if args.by == "model":
            rows = cost_report(
                view.budgets, view.models_labels, view.ledger_runs, args.month, moment
            )
            text = format_report(rows, args.format)
        else:
            read_usage(kube, view, args.month, moment)
            shares = usage_report(
                view.budgets,
                view.models_labels,
                view.ledger_runs,
                view.usage_rows,
                args.by,
                args.month,
                moment,
            )
            text = format_shares(shares, args.by, args.format)
    except (
        ApiError,
        ReportError,
        InvalidObjectNameError,
        ConfigException,
        HTTPError,
        OSError,
    ) as e:
        print(f"{failed} {e}", file=sys.stderr)
        return 2
    for problem in view.unreadable:
        print(f"{failed} skipped {problem}", file=sys.stderr)
    if not view.budgets and args.format == "table":
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"no CostBudget in {where}", file=sys.stderr)
        return 1 if view.unreadable else 0
    print(text)
    return 1 if view.unreadable else 0
