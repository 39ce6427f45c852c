"""Amazon SNS message signatures, and confirming a subscription.

SNS signs every message it posts with the private key of a certificate it
publishes at ``SigningCertURL``: the string to sign is the message's fields as
``Name\\nvalue\\n`` pairs in a fixed order, hashed with SHA-1
(``SignatureVersion`` 1) or SHA-256 (2), signed with RSA PKCS#1 v1.5.  The
certificate is only fetched from a URL that matches the configured pattern
(by default ``https://sns.<region>.amazonaws.com/``), over HTTPS, and cached;
a message whose certificate URL does not match is refused before any fetch.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

log = logging.getLogger(__name__)

_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
MESSAGE_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
MAX_CERT_BYTES = 64 * 1024
FETCH_TIMEOUT_S = 10.0

Fetch = Callable[[str], bytes]


class SnsError(Exception):
    """An SNS message this endpoint refuses (bad signature, untrusted certificate, other topic)."""


def fetch_url(url: str) -> bytes:
    """GET ``url`` (already matched against the allow-list), reading at most a little over the limit."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        return bytes(response.read(MAX_CERT_BYTES + 1))


class SnsVerifier:
    def __init__(
        self, *, cert_url_pattern: str, topic_arns: Sequence[str] = (), fetch: Fetch = fetch_url
    ) -> None:
        self.cert_url = re.compile(cert_url_pattern)
        self.topic_arns = tuple(topic_arns)
        self.fetch = fetch
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def verify(self, message: Mapping[str, Any]) -> None:
        """Raise SnsError unless ``message`` is signed by SNS and from an accepted topic."""
        kind = message.get("Type")
        if kind not in MESSAGE_TYPES:
            raise SnsError(f"not an SNS message: Type {kind!r}")
        if self.topic_arns and message.get("TopicArn") not in self.topic_arns:
            raise SnsError(f"topic {message.get('TopicArn')!r} is not in RETENTION_SES_TOPIC_ARNS")
        version = str(message.get("SignatureVersion", ""))
        if version not in ("1", "2"):
            raise SnsError(f"unknown SignatureVersion {version!r}")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except ValueError:
            raise SnsError("the Signature is not base64") from None
        key = self._public_key(str(message.get("SigningCertURL", "")))
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        try:
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SnsError("the signature does not match the message") from None

    def confirm_subscription(self, message: Mapping[str, Any]) -> None:
        """Visit the SubscribeURL of a verified SubscriptionConfirmation (as SNS asks)."""
        url = str(message.get("SubscribeURL", ""))
        if not self.cert_url.match(url):
            raise SnsError(f"SubscribeURL {url!r} is not an SNS address")
        self.fetch(url)
        log.info("confirmed the SNS subscription to %s", message.get("TopicArn"))

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        if not self.cert_url.match(url):
            raise SnsError(f"SigningCertURL {url!r} is not an SNS certificate address")
        with self._lock:
            cached = self._keys.get(url)
        if cached is not None:
            return cached
        try:
            pem = self.fetch(url)
        except OSError as exc:
            raise SnsError(f"could not fetch the signing certificate {url}: {exc}") from None
        if len(pem) > MAX_CERT_BYTES:
            raise SnsError(f"the signing certificate at {url} is too large")
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise SnsError(f"{url} is not a PEM certificate") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsError(f"the certificate at {url} has no RSA key")
        with self._lock:
            self._keys[url] = key
        return key


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    fields = _NOTIFICATION_FIELDS if message.get("Type") == "Notification" else _SUBSCRIPTION_FIELDS
    return "".join(f"{name}\n{message[name]}\n" for name in fields
                   if message.get(name) is not None).encode()
