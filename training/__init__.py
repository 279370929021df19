"""Offline half of sensorcast: load history, train recurrent forecasters, export ONNX.

Needs the ``train`` extra (torch, onnx). ``service/`` never imports this package.
"""
