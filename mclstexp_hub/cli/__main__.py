"""`python -m mclstexp_hub.cli …` = the `mclstexp` command."""

from mclstexp_hub.cli import main

raise SystemExit(main())
