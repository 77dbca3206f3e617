"""The market simulation core shared by the training environment, the backtester and paper trading:
costs and market impact, fills on the next bar, and the risk manager."""
