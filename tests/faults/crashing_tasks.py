"""A registered task that kills the pool process running it, every time (imported by one fault test)."""

import os
import signal

from worker import app


@app.task(name="faults.crash_process")
def crash_process():
    os.kill(os.getpid(), signal.SIGKILL)
