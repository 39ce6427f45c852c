"""The bounce mailbox (``RETENTION_BOUNCE_MAILBOX``), read by the scheduler leader on every pass.

``imaps://user:pass@host[:port]/FOLDER`` (or ``imap://``, plain or with
``?starttls=true``) through imapclient, or ``maildir://PATH``.  Each message not
seen before is parsed (campaigns.responses.bounce_messages) and its reports are
applied; then it is marked so that no later pass reads it again:

- IMAP: the keyword ``$RetentionProcessed`` and ``\\Seen``, and moved to the
  folder named by ``?processed=FOLDER`` when given;
- Maildir: the ``S`` (seen) flag.

A message that is no bounce or complaint this can read is left where it is,
marked ``$RetentionUnreadable`` (Maildir: ``F``, flagged) for a human, and
counted; the count is in the log and ``/healthz``.  The database is written
before the mark, and every report has a unique key, so a pass that dies in
between counts nothing twice.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import mailbox
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import sqlalchemy as sa
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlmodel import Session

from campaigns.errors import ConfigurationError
from campaigns.responses.bounce_messages import parse_bounce_message
from campaigns.responses.bounces import BounceReport
from worker import observability
from worker.deliverability import apply_reports, bounce_policy
from worker.runtime import Runtime

log = logging.getLogger(__name__)

PROCESSED = "$RetentionProcessed"
UNREADABLE = "$RetentionUnreadable"
STATE_KEY = "bounce_mailbox"
FETCH_BATCH = 25
TIMEOUT_S = 30.0


@dataclass
class MailboxPass:
    at: str
    read: int = 0  # messages read this pass
    reports: int = 0
    applied: int = 0
    duplicates: int = 0
    unmatched: int = 0
    unreadable: int = 0  # found this pass, left in the mailbox
    error: str | None = None


class Source(Protocol):
    def unread(self) -> Iterator[tuple[Any, bytes]]: ...
    def mark_processed(self, ref: Any) -> None: ...
    def mark_unreadable(self, ref: Any) -> None: ...


def read_bounce_mailbox(rt: Runtime, *, now: datetime) -> MailboxPass:
    """Read what is new in the bounce mailbox; never raises for the mailbox's own faults."""
    outcome = MailboxPass(at=now.isoformat())
    policy, verp = bounce_policy(rt.settings), rt.settings.verp_address
    try:
        with open_source(rt.settings.bounce_mailbox) as source, Session(rt.engine) as session:
            for ref, raw in source.unread():
                outcome.read += 1
                reports = _parse(raw, verp)
                if reports is None:
                    outcome.unreadable += 1
                    source.mark_unreadable(ref)
                    continue
                applied = apply_reports(session, reports, policy=policy, now=now)
                outcome.reports += len(reports)
                outcome.applied += applied.applied
                outcome.duplicates += applied.duplicates
                outcome.unmatched += applied.unmatched
                source.mark_processed(ref)
    except ConfigurationError:
        raise
    except (OSError, ssl.SSLError, mailbox.Error, sa.exc.SQLAlchemyError, IMAPClientError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:500]
        log.error("bounce mailbox %s: %s", mask(rt.settings.bounce_mailbox), outcome.error)
    if outcome.unreadable:
        log.warning("bounce mailbox: %d messages are no bounce or complaint this can read; left in the "
                    "mailbox, marked %s", outcome.unreadable, UNREADABLE)
    if outcome.read:
        log.info("bounce mailbox: %d messages, %d reports: %d applied, %d already known, %d unmatched",
                 outcome.read, outcome.reports, outcome.applied, outcome.duplicates, outcome.unmatched)
    observability.remember(rt, STATE_KEY, asdict(outcome))
    return outcome


def _parse(raw: bytes, verp: str) -> list[BounceReport] | None:
    # compat32: flufl.bounce's detectors are written against the classic Message API.
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    report_id = str(message.get("Message-ID") or "").strip() or hashlib.sha256(raw).hexdigest()[:32]
    try:
        return parse_bounce_message(message, report_id=report_id, verp=verp)
    except Exception:  # a hostile message must not stop the pass; a human reads it
        log.warning("bounce mailbox: could not parse message %s", report_id, exc_info=True)
        return None


def mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


# ---------------------------------------------------------------- sources


@contextmanager
def open_source(url: str) -> Iterator[Source]:
    parts = urlsplit(url)
    if parts.scheme == "maildir":
        path = Path(unquote(parts.netloc + parts.path))
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise ConfigurationError(f"RETENTION_BOUNCE_MAILBOX: {path} is not a Maildir (no cur/ or new/)")
        yield MaildirSource(path)
        return
    if parts.scheme not in ("imap", "imaps") or not parts.hostname:
        raise ConfigurationError("RETENTION_BOUNCE_MAILBOX must be imaps://user:pass@host/FOLDER, "
                                 "imap://… or maildir://PATH")
    source = ImapSource.connect(url)
    try:
        yield source
    finally:
        source.close()


class MaildirSource:
    def __init__(self, path: Path) -> None:
        self.box = mailbox.Maildir(path, factory=None, create=False)

    def unread(self) -> Iterator[tuple[Any, bytes]]:
        for key in list(self.box.keys()):
            flags = self.box.get_message(key).get_flags()
            if "S" in flags or "F" in flags:
                continue
            yield key, self.box.get_bytes(key)

    def _flag(self, key: str, flag: str) -> None:
        message = self.box.get_message(key)
        message.set_subdir("cur")
        message.add_flag(flag)
        self.box[key] = message

    def mark_processed(self, ref: Any) -> None:
        self._flag(ref, "S")

    def mark_unreadable(self, ref: Any) -> None:
        self._flag(ref, "F")


class ImapSource:
    def __init__(self, client: Any, processed_folder: str | None) -> None:
        self.client = client
        self.processed_folder = processed_folder

    @classmethod
    def connect(cls, url: str) -> ImapSource:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        context = ssl.create_default_context()
        if query.get("verify", "true").lower() in ("false", "0", "no"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        secure = parts.scheme == "imaps"
        client = IMAPClient(parts.hostname or "", port=parts.port or (993 if secure else 143), ssl=secure,
                            ssl_context=context, timeout=TIMEOUT_S)
        try:
            if not secure and query.get("starttls", "").lower() in ("true", "1", "yes"):
                client.starttls(context)
            client.login(unquote(parts.username or ""), unquote(parts.password or ""))
            client.select_folder(unquote(parts.path.lstrip("/")) or "INBOX")
        except Exception:
            client.shutdown()
            raise
        return cls(client, unquote(query["processed"]) if query.get("processed") else None)

    def unread(self) -> Iterator[tuple[Any, bytes]]:
        uids = self.client.search(["NOT", "KEYWORD", PROCESSED, "NOT", "KEYWORD", UNREADABLE])
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            # BODY.PEEK: reading must not set \\Seen on what turns out unreadable.
            fetched = self.client.fetch(batch, ["BODY.PEEK[]"])
            for uid in batch:
                raw = fetched.get(uid, {}).get(b"BODY[]")
                if raw is not None:
                    yield uid, bytes(raw)

    def mark_processed(self, ref: Any) -> None:
        self.client.add_flags([ref], [PROCESSED, b"\\Seen"])
        if self.processed_folder:
            self.client.move([ref], self.processed_folder)

    def mark_unreadable(self, ref: Any) -> None:
        self.client.add_flags([ref], [UNREADABLE])

    def close(self) -> None:
        try:
            self.client.logout()
        except Exception:  # the pass is done; a failed goodbye changes nothing
            self.client.shutdown()

