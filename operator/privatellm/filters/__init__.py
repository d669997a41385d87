"""Pure detectors and transforms: the gateway, the connector sidecars, `privatellm filter`."""

from .detectors import DATA_CLASS_OF
from .pipeline import (
    FilterResult,
    Finding,
    InboundPipeline,
    OutboundPipeline,
    OutboundStream,
)

__all__ = [
    "DATA_CLASS_OF",
    "FilterResult",
    "Finding",
    "InboundPipeline",
    "OutboundPipeline",
    "OutboundStream",
]
