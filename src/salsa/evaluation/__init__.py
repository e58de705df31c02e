"""The parts of `salsa eval`: pure statistics, sampling and judging, matched-KL planning, the summary."""
