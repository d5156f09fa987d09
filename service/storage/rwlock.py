"""A readers-writer lock (threads): many readers at once, or one writer alone."""

import threading


class ReadWriteLock:
    """Many readers or one writer; used only so the map can be grown while no transaction is open."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False

    def acquire_read(self) -> None:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing)
            self._readers += 1

    def release_read(self) -> None:
        with self._condition:
            self._readers -= 1
            self._condition.notify_all()

    def acquire_write(self) -> None:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing and self._readers == 0)
            self._writing = True

    def release_write(self) -> None:
        with self._condition:
            self._writing = False
            self._condition.notify_all()
