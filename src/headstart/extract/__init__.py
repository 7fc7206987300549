"""Feature extraction: the frozen backbone on the fastest engine that reproduces it, and the feature cache."""
