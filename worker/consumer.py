"""Entry module for Dramatiq's own CLI (Redis broker)::

    RETENTION_BROKER_URL=redis://127.0.0.1:6379/0 dramatiq worker.consumer --processes 2 --threads 8

Importing it builds the broker from the environment and declares the actors
on it, which is what ``dramatiq`` expects of the module it is given.
"""

from __future__ import annotations

from worker.actors import declare_configured
from worker.broker import install_broker
from worker.logs import configure_logging
from worker.settings import load_settings

_settings = load_settings()
if not _settings.broker_url:
    raise SystemExit("worker.consumer needs RETENTION_BROKER_URL=redis://… (the in-process "
                     "queue lives inside `retention run`)")
configure_logging(_settings.log_level, _settings.log_format)
broker = install_broker(_settings.broker_url)
actors = declare_configured(broker, _settings)
