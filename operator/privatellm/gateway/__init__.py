"""The data plane: authentication, AccessPolicy, filters, metering, routing, proxy to vLLM."""
