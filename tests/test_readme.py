"""The README's checkable claims: the action-string example's pose count."""

from __future__ import annotations

import re
from pathlib import Path

from sana_wm.camera import action_to_c2w

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_action_string_example_gives_the_pose_count_it_states():
    examples = re.findall(r'action_to_c2w +# "([^"]+)" → \((\d+), 4, 4\)', README)
    assert examples == [("w-16,l-8", "25")]
    for action, poses in examples:
        assert action_to_c2w(action).shape == (int(poses), 4, 4)
