"""`retention worker`, except that the process kills itself (SIGKILL) while composing the
email for the address in CHAOS_DIE_COMPOSING_FOR: a delivery that takes its worker down
every time, as a segfaulting library or the OOM killer would.

    python tests/chaos/dying_worker.py --threads 1
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime
from typing import Any

from campaigns.delivery import sending


def main() -> None:
    doomed = os.environ["CHAOS_DIE_COMPOSING_FOR"]
    compose = sending.Sender.message_parts

    def dying_compose(self: sending.Sender, delivery: Any, customer: Any, campaign: Any,
                      now: datetime) -> dict[str, Any]:
        if customer.email == doomed:
            os.kill(os.getpid(), signal.SIGKILL)
        return compose(self, delivery, customer, campaign, now)

    sending.Sender.message_parts = dying_compose  # type: ignore[method-assign]
    from worker.cli import main as retention

    sys.argv = ["retention", "worker", *sys.argv[1:]]
    retention()


if __name__ == "__main__":
    main()
