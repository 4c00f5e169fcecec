from coati_ray.evaluation.policy import PolicyEval, evaluate_policy, sample_table

__all__ = ["PolicyEval", "evaluate_policy", "sample_table"]
