"""A ROS 2 node that drives a mobile base with the streaming :class:`vla_export.runtime.Policy`.

Documented example, not run by the test suite (it needs ROS 2 Humble/Jazzy with ``rclpy``; the
robot does not need torch: the parts run on TensorRT or ONNX Runtime).

    # on the robot, after `vla-export onnx policy.pt --split -o engines/policy.onnx`
    # and one `vla-export trt` per part (see the README, "Streaming runtime")
    ros2 run <your_pkg> ros2_policy_node --ros-args \
        -p artifacts:=engines/policy.split.json \
        -p backbone:=engines/policy.backbone.engine -p head:=engines/policy.head.engine \
        -p tokenizer:=/opt/kosmos2-tokenizer -p rate_hz:=5.0

Topics:
  in   /camera/image_raw  sensor_msgs/Image (rgb8 or bgr8), only the newest frame is used
  in   /vla/instruction   std_msgs/String: starts an episode (Policy.reset) with this instruction
  out  /cmd_vel           geometry_msgs/Twist: linear.x, linear.y (and angular.z for 3-action policies)

Behaviour:
  * one Policy.step per timer tick, on the newest frame; a frame older than ``max_frame_age_s`` or no
    instruction yet means no step and a zero Twist (the robot stops rather than act on stale input);
  * the first ``window - 1`` steps after an instruction use the warm-up rule (the window is padded
    with the first frame's feature), exactly as `vla-export replay` checks against the full policy;
  * actions are scaled and clipped as the Mobile VLA server does (x1.15, clip to +-1.5);
  * the last step's latency (Policy.last_timing) is logged, and a step slower than the control
    period is reported.
"""

from __future__ import annotations

import numpy as np
import rclpy
from geometry_msgs.msg import Twist
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

from vla_export.errors import VlaExportError
from vla_export.runtime import Policy


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8/bgr8, any row padding) -> uint8 [H, W, 3] RGB, without cv_bridge."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (rgb8 or bgr8)")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    frame = rows[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
    return frame[..., ::-1].copy() if msg.encoding == "bgr8" else frame


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("vla_policy")
        p = {name: self.declare_parameter(name, default).value for name, default in (
            ("artifacts", "engines/policy.split.json"), ("backbone", ""), ("head", ""), ("tokenizer", ""),
            ("text_len", 0), ("rate_hz", 5.0), ("action_scale", 1.15), ("action_clip", 1.5), ("max_frame_age_s", 0.5),
        )}
        self.scale, self.clip, self.max_age = p["action_scale"], p["action_clip"], p["max_frame_age_s"]
        self.period = 1.0 / p["rate_hz"]
        # Loads the parts once (engine deserialisation, ORT sessions); nothing else is loaded per step.
        self.policy = Policy.from_artifacts(
            p["artifacts"], backbone=p["backbone"] or None, head=p["head"] or None,
            tokenizer_dir=p["tokenizer"] or None, text_len=p["text_len"] or None,
        ).activate()
        self.frame: np.ndarray | None = None
        self.frame_time = None
        self.started = False
        self.cmd = self.create_publisher(Twist, "/cmd_vel", 1)
        self.create_subscription(Image, "/camera/image_raw", self.on_image, 1)  # depth 1: newest frame only
        self.create_subscription(String, "/vla/instruction", self.on_instruction, 1)
        self.create_timer(self.period, self.on_tick)
        self.get_logger().info(f"policy ready: {self.policy.describe()}")

    def on_image(self, msg: Image) -> None:
        self.frame = image_to_rgb(msg)
        self.frame_time = self.get_clock().now()

    def on_instruction(self, msg: String) -> None:
        self.policy.reset(msg.data)  # new episode: empty window, prompt tokenised once
        self.started = True
        self.get_logger().info(f"episode started: {msg.data!r}")

    def on_tick(self) -> None:
        twist = Twist()
        fresh = self.frame_time is not None and (self.get_clock().now() - self.frame_time).nanoseconds * 1e-9 <= self.max_age
        if self.started and fresh:
            try:
                action = np.clip(self.policy.step(self.frame) * self.scale, -self.clip, self.clip)
            except VlaExportError as exc:  # a malformed frame: stop, say why, keep the node alive
                self.get_logger().error(str(exc))
            else:
                twist.linear.x, twist.linear.y = float(action[0]), float(action[1])
                if action.shape[0] > 2:
                    twist.angular.z = float(action[2])
                t = self.policy.last_timing
                msg = f"step {self.policy.steps}: {t.total_ms:.1f} ms (backbone {t.backbone_ms:.1f}, head {t.head_ms:.1f})"
                if t.total_ms > 1e3 * self.period:
                    self.get_logger().warning(msg + f" > control period {1e3 * self.period:.0f} ms")
                else:
                    self.get_logger().debug(msg)
        self.cmd.publish(twist)

    def destroy_node(self) -> None:
        self.cmd.publish(Twist())  # stop the base
        self.policy.close()
        super().destroy_node()


def main() -> None:
    rclpy.init()
    node = PolicyNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
