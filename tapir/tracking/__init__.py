"""Tracking for people: `loader` (load_tracker), `core` + `tracker` (offline), `online` (frame by frame), `tapnet`
(the baseline), `queries` (grid, mask, command-line points), `paint` and `rainbow` (tracks drawn on frames), `cli`
(video file in, painted video out), `corpus` (a glob of videos, one tracks file each, split across hosts) and
`live` (a camera, stream or pipe tracked as it comes, newest frame first)."""
