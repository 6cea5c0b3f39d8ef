# Attack (token __TOKEN__): grow one file in the workspace until the disk is full (1 GB at most).
n = 0
with open("fill.bin", "wb") as f:
    try:
        while n < (1 << 30):
            f.write(b"\0" * (1 << 20))
            f.flush()
            n += 1 << 20
        print("never stopped", n)
    except OSError as e:
        print("stopped", n, type(e).__name__)
