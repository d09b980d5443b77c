"""Helpers of the load benchmark driven by ``bench/run.py``: process control, config rendering,
load generators and their parsers, the report. Not a test suite."""
