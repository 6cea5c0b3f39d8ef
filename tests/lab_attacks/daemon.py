# Attack (token __TOKEN__): a double-forked daemon that leaves the session and outlives the run.
import os
import signal
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        open("daemon-started", "w").close()
        while True:
            time.sleep(0.1)
    os._exit(0)
os.wait()
while not os.path.exists("daemon-started"):  # end only once the daemon is up
    time.sleep(0.01)
