"""The data plane: authentication, AccessPolicy, filters, metering, routing and the proxy to vLLM."""
