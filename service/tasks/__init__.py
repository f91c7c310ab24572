"""Named tasks: versions, calibration from shadow samples, offline evaluation and its plot."""
