"""Delivery: from a queued Delivery row to a message handed to a transport.

``outbox`` owns the delivery state transitions, ``sending`` claims, re-checks and sends,
``rendering`` renders the Jinja templates in the ``sandbox`` with the ``context`` of a delivery
(``template_files``: which file a locale gets; ``template_loader``: how often the disk is asked;
``css``: ``<style>`` inlined), ``emails`` builds the MIME message,
``sendwindow`` computes quiet hours and send days, ``tokens`` signs the links,
``transport`` says what a transport must do, ``template_errors`` locates template failures.
"""

from __future__ import annotations

from campaigns.delivery.emails import build_email
from campaigns.delivery.rendering import RenderedMessage, TemplateStore
from campaigns.delivery.sending import Outcome, Sender
from campaigns.delivery.sendwindow import next_send_time
from campaigns.delivery.tokens import Purpose, Signer, links
from campaigns.delivery.transport import BeforeData, Transport

__all__ = [
    "BeforeData",
    "Outcome",
    "Purpose",
    "RenderedMessage",
    "Sender",
    "Signer",
    "TemplateStore",
    "Transport",
    "build_email",
    "links",
    "next_send_time",
]
