"""Out-of-sample evaluation: the backtester, metrics, attribution, the promotion gate, stress tests, seed
sweeps, walk-forward, tuning and plots."""
