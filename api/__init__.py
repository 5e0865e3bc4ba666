"""The HTTP API of the MoE training service (no torch: see api/main.py)."""
