"""The Tennessee Eastman process benchmark (TEP), run through the live engine.

- ``data``: the Braatz files (``d00.dat`` transposed), fault onset, detectable faults.
- ``pca``: the PCA baseline (Q / SPE and Hotelling T^2), numpy only.
- ``metrics``: detection and false alarm rates, equal-false-alarm thresholds, ROC AUC.
- ``product``: a recurrent step model trained by ``sensorcast train`` on normal operation,
  every test file replayed through ``service.backtest.backtest_frame``.
- ``bench``: the benchmark command.

Entry point: ``python -m evaluation.tep --data ../shared/data/tep`` (``make bench-tep``).
"""
