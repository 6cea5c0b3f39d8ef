"""The `foundry` command: thin wrappers over the library, one module per stage."""
