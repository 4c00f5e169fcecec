"""Turning a run directory into numbers a person reads: tables, PNG curves, markdown (no Ray here)."""
