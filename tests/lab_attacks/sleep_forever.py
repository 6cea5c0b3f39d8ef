# Attack (token __TOKEN__): never end.
import time

time.sleep(10**6)
