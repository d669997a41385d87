"""Connectors: the filter sidecar's item inspection and decisions, beside each DataConnector."""
