"""Pure detectors and transforms shared by the gateway, the connector sidecars and `privatellm filter`."""
