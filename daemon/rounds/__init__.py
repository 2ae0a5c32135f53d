"""A round: inputs, the worker job, the gate, publish and confirm."""
