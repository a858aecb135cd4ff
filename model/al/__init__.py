"""Active learning: selection strategies, the cycle planner, certification, calibration, bands."""
