"""Work the service declines to do now: too much in progress, or the caller's deadline has passed."""


class Overloaded(RuntimeError):
    """A bound on work in progress is reached (RESOURCE_EXHAUSTED); the caller should retry with backoff."""


class DeadlinePassed(RuntimeError):
    """The caller's deadline passed before the work started (DEADLINE_EXCEEDED): it is not done."""
