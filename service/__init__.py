"""sensorcast: streaming forecasts and anomaly alerts for sensor fleets on edge gateways.

The service package runs with onnxruntime alone; torch lives in ``training/``.
"""

__version__ = "0.1.0"
