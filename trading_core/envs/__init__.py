"""Trading environments: a fast batched numpy environment on the shared market core, and FinRL's own."""
