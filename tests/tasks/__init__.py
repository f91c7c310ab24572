"""Named tasks, calibration and offline evaluation."""
