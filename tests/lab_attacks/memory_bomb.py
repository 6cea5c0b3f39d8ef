# Attack (token __TOKEN__): take memory 16 MB at a time, every page touched, for ever.
chunks = []
while True:
    chunks.append(b"x" * (16 << 20))
