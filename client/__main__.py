"""``python -m steppe``: the same as the ``steppe`` command."""

from steppe.cli import main

raise SystemExit(main())
