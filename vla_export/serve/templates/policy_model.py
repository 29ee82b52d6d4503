"""Triton Python-backend model written by `vla-export triton`: one robot per sequence (correlation id).

Loaded by Triton's Python backend stub only (it imports ``triton_python_backend_utils``). All policy
logic is vla_export's own: :class:`vla_export.serve.fleet.Fleet` keeps one ``Policy`` per robot and
steps the robots of one execute() together (``vla_export.runtime.batch.step_batch``, which is
``Policy.step`` with the backbone batched). This file only converts Triton tensors.

I/O route: with numpy 2 this stub's ``as_numpy()`` silently returns wrong numbers and
``pb_utils.Tensor(name, ndarray)`` sends no bytes, while DLPack works; with numpy 1 the opposite holds.
BYTES tensors have no DLPack form, and with numpy 2 this stub's ``as_numpy()`` of a BYTES tensor
repeats its first byte (b"go to the cup" arrives as 13 x b"\\r"), so the instruction travels as its
UTF-8 bytes in a UINT8 tensor, which both routes read correctly.
"""

import ctypes
import gc
import json
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from vla_export.backends.base import Runner
from vla_export.errors import DataError, RunnerError, VlaExportError
from vla_export.runtime.batch import warm_up
from vla_export.runtime.policy import BACKBONE_INPUTS, BACKBONE_OUTPUTS
from vla_export.serve.fleet import FAILURE_METRIC, PHASES, RELEASE, Fleet, StepRequest, policy_from_serving, read_serving

NUMPY2 = int(np.__version__.split(".")[0]) >= 2
# The stub renames a DLPack capsule it consumed "used_dlpack", not the standard "used_dltensor", so numpy's
# capsule destructor printed "PyCapsule_GetPointer called with incorrect name" (a traceback) for every
# output tensor. Giving the capsule the standard name tells numpy the consumer owns it (the stub frees it).
_USED_NAME = b"used_dltensor"
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_set_capsule_name.restype = ctypes.c_int


def _array(tensor):
    return np.from_dlpack(tensor) if NUMPY2 else tensor.as_numpy()


def _tensor(name, array):
    array = np.ascontiguousarray(array)
    if not NUMPY2:
        return pb_utils.Tensor(name, array)
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _USED_NAME)
    return tensor


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor


def _flag(request, name):
    tensor = _input(request, name)
    return tensor is not None and bool(_array(tensor).reshape(-1)[0])


def _instruction(request):
    """The START request's instruction: UTF-8 bytes in a UINT8 tensor (None when absent or empty)."""
    tensor = _input(request, "INSTRUCTION")
    if tensor is None:
        return None
    text = bytes(np.ascontiguousarray(_array(tensor), dtype=np.uint8).reshape(-1)).decode("utf-8")
    return text or None


