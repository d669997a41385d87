"""CostBudget: spend limits, GPU prices and schedules for a set of models (layer 2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field

from .base import (
    DURATION,
    MAX_DNS_LABEL,
    MAX_LIST,
    ApiModel,
    CommonStatus,
    CRDInfo,
    PrinterColumn,
    Resource,
    Rule,
    SubdomainName,
    age_column,
    cel,
    map_list,
    ready_column,
    set_list,
)

HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# The shape of an IANA zone name. Every name in the tz database starts with a capital;
# the other files a tz directory may hold (localtime, posixrules, posix/..., right/...)
# do not, and what they mean depends on the host that reads them.
IANA_ZONE_NAME = r"^[A-Z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
# CEL has no list of zones, but getHours(zone) loads the zone from the API server's tz
# database and fails on an unknown one; the API server then refuses the object with that
# error ahead of the message. "Local" would load the API server's own zone, as for CronJobs.
TIME_ZONE_RULE = Rule(
    f"self.matches(r'{IANA_ZONE_NAME}') && self != 'Local'"
    " && timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0",
    "timezone must be an IANA time zone name such as Europe/Amsterdam or UTC",
)
# Bounds that keep every amount finite and exact to the cent, also in currencies whose
# unit is worth little (IDR, VND).
MAX_MONTHLY_LIMIT = 1e12
MAX_PRICE_PER_HOUR = 1e9

# Kubernetes' label rules (k8s.io/apimachinery/pkg/util/validation), through the CEL
# format library that applies them.
LabelValue = Annotated[
    str,
    Field(
        max_length=MAX_DNS_LABEL,
        json_schema_extra=cel(
            Rule(
                "!format.labelValue().validate(self).hasValue()",
                "a label value must be empty or letters, digits, '-', '_' and '.',"
                " starting and ending with a letter or digit",
            )
        ),
    ),
]
LABEL_KEYS_RULE = Rule(
    "self.all(k, !format.qualifiedName().validate(k).hasValue())",
    "each key must be a label key: an optional DNS subdomain prefix and '/', then at most"
    " 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
)


def _working_week() -> list[Weekday]:
    return ["Mon", "Tue", "Wed", "Thu", "Fri"]


class LabelSelector(ApiModel):
    """Selects InferenceDeployments by label."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Labels an InferenceDeployment must carry.",
        max_length=MAX_LIST,
        json_schema_extra=cel(LABEL_KEYS_RULE),
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with `labels` is selected; an empty selector selects all."""
        return self.match_labels.items() <= labels.items()


class GPUPrice(ApiModel):
    """Price of one GPU-hour of a GPU type."""

    gpu_product: str = Field(
        description="GPU product, as in the nvidia.com/gpu.product node label.",
        min_length=1,
        max_length=128,
    )
    on_demand_per_hour: float = Field(
        description="Price per GPU-hour on demand.", gt=0, le=MAX_PRICE_PER_HOUR
    )
    spot_per_hour: float | None = Field(
        default=None, description="Price per GPU-hour on spot.", gt=0, le=MAX_PRICE_PER_HOUR
    )

    cel_rules = (
        Rule(
            "!has(self.spotPerHour) || self.spotPerHour <= self.onDemandPerHour",
            "spotPerHour must not exceed onDemandPerHour",
            field_path=".spotPerHour",
        ),
    )


class BusinessHours(ApiModel):
    """When people work; outside these hours models scale down."""

    timezone: str = Field(
        default="UTC",
        description="IANA time zone, e.g. Europe/Amsterdam.",
        min_length=1,
        max_length=64,
        json_schema_extra=cel(TIME_ZONE_RULE),
    )
    days: list[Weekday] = Field(
        default_factory=_working_week,
        description="Working days.",
        min_length=1,
        max_length=7,
        json_schema_extra=set_list(),
    )
    start: str = Field(
        default="08:00",
        description="Start of the working day (HH:MM).",
        pattern=HHMM,
        max_length=5,
    )
    end: str = Field(
        default="18:00", description="End of the working day (HH:MM).", pattern=HHMM, max_length=5
    )
    off_hours_max_replicas: int = Field(
        default=1,
        description=(
            "Replica ceiling outside business hours for every deployment in scope, with or"
            " without spec.autoscaling (0: off until the next working day starts)."
        ),
        ge=0,
        le=1000,
    )

    cel_rules = (
        Rule("self.start < self.end", "start must be earlier than end", field_path=".start"),
    )


class Throttle(ApiModel):
    """How the gateway lowers quotas at a throttle threshold, and who is spared."""

    quota_percent: int = Field(
        default=25,
        description="Percent of each AccessPolicy quota a subject keeps while throttled.",
        ge=1,
        le=100,
    )
    requests_per_minute: int = Field(
        default=10,
        description=(
            "Requests per minute a throttled subject whose AccessPolicy sets no"
            " requestsPerMinute is held to."
        ),
        ge=1,
        le=1_000_000,
    )
    priority_groups: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        description="Groups (as the gateway authenticates them) whose members keep their quotas.",
        max_length=16,
        json_schema_extra=set_list(),
    )
    priority_policies: list[SubdomainName] = Field(
        default_factory=list,
        description="AccessPolicies whose subjects keep their quotas.",
        max_length=16,
        json_schema_extra=set_list(),
    )


class ThresholdAction(ApiModel):
    """What happens when spend reaches a percentage of the limit."""

    percent: int = Field(description="Percentage of the monthly limit.", ge=1, le=1000)
    action: Literal["alert", "throttle", "scaleDown", "block"] = Field(
        description="alert, throttle new requests, scale down to the minimum, or block."
    )


class CostBudgetSpec(ApiModel):
    """A monthly budget for the selected models."""

    selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="InferenceDeployments the budget covers; empty selects all in the namespace.",
    )
    currency: str = Field(
        description="ISO 4217 currency code.", pattern=r"^[A-Z]{3}$", max_length=3
    )
    monthly_limit: float = Field(
        description="Spend limit per calendar month.", gt=0, le=MAX_MONTHLY_LIMIT
    )
    gpu_prices: list[GPUPrice] = Field(
        description="Prices per GPU type.",
        min_length=1,
        max_length=32,
        json_schema_extra=map_list("gpuProduct"),
    )
    business_hours: BusinessHours | None = Field(
        default=None, description="Schedule for off-hours scale-down."
    )
    idle_timeout: str | None = Field(
        default=None,
        description=(
            "Scale a deployment in scope to zero after this long without demand, whatever"
            " its minReplicas; acts through the autoscaler, so on deployments with"
            " spec.autoscaling that the operator scales (not KEDA)."
        ),
        pattern=DURATION,
        max_length=32,
    )
    thresholds: list[ThresholdAction] = Field(
        default_factory=list,
        description="Actions at spend thresholds.",
        max_length=16,
        json_schema_extra=map_list("percent"),
    )
    throttle: Throttle = Field(
        default_factory=Throttle,
        description="What a throttle threshold does at the gateway, and who is spared.",
    )
    break_glass_groups: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        description=(
            "Groups (as the gateway authenticates them) whose members are still served"
            " while a block threshold refuses everyone else."
        ),
        max_length=16,
        json_schema_extra=set_list(),
    )

    @property
    def time_zone(self) -> str:
        """The zone whose calendar months the budget counts: businessHours', else UTC."""
        return self.business_hours.timezone if self.business_hours else "UTC"


