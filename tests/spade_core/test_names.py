"""Readable class names of dataset categories."""

import pytest

from spade_core.names import readable_name


@pytest.mark.parametrize(("name", "readable"), [
    ("wall-other-merged", "wall"), ("tree-merged", "tree"), ("door-stuff", "door"), ("sky-other-merged", "sky"),
    ("playingfield", "playingfield"), ("dining_table", "dining table"), ("in-front-of", "in front of"),
    ("parked on", "parked on"), ("other", "other"),
])
def test_readable_name(name, readable):
    assert readable_name(name) == readable
