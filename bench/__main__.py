"""``python -m bench``: see ``bench/run.py`` and the bench/README.md."""

from bench.run import main

raise SystemExit(main())
