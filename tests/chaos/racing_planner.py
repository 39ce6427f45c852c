"""One planning pass that starts at an agreed moment and prints the ids it enqueued (JSON),
for racing several planners against one database with no leader lock between them.

    CHAOS_START_AT=<unix time> CHAOS_NOW=<ISO time> python tests/chaos/racing_planner.py
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime

from worker import runtime
from worker.passes import run_pass


def main() -> None:
    rt = runtime.build()  # RETENTION_* from the environment, as the CLI does
    enqueued: list[int] = []

    def enqueue(ids: list[int]) -> int:
        enqueued.extend(ids)
        return len(ids)

    time.sleep(max(0.0, float(os.environ["CHAOS_START_AT"]) - time.time()))
    run_pass(rt, enqueue, now=datetime.fromisoformat(os.environ["CHAOS_NOW"]))
    rt.close()
    print(json.dumps(enqueued))  # the test reads it


if __name__ == "__main__":
    main()
