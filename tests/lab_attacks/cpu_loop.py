# Attack (token __TOKEN__): spin on the CPU for ever.
while True:
    pass
