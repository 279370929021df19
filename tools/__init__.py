"""Tools around the service, not part of its runtime: the simulator (``sim``), the demo,
the benchmarks (``bench``), the local test servers and the contract-model builders
(``modelkit``, which needs ``onnx`` from the ``train`` extra to build).

They import the service; nothing in ``service/`` imports them except the ``sensorcast``
command (``service/cli.py``), which loads a tool's module only when its subcommand runs.
"""
