"""CLI commands that are not the daemon: logs, retry, rollback, demo, init, install-service."""
