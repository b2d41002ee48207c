"""Calibration of learnable pruning schedules for ``svlm fit`` (installed as ``svlm.calibrate``)."""
