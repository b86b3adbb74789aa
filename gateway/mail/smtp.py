"""Real mail through an SMTP server (aiosmtplib), one connection per mail."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib


class SmtpMailer:
    def __init__(self, host: str, port: int, *, username: str = "", password: str = "",
                 starttls: bool = True, sender: str, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self._username = username or None
        self._password = password or None
        self._starttls = starttls
        self._timeout = timeout

    def __repr__(self) -> str:  # no credentials in logs
        return f"SmtpMailer({self.host!r}, {self.port})"

    async def send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(body)
        await aiosmtplib.send(
            msg, hostname=self.host, port=self.port, username=self._username,
            password=self._password, start_tls=self._starttls, timeout=self._timeout,
        )
