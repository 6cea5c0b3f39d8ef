# Attack (token __TOKEN__): start threads until the system refuses.
import os
import threading
import time

n = 0
try:
    while n < 100_000:
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        n += 1
except RuntimeError:
    pass
print(n, "threads started", flush=True)
os._exit(0)
