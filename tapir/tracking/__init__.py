"""Tracking for people: `tracker` (offline), `online` (frame by frame), `tapnet` (the baseline), `queries` (grid,
mask, command-line points), `paint` (tracks drawn on frames) and `cli` (video file in, painted video out)."""
