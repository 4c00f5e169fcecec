"""Synthetic tasks with a programmatic gold score: data for the tiny pipeline and its judge."""
