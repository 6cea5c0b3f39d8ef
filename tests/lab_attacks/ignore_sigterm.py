# Attack (token __TOKEN__): ignore the polite signals, in a child too, and never end.
import os
import signal
import time

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
os.fork()
while True:
    time.sleep(1)
