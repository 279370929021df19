"""``python -m evaluation.tep --data ../shared/data/tep`` (``make bench-tep``)."""

from evaluation.tep.bench import main

raise SystemExit(main())
