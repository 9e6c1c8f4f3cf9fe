"""A reward worker process: `RewardPool` sends (index, task) on stdin and reads (index, score) on stdout."""

from __future__ import annotations

import json
import os
import sys
from multiprocessing.connection import Connection

from xr_nemo.rewards.pool import RewardSpec, score_task


def serve(spec: RewardSpec) -> None:
    inbox, outbox = Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints must not corrupt the reply stream
    while True:
        message = inbox.recv()
        if message is None:
            return
        index, task = message
        outbox.send((index, score_task(task, spec)))


if __name__ == "__main__":
    serve(RewardSpec(**json.loads(sys.argv[1])))
