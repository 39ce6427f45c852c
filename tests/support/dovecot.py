"""A real IMAP server for tests: Dovecot from the distribution, on a free port, with its own config.

It runs in the foreground (``dovecot -F -c CONFIG``) with every path under the
test's temporary directory, one passwd-file user and Maildir storage, so it
never touches the system's Dovecot.  Missing ``dovecot`` skips locally and
fails in CI (scripts/test installs dovecot-imapd).
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.redis import free_port
from tests.support.services import skip_or_fail, stop_process

USER, PASSWORD = "bounces", "bounce-pass"


def find_dovecot() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)), None)


@dataclass
class Dovecot:
    port: int
    user: str = USER
    password: str = PASSWORD

    @property
    def url(self) -> str:
        return f"imap://{self.user}:{self.password}@127.0.0.1:{self.port}/INBOX"


def _accounts() -> tuple[str, str, str, int, int]:
    """(login user, internal user, its group, mail uid, mail gid).

    Unprivileged, everything runs as the current user.  As root, Dovecot refuses to
    run its login and mail processes as root: the distribution's own users (dovenull,
    dovecot) or nobody take their place.
    """
    if os.getuid() != 0:
        user = getpass.getuser()
        return user, user, grp.getgrgid(os.getgid()).gr_name, os.getuid(), os.getgid()

    def existing(*names: str) -> pwd.struct_passwd:
        for name in names:
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise LookupError(f"none of the users {names} exists")

    login, internal, mail = existing("dovenull", "nobody"), existing("dovecot", "nobody"), existing("nobody")
    return (login.pw_name, internal.pw_name, grp.getgrgid(internal.pw_gid).gr_name,
            mail.pw_uid, mail.pw_gid)


def _config(root: Path, port: int) -> str:
    login, internal, group, uid, gid = _accounts()
    for folder in ("mail", "home"):
        os.chown(root / folder, uid, gid)
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    return f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    binary = find_dovecot()
    if binary is None:
        skip_or_fail("dovecot is not installed (Debian/Ubuntu: apt-get install dovecot-imapd; "
                     "scripts/test installs it)")
    # Not under tmp_path: its parents are private to the test user, and Dovecot's
    # unprivileged processes must reach the sockets and mail below this root.
    root = Path(tempfile.mkdtemp(prefix="retention-dovecot-"))
    root.chmod(0o755)
    for folder in ("run", "state", "mail", "home"):
        (root / folder).mkdir()
    port = free_port()
    config = root / "dovecot.conf"
    config.write_text(_config(root, port))
    process = subprocess.Popen([binary, "-F", "-c", str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _greets(port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise AssertionError(f"dovecot did not start on port {port}:\n{output}\n{log}")
            time.sleep(0.05)
        yield Dovecot(port)
    finally:
        stop_process(process)
        if process.stdout:
            process.stdout.close()
        shutil.rmtree(root, ignore_errors=True)
