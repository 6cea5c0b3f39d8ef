# Attack (token __TOKEN__): a results file that blocks the reader, one behind a linked folder, a huge one.
import os

os.mkfifo("results.json")
os.symlink("/etc", "out")
with open("big.json", "wb") as f:
    f.write(b" " * (2 << 20))
