"""The development mailer: each mail becomes a file in a directory, nothing leaves the host.

The last ``KEEP`` mails are also kept in ``messages`` so tests can read the codes they carry.
The directory and files are private to the gateway's user: they hold live codes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from email.message import EmailMessage
from pathlib import Path

from gateway.mail.base import Mail

KEEP = 1000


class Outbox:
    def __init__(self, directory: str | Path, sender: str) -> None:
        self.directory = Path(directory)
        self.sender = sender
        self.messages: list[Mail] = []
        self._seq = itertools.count(1)

    async def send(self, to: str, subject: str, body: str) -> None:
        mail = Mail(to, subject, body)
        name = f"{time.time_ns()}-{next(self._seq):06d}.eml"
        data = self._render(mail)
        await asyncio.to_thread(self._write, name, data)
        self.messages.append(mail)
        del self.messages[:-KEEP]

    def _render(self, mail: Mail) -> bytes:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg.set_content(mail.body)
        return bytes(msg)

    def _write(self, name: str, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
