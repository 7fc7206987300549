"""Training: the run orchestration, the Fabric loop, callbacks, schedules and modes."""

from headstart.training.run import RunResult, train

__all__ = ["RunResult", "train"]
