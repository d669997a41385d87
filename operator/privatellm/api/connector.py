"""DataConnector: an external system whose items pass filters in and out (layers 3, 6)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .access import DataClassName, FilterAction, PIIRule
from .base import (
    MAX_DNS_SUBDOMAIN,
    MAX_LIST,
    MAX_NAME,
    MAX_TEXT,
    ApiModel,
    CommonStatus,
    CRDInfo,
    InferenceDeploymentName,
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

# A connector's Pods run as the ServiceAccount privatellm-connector-<name>
# (render.gateway.connector_service_account), and a ServiceAccount name is a DNS subdomain.
MAX_DATA_CONNECTOR_NAME = MAX_DNS_SUBDOMAIN - len("privatellm-connector-")
# type/subtype, each at most 127 characters (RFC 6838).
MimeType = Annotated[str, Field(min_length=1, max_length=255)]


class EgressEndpoint(ApiModel):
    """A destination the connector may reach; everything else is denied."""

    host: str | None = Field(
        default=None, description="DNS name of the destination.", max_length=MAX_NAME
    )
    cidr: str | None = Field(
        default=None,
        description="IP block of the destination, e.g. 10.20.0.0/16; /32 or /128 for one address.",
        max_length=64,
        json_schema_extra=cel(
            Rule(
                "isCIDR(self)",
                "cidr must be an IPv4 or IPv6 block such as 10.20.0.0/16 or fd00::/64",
            ),
            # 10.0.0.1/8 is a typo for 10.0.0.1/32 or 10.0.0.0/8; read as the latter it
            # would open the egress allow-list to 16 million addresses nobody declared.
            Rule(
                "!isCIDR(self) || cidr(self).masked() == cidr(self)",
                "cidr must start at its block's network address (10.20.0.0/16, not"
                " 10.20.0.1/16); use /32 or /128 for one address",
            ),
            # An allow-list entry that covers the internet is no allow-list: 0.0.0.0/0
            # or ::/0 would let a compromised connector send its items anywhere.
            Rule(
                "!isCIDR(self) || (cidr(self).ip().family() == 4"
                " ? cidr(self).prefixLength() >= 8 : cidr(self).prefixLength() >= 32)",
                "cidr must not be wider than /8 (IPv4) or /32 (IPv6): 0.0.0.0/0 or ::/0"
                " would open the connector to the whole internet; list its destinations",
            ),
        ),
    )
    ports: list[int] = Field(
        description="TCP ports.", min_length=1, max_length=16, json_schema_extra=set_list()
    )

    cel_rules = (
        Rule(
            "has(self.host) != has(self.cidr)",
            "set exactly one of host or cidr",
            reason="FieldValueInvalid",
        ),
        Rule(
            "self.ports.all(p, p >= 1 && p <= 65535)",
            "ports must be between 1 and 65535",
            field_path=".ports",
        ),
    )


class ConnectorFilters(ApiModel):
    """Filters every item passes in the connector's sidecar."""

    allowed_file_types: list[MimeType] = Field(
        default_factory=list,
        description="MIME types accepted inbound, checked on content, not on the file name.",
        max_length=MAX_LIST,
        json_schema_extra=set_list(),
    )
    max_item_bytes: int = Field(
        default=10 * 1024 * 1024, description="Largest item accepted.", ge=1, le=1024 * 1024 * 1024
    )
    pii: list[PIIRule] = Field(
        default_factory=list,
        description="Per-entity actions.",
        max_length=32,
        json_schema_extra=map_list("entity"),
    )
    injection: Literal["off", "flag", "block"] = Field(
        default="block", description="What to do when injection heuristics match an item."
    )
    customer_id_field: str | None = Field(
        default=None,
        description="Item field naming the customer; items mixing customers are blocked.",
        max_length=128,
    )
    dlp_action: FilterAction = Field(
        default="block", description="Action on protected entities and internal terms outbound."
    )


