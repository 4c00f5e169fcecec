"""The Experience batch and how one is made from the actor, initial, reward and critic models."""

from coati_ray.experience.batch import Experience, concat
from coati_ray.experience.make import ExperienceModels, make_experience

__all__ = ["Experience", "concat", "ExperienceModels", "make_experience"]
