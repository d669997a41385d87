"""API access: server-side apply that writes only when needed, status, events."""
