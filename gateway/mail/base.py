"""The mail interface and the background sender that keeps SMTP off the request path.

Requests never wait for mail: they ``submit`` to a bounded queue and one worker task delivers in
order. A full queue drops the mail with a warning (the user can ask again); a failed delivery is
logged without its body, because bodies carry verification and reset codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("gateway.mail")

#: How long ``stop`` lets queued mail go out before giving up on it.
DRAIN_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    body: str


class Mailer(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None:
        """Deliver one mail or raise."""


class MailQueue:
    """A bounded queue of mails and the one task that hands them to a ``Mailer``."""

    def __init__(self, mailer: Mailer, maxsize: int) -> None:
        self.mailer = mailer
        self._queue: asyncio.Queue[Mail] = asyncio.Queue(maxsize=max(1, maxsize))
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed = 0

    def __len__(self) -> int:
        """Mails waiting (the one being sent is not counted)."""
        return self._queue.qsize()

    def submit(self, to: str, subject: str, body: str) -> bool:
        """Queue a mail without waiting; False (and a warning) when the queue is full."""
        try:
            self._queue.put_nowait(Mail(to, subject, body))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("mail queue full (%d); dropped a mail %r", self._queue.maxsize, subject)
            return False
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mail-sender")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT)
        if self._queue.qsize():
            log.warning("shutdown: %d queued mails not sent", self._queue.qsize())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            mail = await self._queue.get()
            try:
                await self.mailer.send(mail.to, mail.subject, mail.body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                # Never the body (it holds a code) and never the exception text, which some SMTP
                # servers fill with the whole rejected message.
                log.warning("mail %r not sent: %s", mail.subject, type(exc).__name__)
            finally:
                self._queue.task_done()
