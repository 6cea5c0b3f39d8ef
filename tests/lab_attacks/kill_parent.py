# Attack (token __TOKEN__): kill the process that started this one.
import os
import signal

try:
    os.kill(os.getppid(), signal.SIGKILL)
    print("sent")
except OSError as e:
    print("refused:", type(e).__name__)
