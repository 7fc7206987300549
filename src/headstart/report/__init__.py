"""Plots, explanations and the self-contained HTML report."""
