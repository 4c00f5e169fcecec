"""Reward functions for tests: `module:function` paths the makers import like a user's."""


def raises(prompts, responses, rows):
    return [1.0 / 0 for _ in responses]
