"""odal package."""
