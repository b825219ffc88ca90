"""The demo's stories, one module each; ``--story NAME`` picks one (``regression`` by default;
``quality``: a candidate worse only in its answers, held in shadow by the judge;
``quality-split``: the same on a plan without shadow, rolled back on task_completed).
A new story is a module here with a :class:`controlplane.demo.story.Story` subclass, named
below."""

from __future__ import annotations

from controlplane.demo.stories.quality import Quality, QualitySplit
from controlplane.demo.stories.regression import Regression
from controlplane.demo.story import Story

STORIES: dict[str, type[Story]] = {
    "regression": Regression,
    "quality": Quality,
    "quality-split": QualitySplit,
}
DEFAULT_STORY = "regression"
