"""A daemon thread in the gateway that runs one function every ``interval_s`` seconds
(the stuck-job sweeper, the webhook pump). An error is logged and the loop goes on."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("lethe.periodic")


class PeriodicThread:
    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]):
        self.name, self.interval_s, self.fn = name, interval_s, fn
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s <= 0 or (self.thread and self.thread.is_alive()):
            return
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread:
            self.thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception:  # noqa: BLE001 - one failed round must not end the loop
                log.exception("%s: round failed", self.name)
