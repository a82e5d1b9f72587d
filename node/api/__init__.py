"""HTTP API: health, metrics, later the portal."""
