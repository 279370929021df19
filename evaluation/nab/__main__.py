"""``python -m evaluation.nab --data ../shared/data/nab`` (``make bench-nab``)."""

from evaluation.nab.bench import main

raise SystemExit(main())
