"""Where and how work runs: Ray fan-out of independent tasks and the provenance recorded with every model."""
