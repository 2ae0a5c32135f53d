"""odal.common: the leaf layer (imports nothing of odal): errors, uncertainty, sd_notify."""
