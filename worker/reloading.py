"""Every role follows edits of rules.yaml and templates/: watched files, SIGHUP, and each pass.

A saved edit is checked within about a second (watchfiles, debounced); a bad one keeps the last
good rules running and shows in the log (once) and in ``/healthz``. Listeners hear about rules
that took effect, e.g. the scheduler rescheduling its pass for a new ``check_every``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import watchfiles

from worker.runtime import Runtime, reload_rules

log = logging.getLogger(__name__)

DEBOUNCE_MS = 300


class Reloader:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._listeners: list[Callable[[Runtime], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def on_reload(self, listener: Callable[[Runtime], None]) -> None:
        self._listeners.append(listener)

    def reload(self, *, force: bool = False, templates_changed: bool = False) -> bool:
        """Check the files again; True when new rules took effect (listeners have been told)."""
        with self._lock:
            if templates_changed or force:
                self.rt.templates.forget()  # sends see the edit now, not within fresh_for
            try:
                changed = reload_rules(self.rt, force=force, templates_changed=templates_changed)
            except Exception:  # a reload must never take a role down
                log.exception("reloading the rules failed; keeping the last good ones")
                return False
            if changed:
                for listener in self._listeners:
                    try:
                        listener(self.rt)
                    except Exception:
                        log.exception("applying the reloaded rules failed")
        return changed

    def reload_soon(self) -> None:
        """From a signal handler: reload on a thread of its own, never inside the handler."""
        threading.Thread(target=self.reload, kwargs={"force": True}, name="sighup-reload",
                         daemon=True).start()

    def start(self) -> None:
        rules = Path(os.path.abspath(self.rt.settings.rules))
        templates = Path(os.path.abspath(self.rt.templates.root))
        # The rules' folder is watched alone (editors save by renaming a new file over the old
        # one); templates/ recursively. Never the working directory recursively: it may hold a
        # virtual environment or a Maildir that changes with every email.
        if rules.parent.is_dir():
            self._watch(rules.parent, recursive=False, relevant=lambda p: p == rules,
                        templates_changed=False)
        if templates.is_dir():
            self._watch(templates, recursive=True, relevant=lambda p: p.suffix == ".j2",
                        templates_changed=True)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _watch(self, path: Path, *, recursive: bool, relevant: Callable[[Path], bool],
               templates_changed: bool) -> None:
        def changes_only(_change: watchfiles.Change, name: str) -> bool:
            return relevant(Path(name))

        def loop() -> None:
            try:
                for _changes in watchfiles.watch(path, watch_filter=changes_only, recursive=recursive,
                                                 debounce=DEBOUNCE_MS, step=50, stop_event=self._stop,
                                                 raise_interrupt=False, ignore_permission_denied=True):
                    self.reload(templates_changed=templates_changed)
            except Exception:  # e.g. inotify limits: edits are still picked up by SIGHUP and passes
                log.warning("cannot watch %s for edits; they apply on SIGHUP or at the next pass",
                            path, exc_info=True)

        thread = threading.Thread(target=loop, name=f"watch-{path.name}", daemon=True)
        thread.start()
        self._threads.append(thread)
