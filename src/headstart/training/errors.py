"""Training's exceptions, importable without torch (the CLI catches them in a serving-only install too)."""

__all__ = ["NonFiniteLossError", "TrainingInterrupted"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the state of the last completed epoch is on disk, ready to resume."""
