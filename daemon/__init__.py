"""odal's daemon: watches Prodigy annotations, trains, evaluates and publishes object-detection models."""
