"""Evaluation of the service's anomaly and forecast code on public benchmarks.

``nab``: the Numenta Anomaly Benchmark, run through the real engine. It imports the
service and needs no torch (``onnx``, from the ``train`` extra, only to build its
persistence model). Nothing in ``service/`` imports this package.
"""
