"""Outgoing mail: a dev outbox and SMTP behind one ``Mailer`` interface, sent in the background."""

from __future__ import annotations

from gateway.config import Settings
from gateway.mail.base import Mail, Mailer, MailQueue
from gateway.mail.outbox import Outbox

__all__ = ["Mail", "MailQueue", "Mailer", "Outbox", "mailer_from_settings"]


def mailer_from_settings(settings: Settings) -> Mailer:
    """SMTP when ``smtp_host`` is set, else the outbox directory (``<db>.outbox`` by default)."""
    if settings.smtp_host:
        from gateway.mail.smtp import SmtpMailer

        return SmtpMailer(settings.smtp_host, settings.smtp_port,
                          username=settings.smtp_username, password=settings.smtp_password,
                          starttls=settings.smtp_starttls, sender=settings.mail_from,
                          timeout=settings.smtp_timeout)
    return Outbox(settings.mail_outbox or settings.db + ".outbox", settings.mail_from)
