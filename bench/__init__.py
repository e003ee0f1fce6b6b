"""Ratio benchmarks B1-B7 (see DESIGN.md): each measures ours and a baseline side by side in one run and prints JSON
(also written to `bench/results/<name>.json` with the machine's description). Run one with
`python -m stack run -- .venv/bin/python -m bench.<module> [--help]`."""
