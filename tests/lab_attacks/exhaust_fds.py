# Attack (token __TOKEN__): open descriptors until the system refuses (raising the limit first).
import os
import resource

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except (ValueError, OSError):
    pass
fds = []
try:
    while len(fds) < 100_000:  # a bound of its own, for a configuration without the rlimit
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
print(len(fds), "descriptors opened")
