"""Development-only benchmarks (speed-up, quality, cost model, DDP peer): not in the wheel, not shipped to Spark."""
