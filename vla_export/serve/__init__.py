"""Serving a fleet of robots from one NVIDIA Triton Inference Server.

:mod:`~vla_export.serve.repository` writes the model repository Triton loads (the policy as a
Python-backend model under the sequence batcher, one state per robot); :mod:`~vla_export.serve.fleet`
is the per-robot state that model keeps (one :class:`~vla_export.runtime.Policy` per correlation id);
:mod:`~vla_export.serve.server` starts a real ``tritonserver`` on loopback for development and tests.
No server of our own: Triton does the networking, queueing and batching.
"""
