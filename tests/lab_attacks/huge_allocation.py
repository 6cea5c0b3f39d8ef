# Attack (token __TOKEN__): ask for a terabyte at once.
try:
    block = bytearray(1 << 40)
    print("allocated", len(block))
except MemoryError:
    print("refused: MemoryError")
