"""Reward functions for tests: `module:function` paths the makers import like a user's."""


def raises(prompts, responses, rows):
    return [1.0 / 0 for _ in responses]


def hangs_when_flagged(prompts, responses, rows):
    """Scores by length until the file named by the rows' `hang_flag` exists; then writes `<flag>.started`
    and never returns (a maker stuck inside `make`, for the watchdog)."""
    import os
    import time

    flag = rows[0].get("hang_flag") if rows else None
    if flag and os.path.exists(flag):
        with open(flag + ".started", "w") as f:
            f.write(str(time.time()))
        while True:
            time.sleep(3600)
    return [float(len(r)) / 10 for r in responses]
