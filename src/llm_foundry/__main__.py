"""`python -m llm_foundry` is the same as the `foundry` command."""

from .cli.main import main

raise SystemExit(main())
