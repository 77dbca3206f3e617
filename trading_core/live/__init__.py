"""Live trading: durable session state, broker adapters and the bar-by-bar trading loop."""
