"""What a request got wrong, as the core says it; api/errors.py maps each to its status."""


class RequestError(ValueError):
    """The request itself is wrong (not the image)."""


class QuotaReached(RuntimeError):
    """The request would store more than a limit allows (it is the limit's message)."""


class KeyNotFound(LookupError):
    """Nothing is stored under what the request names (a key, a dismissal id)."""
