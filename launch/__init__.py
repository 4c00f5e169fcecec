"""Entry points: `python -m launch.<stage> --config configs/X.yaml [a.b=value ...] [--output-dir DIR]`."""
