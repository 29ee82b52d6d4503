"""Verification: does an artifact compute what the PyTorch policy computes?

``parity`` compares runners on the same inputs, ``locate`` finds the first layer where they part,
``reference`` saves the PyTorch side for a device that has no torch. Export, quantization, replay
and the CLI all verify through here.
"""
