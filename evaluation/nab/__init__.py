"""The Numenta Anomaly Benchmark (NAB), run and scored by sensorcast's own code.

- ``corpus``: the 58 data files, labelled windows and cost profiles.
- ``scoring``: the published NAB scoring (probation, windows, scaled sigmoid, one
  threshold per detector and profile optimised over the corpus, null/perfect normalisation).
- ``detectors``: online detectors (Windowed Gaussian baseline; forecast residual +
  anomaly likelihood, the sensorcast detector).
- ``likelihood``: the Numenta-style Gaussian anomaly likelihood (a compared
  post-processing; the service does not use it).
- ``run``: NAB-format result files; ``engine_run`` and ``live``: the service's engine and
  ONNX runtime over the corpus; ``persistence``: the persistence step model.
- ``bench``: the benchmark command; ``crossval``: the scorer's cross-validation.

Entry point: ``python -m evaluation.nab --data ../shared/data/nab`` (``make bench-nab``).
"""
