"""The worker's jobs: a training cycle, scoring chunks, bulk accepts and their undo, webhook checks."""
