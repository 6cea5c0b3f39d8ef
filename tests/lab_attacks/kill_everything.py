# Attack (token __TOKEN__): kill every process this one may signal.
import os
import signal

try:
    os.kill(-1, signal.SIGKILL)
    print("sent")
except OSError as e:
    print("refused:", type(e).__name__)
