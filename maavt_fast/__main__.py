"""`python -m maavt_fast ...` is the `maavt` command."""
from maavt_fast.cli import main

raise SystemExit(main())
