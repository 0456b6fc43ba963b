"""Inference engines behind one contract (runtime.backends.base.Backend)."""
