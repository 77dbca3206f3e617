"""Causal features: batch indicators, streaming features bit-equal to them, and the FinRL adapter."""
