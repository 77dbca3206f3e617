"""Classical allocators (equal weight, inverse volatility, minimum variance, risk parity, HRP, shrunk
mean-variance, momentum) as leaderboard candidates and priors: skfolio's optimisers fitted on trailing returns."""