class BackboneModelRunner(Runner):
    """The backbone as a call to Triton's TensorRT model (BLS): used by the tensorrt_plan variant.

    A :class:`~vla_export.backends.base.Runner` like every other part: the Policy activates it, checks
    its inputs and outputs, and ``infer`` checks each feed before ``_execute`` sends it to the model.
    """

    name = "triton-bls"

    def __init__(self, model_name):
        super().__init__()
        self.model_name = model_name

    @property
    def input_names(self):
        return BACKBONE_INPUTS

    @property
    def output_names(self):
        return BACKBONE_OUTPUTS

    def describe(self):
        return super().describe() | {"device": "triton", "model": self.model_name}

    def _activate(self):
        pass  # the TensorRT model is Triton's: loaded by the server, called per request

    def _execute(self, staged):
        inputs = [_tensor(name, staged[name]) for name in self.input_names]
        response = pb_utils.InferenceRequest(model_name=self.model_name, requested_output_names=list(self.output_names), inputs=inputs).exec()
        if response.has_error():
            raise RunnerError(f"{self.model_name}: {response.error().message()}")
        return {name: np.array(_array(pb_utils.get_output_tensor_by_name(response, name))) for name in self.output_names}


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        self.settings = read_serving(folder)
        backbone = None
        if self.settings.get("backbone_model"):
            backbone = BackboneModelRunner(self.settings["backbone_model"])
        template = policy_from_serving(folder, self.settings, backbone=backbone)
        template.activate()
        if self.settings.get("warm_up"):  # capture every batch size's CUDA graphs before the first robot arrives
            warm_up(template, self.settings["warm_up"])
        self.fleet = Fleet(template, max_robots=int(self.settings["max_robots"]), idle_seconds=float(self.settings["idle_seconds"]))
        # What loading made (the model, compiled code, captured graphs: millions of objects) moves out of the
        # cyclic collector's reach, so a full collection during a robot's step no longer walks all of it.
        gc.collect()
        gc.freeze()
        labels = {"model": args["model_name"], "version": args["model_version"], "instance": args["model_instance_name"]}
        # Prometheus counters beside Triton's own (its compute time is one number for all of these phases).
        # A family must outlive its metrics, so both are kept, and finalize() drops the metrics first.
        self.families = {phase: pb_utils.MetricFamily(name=f"vla_export_{phase}_us", kind=pb_utils.MetricFamily.COUNTER,
                                                      description=f"microseconds of execute() spent in {phase}, summed over executions")
                         for phase in PHASES}
        self.phase_us = {phase: family.Metric(labels=labels) for phase, family in self.families.items()}
        # Triton's nv_inference_request_failure cannot count these: the Python backend reports a whole
        # execute() as one success or failure, and an error response for one request is a success there.
        self.families["failure"] = pb_utils.MetricFamily(name=FAILURE_METRIC, kind=pb_utils.MetricFamily.COUNTER,
                                                         description="requests this model answered with an error")
        self.failures = self.families["failure"].Metric(labels=labels)
        self.model_name = args["model_name"]
        self.closing = set()  # robots whose refused START's sequence this instance is ending
        pb_utils.Logger.log_info(f"vla-export policy ready: {json.dumps(template.describe(), default=str)}; numpy {np.__version__}")

    def execute(self, requests):
        t0 = time.perf_counter()
        parsed, errors, flags, releases = [], {}, {}, []
        for request in requests:  # an END of ours in this batch was queued before any START beside it: that START is new
            if _input(request, RELEASE) is not None and _flag(request, "END"):
                self.closing.discard(int(_array(_input(request, "CORRID")).reshape(-1)[0]))
        for i, request in enumerate(requests):
            try:
                robot = int(_array(_input(request, "CORRID")).reshape(-1)[0])
                start, end = _flag(request, "START"), _flag(request, "END")
                flags[i] = (robot, start, end)
                if _input(request, RELEASE) is not None:  # this model's own END for a refused START's sequence
                    if not end or start:
                        raise DataError(f"{RELEASE} is this model's own input (the END it sends to free a refused START's slot)")
                    releases.append(i)
                    continue
                if start and robot in self.closing:
                    raise DataError(f"robot {robot}: its previous START was refused and its sequence is being closed; send START again")
                tensor = _input(request, "FRAME")
                if tensor is None:
                    raise DataError("no FRAME input: every request carries the camera frame (UINT8 [1, H, W, 3])")
                frame = _array(tensor)  # no copy: the step ends inside this execute(), before the request's memory goes
                if frame.ndim == 4 and frame.shape[0] == 1:
                    frame = frame[0]  # the batch axis Triton adds (max_batch_size > 0)
                parsed.append((i, StepRequest(robot, frame, start=start, end=end,
                                              instruction=_instruction(request) if start else None)))
            except (ValueError, UnicodeDecodeError, VlaExportError) as exc:
                errors[i] = f"bad request: {exc}"
        responses = [None] * len(requests)
        for i in releases:  # before the steps: a START of the same robot in this batch is a new sequence
            self.fleet.end(flags[i][0])
            responses[i] = pb_utils.InferenceResponse(output_tensors=[])
        t1 = time.perf_counter()
        try:
            results = self.fleet.execute([r for _, r in parsed])
        except VlaExportError as exc:  # a failure of the batched step itself: every robot of the batch gets it
            results = None
            for i, _ in parsed:
                errors[i] = str(exc)
        t2 = time.perf_counter()
        if results is not None:
            for (i, _), result in zip(parsed, results):
                if result.error is not None:
                    errors[i] = result.error
                else:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[
                        _tensor("ACTION", result.action.astype(np.float32)[None]),
                        _tensor("STEP", np.array([[result.steps]], dtype=np.int64)),
                    ])
        for i, message in errors.items():
            responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
            robot, start, end = flags.get(i, (None, False, False))
            # A refused START leaves its sequence open in Triton, holding a slot until the idle timeout: end it now.
            if start and not end and robot not in self.closing and robot not in self.fleet.robots:
                self._close_sequence(robot)
        t3 = time.perf_counter()
        timing = self.fleet.last_timing
        self.phase_us["parse"].increment((t1 - t0) * 1e6)
        self.phase_us["respond"].increment((t3 - t2) * 1e6)
        if errors:
            self.failures.increment(len(errors))
        if timing is not None:
            self.phase_us["preprocess"].increment(timing.preprocess_ms * 1e3)
            self.phase_us["backbone"].increment(timing.backbone_ms * 1e3)
            self.phase_us["head"].increment(timing.head_ms * 1e3)
        return responses

    def _close_sequence(self, robot):
        """Send this model an END for ``robot``'s sequence (marked RELEASE), from a thread: it runs in a later
        execute() of this instance, after this one has answered. Until it has, the robot's next START is
        refused (it would be ended by this END)."""
        self.closing.add(robot)
        request = pb_utils.InferenceRequest(
            model_name=self.model_name, requested_output_names=[], correlation_id=robot,
            flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
            inputs=[_tensor("FRAME", np.zeros((1, 1, 1, 3), np.uint8)), _tensor(RELEASE, np.ones((1, 1), np.uint8))],
        )

        def send():
            try:
                response = request.exec()
                failed = response.has_error()
                message = response.error().message() if failed else ""
            except Exception as exc:  # noqa: BLE001 - logged: a thread has no caller to raise to
                failed, message = True, str(exc)
            if failed:
                self.closing.discard(robot)
                pb_utils.Logger.log_warn(f"robot {robot}: could not end the refused START's sequence ({message}); "
                                         "Triton frees its slot after the idle timeout")

        threading.Thread(target=send, name=f"vla-export-close-{robot}", daemon=True).start()

    def finalize(self):
        self.fleet.template.close()
        self.phase_us.clear()
        self.failures = None
        self.families.clear()
