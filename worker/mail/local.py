"""Transports that keep mail on this machine: a Maildir, or the console for dry runs."""

from __future__ import annotations

import mailbox
import sys
import threading
from typing import TextIO

from campaigns.errors import (
    ConfigurationError,
    TransientDeliveryError,
)
from worker.mail.transport import BeforeData, Message, outgoing


class MaildirTransport:
    """Deliver into a Maildir (``new/``), readable by ``mailbox.Maildir`` and mail clients."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._maildir = mailbox.Maildir(path, create=True)
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot create the Maildir {path!r} ({exc.strerror or exc}); point "
                "RETENTION_MAIL_URL at a writable directory, e.g. maildir://./outbox"
            ) from exc
        # Maildir names unique files with a class-wide counter that is not
        # thread-safe; two threads could race on the same temporary name.
        self._lock = threading.Lock()

    def send(self, message: Message, *, before_data: BeforeData | None = None,
             then: Message | None = None) -> str:
        # The same checks as SMTP, so a dry run catches them; a Maildir file has this system's line ends.
        data = outgoing(message).data.replace(b"\r\n", b"\n")
        if before_data is not None:
            before_data()
        try:
            with self._lock:
                key = self._maildir.add(data)
        except OSError as exc:
            raise TransientDeliveryError(
                f"Cannot write to the Maildir {self.path!r}: {exc.strerror or exc}"
            ) from exc
        return f"maildir:{key}"

    def close(self) -> None:
        self._maildir.close()

    def __repr__(self) -> str:
        return f"MaildirTransport({self.path!r})"


class ConsoleTransport:
    """Print each message to a stream (stdout by default) for dry runs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: Message, *, before_data: BeforeData | None = None,
             then: Message | None = None) -> str:
        data = outgoing(message).data
        if before_data is not None:
            before_data()
        stream = self._stream or sys.stdout
        text = data.decode("utf-8", "replace").replace("\r\n", "\n")
        with self._lock:  # keep concurrent messages from interleaving
            stream.write(f"{'-' * 30} message {'-' * 30}\n{text}\n")
            stream.flush()
        return "console"

    def close(self) -> None:
        pass


