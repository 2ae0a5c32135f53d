"""Running as a service: atomic files, lock, logs, metrics, degraded state."""
