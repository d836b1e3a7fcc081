"""The MediaPipe internals behind Face Mesh's direct path, in one place (checked: 0.10.21).

SolutionBase.process builds a NamedTuple class and parses every output message on every call;
on still images facekp needs only the landmark messages' bytes, so it feeds the graph itself as
process() does. Where a MediaPipe lacks these internals, `direct_input` returns None and callers
use the public process() (tested equal). tests/test_face_mesh.py fails when the pinned MediaPipe
no longer has them, so an upgrade cannot fall back silently.
"""
# pylint: disable=protected-access
import mediapipe as mp
from mediapipe.python import packet_creator

try:
  from mediapipe.python._framework_bindings import _packet_getter
except ImportError:
  _packet_getter = None

CHECKED_VERSION = "0.10.21"
TIMESTAMP_STEP = 33333  # what SolutionBase.process adds per image (30 frames a second)


def direct_input(solution, output_stream):
  """(the graph's one image input stream, its packet maker) when `solution` (a SolutionBase) has
  the internals of MediaPipe 0.10 and an `output_stream`, else None."""
  try:
    (stream, kind), = solution._input_stream_type_info.items()
    usable = (kind.value in ("image", "image_frame") and
              output_stream in solution._output_stream_type_info and
              isinstance(solution._graph_outputs, dict) and
              hasattr(solution, "_simulated_timestamp") and
              hasattr(_packet_getter, "_get_serialized_proto_list"))
  except (AttributeError, TypeError, ValueError):
    return None
  return (stream, getattr(packet_creator, f"create_{kind.value}")) if usable else None


def serialized_outputs(solution, direct, image_rgb, output_stream):
  """The serialised messages of `output_stream` for one RGB image, as process() would produce
  them; `direct` is what direct_input returned (not None)."""
  stream, make_packet = direct
  solution._graph_outputs.clear()
  solution._simulated_timestamp += TIMESTAMP_STEP
  packet = make_packet(image_rgb, image_format=mp.ImageFormat.SRGB)
  solution._graph.add_packet_to_input_stream(
      stream=stream, packet=packet.at(solution._simulated_timestamp))
  solution._graph.wait_until_idle()
  output = solution._graph_outputs.get(output_stream)
  if output is None or output.is_empty():
    return []
  return _packet_getter._get_serialized_proto_list(output)
