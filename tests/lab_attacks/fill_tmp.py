# Attack (token __TOKEN__): fill /tmp with 1 MB files until it is full (1 GB at most).
n = 0
try:
    while n < (1 << 30):
        with open(f"/tmp/fill-{n >> 20}.bin", "wb") as f:
            f.write(b"\0" * (1 << 20))
        n += 1 << 20
    print("never stopped", n)
except OSError as e:
    print("stopped", n, type(e).__name__)
