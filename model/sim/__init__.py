"""Simulation: the active-learning loop against a simulated annotator, its report, the synthetic scenes."""
