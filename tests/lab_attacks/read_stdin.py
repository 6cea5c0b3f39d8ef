# Attack (token __TOKEN__): wait for input that never comes.
import sys

data = sys.stdin.buffer.read()
print(f"stdin gave {len(data)} bytes")