class CostBudgetStatus(CommonStatus):
    """Observed spend. Each amount is absent until spend accounting measures it: a 0
    nobody measured would read as a budget untouched."""

    month: str | None = Field(
        default=None,
        description="The calendar month the figures are for (YYYY-MM, in the budget's time zone).",
    )
    models: list[str] = Field(
        default_factory=list,
        description=(
            "InferenceDeployments in scope. A deployment several budgets select counts in"
            " full in each of them."
        ),
    )
    spent_this_month: float | None = Field(
        default=None,
        description=(
            "Spend so far this month from the serving Pods' GPU time, to the cent; of the"
            " priced GPUs only when spendComplete is false."
        ),
        ge=0,
    )
    spend_complete: bool | None = Field(
        default=None,
        description="False while a GPU product in scope has no price: spend is then a floor.",
    )
    unpriced_gpu_products: list[str] = Field(
        default_factory=list, description="GPU products in scope without a price in gpuPrices."
    )
    percent_of_limit: float | None = Field(
        default=None, description="spentThisMonth as a percentage of monthlyLimit.", ge=0
    )
    gpu_hours_this_month: float | None = Field(
        default=None, description="GPU-hours this month of the deployments in scope.", ge=0
    )
    forecast_this_month: float | None = Field(
        default=None,
        description="Projected spend for the month: spent, plus what runs now until its end.",
        ge=0,
    )
    requests_this_month: int | None = Field(
        default=None,
        description="Requests the gateways served this month for the models in scope.",
        ge=0,
    )
    tokens_this_month: int | None = Field(
        default=None,
        description="Prompt plus completion tokens of those requests.",
        ge=0,
    )
    active_users: int | None = Field(
        default=None, description="Distinct subjects served this month.", ge=0
    )
    cost_per_active_user: float | None = Field(
        default=None, description="Spend divided by active users.", ge=0
    )
    cost_per_million_tokens: float | None = Field(
        default=None, description="Spend per million tokens served.", ge=0
    )
    idle_gpu_share: float | None = Field(
        default=None,
        description=(
            "Share of this month's GPU time in which a replica had no request in flight, as"
            " the gateways saw it (at least this much: their busy times are summed)."
        ),
        ge=0,
        le=1,
    )
    active_action: str | None = Field(
        default=None, description="Strictest threshold action in force."
    )
    off_hours: bool | None = Field(
        default=None,
        description=(
            "Outside businessHours now: deployments in scope run at most offHoursMaxReplicas."
        ),
    )
    stricter_elsewhere: list[str] = Field(
        default_factory=list,
        description=(
            "Models in scope that another CostBudget holds to a stricter action; the"
            " strictest of the budgets covering a model acts."
        ),
    )


class CostBudget(Resource):
    """Budget, prices and schedules that drive cost-aware scaling."""

    crd_info = CRDInfo(
        kind="CostBudget",
        plural="costbudgets",
        short_names=("cb", "llmbudget"),
        printer_columns=(
            ready_column(),
            # Why a budget is not Ready (actions not enforced, an unpriced GPU): Ready alone
            # would only say False.
            PrinterColumn(
                "Reason",
                '.status.conditions[?(@.type=="Ready")].reason',
                description="Why the budget is or is not ready.",
            ),
            PrinterColumn("Spent", ".status.spentThisMonth", type="number"),
            PrinterColumn("Limit", ".spec.monthlyLimit", type="number"),
            PrinterColumn("Percent", ".status.percentOfLimit", type="number"),
            PrinterColumn("Currency", ".spec.currency"),
            age_column(),
        ),
    )

    kind: str = "CostBudget"
    spec: CostBudgetSpec = Field(description="Desired state.")
    status: CostBudgetStatus | None = Field(default=None, description="Observed state.")
