# Attack (token __TOKEN__): print 10 MB.
import sys

sys.stdout.write("x" * (10 << 20))
sys.stdout.flush()
