"""The Numenta Anomaly Benchmark (NAB), run and scored by sensorcast's own code.

- ``corpus``: the 58 data files, labelled windows and cost profiles.
- ``scoring``: the published NAB scoring (probation, windows, scaled sigmoid, one
  threshold per detector and profile optimised over the corpus, null/perfect normalisation).
- ``detectors``: online detectors (Windowed Gaussian baseline; forecast residual +
  anomaly likelihood, the sensorcast detector).
- ``results``: NAB-format result files.

Entry point: ``python -m training.bench_nab --data ../shared/data/nab`` (``make bench-nab``).
"""
