"""Long-running reliability scenarios with figures: `python -m soak [scenario ...] [--tiny]`."""