class DataConnectorSpec(ApiModel):
    """An external system connected to the models through filters."""

    type: Literal["mail", "crm", "documentStore", "webhook", "objectStore", "database"] = Field(
        description="Kind of external system."
    )
    direction: Literal["inbound", "outbound", "both"] = Field(
        description="inbound: items flow to the models; outbound: results flow to the system."
    )
    endpoint: str = Field(
        description="URL of the external system.",
        min_length=1,
        max_length=1024,
        pattern=r"^[a-z][a-z0-9+.-]*://",
    )
    credentials_secret: SubdomainName | None = Field(
        default=None, description="Secret with the system's credentials."
    )
    image: str | None = Field(
        default=None,
        description="Connector container image; the filter sidecar is added to it.",
        max_length=512,
    )
    models: list[InferenceDeploymentName] = Field(
        default_factory=list,
        description="InferenceDeployments the connector sends items to.",
        max_length=MAX_LIST,
        json_schema_extra=set_list(),
    )
    data_classes: list[DataClassName] = Field(
        default_factory=list,
        description="Data classes the connector's items carry; an AccessPolicy must allow them.",
        max_length=32,
        json_schema_extra=set_list(),
    )
    filters: ConnectorFilters = Field(
        default_factory=ConnectorFilters, description="Filters in the sidecar."
    )
    egress: list[EgressEndpoint] = Field(
        default_factory=list,
        description="Destinations the connector may reach besides the gateway.",
        max_length=MAX_LIST,
    )

    cel_rules = (
        Rule(
            "self.direction == 'inbound' || (has(self.egress) && size(self.egress) > 0)",
            "egress must list the destination when direction is outbound or both",
            field_path=".egress",
            reason="FieldValueRequired",
        ),
    )


class ConnectorError(ApiModel):
    """The latest error a connector's filter sidecar reported."""

    time: str = Field(
        description="When it happened (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    reason: str = Field(description="Machine-readable CamelCase reason.", max_length=128)
    message: str = Field(default="", description="Human-readable explanation.", max_length=MAX_TEXT)


class DataConnectorStatus(CommonStatus):
    """Observed state of a DataConnector.

    The counters are the sums of what the connector's filter sidecars report; a sidecar
    keeps its counts on its state volume, which lives as long as its Pod.
    """

    items_passed: int = Field(default=0, description="Items that passed the filters.", ge=0)
    items_blocked: int = Field(default=0, description="Items the filters blocked.", ge=0)
    items_quarantined: int = Field(
        default=0, description="Items the filters held back for review.", ge=0
    )
    last_error: ConnectorError | None = Field(
        default=None, description="The latest error a filter sidecar reported."
    )


class DataConnector(Resource):
    """A filtered connection between an external system and the models."""

    crd_info = CRDInfo(
        kind="DataConnector",
        plural="dataconnectors",
        short_names=("dc", "llmconn"),
        printer_columns=(
            ready_column(),
            PrinterColumn("Type", ".spec.type"),
            PrinterColumn("Direction", ".spec.direction"),
            PrinterColumn("Passed", ".status.itemsPassed", type="integer"),
            PrinterColumn("Blocked", ".status.itemsBlocked", type="integer"),
            PrinterColumn("Quarantined", ".status.itemsQuarantined", type="integer"),
            age_column(),
        ),
        root_rules=(
            # A name cannot change, so this judges it on create only.
            Rule(
                f"oldSelf.hasValue() || size(self.metadata.name) <= {MAX_DATA_CONNECTOR_NAME}",
                f"metadata.name must be at most {MAX_DATA_CONNECTOR_NAME} characters: the"
                " connector's Pods run as the ServiceAccount privatellm-connector-<name>, and a"
                f" ServiceAccount name must be at most {MAX_DNS_SUBDOMAIN} characters",
                optional_old_self=True,
            ),
        ),
    )

    kind: str = "DataConnector"
    spec: DataConnectorSpec = Field(description="Desired state.")
    status: DataConnectorStatus | None = Field(default=None, description="Observed state.")
