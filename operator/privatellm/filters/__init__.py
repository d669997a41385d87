"""Pure detectors and transforms shared by the gateway, connector sidecars and the filter CLI."""
