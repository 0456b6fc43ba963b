"""Load, soak, fault and fuzz runs against the real server: helpers for tests/ and the scripts (README.md)."""
