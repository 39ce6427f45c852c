"""Delivery: from a queued Delivery row to a message handed to a transport.

``outbox`` owns the delivery state transitions, ``sending`` claims, re-checks and sends,
``rendering`` renders the Jinja templates, ``emails`` builds the MIME message,
``sendwindow`` computes quiet hours and send days, ``tokens`` signs the links.
"""
