"""The interval algebra replay measures with; it lives in tracegen/base/intervals.py so that the
generator (in-situ communication, pipeline.py) and replay share one implementation."""
from tracegen.base.intervals import clip, coverage, gaps, intersection, length, overlap, union

__all__ = ["clip", "coverage", "gaps", "intersection", "length", "overlap", "union"]
