"""Inference with torch: the trained classifier rebuilt from its run directory, and export to other formats."""
