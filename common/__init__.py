"""odal.common: the leaf layer that daemon, serving and recipe import (it imports nothing of odal): errors, image
rules, content hash, rect spans, HOST:PORT, process groups, uncertainty, sd_notify."""
