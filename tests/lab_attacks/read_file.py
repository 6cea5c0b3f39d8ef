# Attack (token __TOKEN__): read a file that is not ours.
try:
    with open("__PATH__") as f:
        data = f.read()
    print("read", len(data), "bytes:", data[:200] if "secret" in data else "")
except OSError as e:
    print("refused:", type(e).__name__)
