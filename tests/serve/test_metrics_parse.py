"""Triton's Prometheus metrics read by prometheus_client's parser (no regexes): the model's counters only,
summed over versions; text that is not Prometheus exposition is one RunnerError."""

from __future__ import annotations

import pytest

from vla_export.errors import RunnerError

pytest.importorskip("prometheus_client", reason="prometheus_client is not installed (make install)")
from vla_export.serve.fleet_bench import parse_metrics  # noqa: E402

TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="tiny",version="1"} 12
nv_inference_request_success{model="tiny",version="2"} 3
nv_inference_request_success{model="tiny_backbone",version="1"} 500
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="tiny",version="1"} 2.5e+03
# HELP vla_export_backbone_us time in the backbone
# TYPE vla_export_backbone_us counter
vla_export_backbone_us{model="tiny",version="1"} 1500
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.25
"""


def test_counters_of_one_model_summed_over_versions():
    found = parse_metrics(TEXT, "tiny")
    assert found["nv_inference_request_success"] == 15.0  # not the other model's 500, both versions
    assert found["nv_inference_queue_duration_us"] == 2500.0
    assert found["vla_export_backbone_us"] == 1500.0
    assert found["nv_inference_exec_count"] == 0.0  # not exposed: 0, as the delta needs
    assert parse_metrics(TEXT, "tiny_backbone")["nv_inference_request_success"] == 500.0


def test_text_that_is_not_prometheus_is_refused():
    with pytest.raises(RunnerError, match="not Prometheus text"):
        parse_metrics('nv_inference_request_success{model="tiny" 12\n', "tiny")
