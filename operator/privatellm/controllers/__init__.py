"""kopf handlers and reconcilers, one module per custom resource."""
