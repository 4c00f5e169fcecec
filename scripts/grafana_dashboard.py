"""Write the Grafana dashboard of a coati run: configs/grafana/coati_rlhf.json (committed; a test checks
that it is what this script writes and that every query names a series actors/metrics.py emits).

    python scripts/grafana_dashboard.py

Each panel is one row of PANELS: a title, a unit, and PromQL over Ray's export of our `coati_*` series
(Ray prefixes them `ray_`), tagged `role`, `index` and, for stages, `stage`.
"""

from __future__ import annotations

import json
import os

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(REPO, "configs", "grafana", "coati_rlhf.json")

# (group, title, unit, [(PromQL, legend)])
PANELS = [
    ("throughput", "Experiences per second, per maker and in total", "short", [
        ('ray_coati_experiences_per_second{role="maker"}', "maker-{{index}}"),
        ('sum(ray_coati_experiences_per_second{role="maker"})', "all makers")]),
    ("throughput", "Generated tokens per second, per maker and in total", "short", [
        ('ray_coati_generated_tokens_per_second{role="maker"}', "maker-{{index}}"),
        ('sum(ray_coati_generated_tokens_per_second{role="maker"})', "all makers")]),
    ("buffer", "Replay buffer: fill against capacity (samples)", "short", [
        ('ray_coati_buffer_fill_samples{role="replay_buffer"}', "held"),
        ('ray_coati_buffer_capacity_samples{role="replay_buffer"}', "capacity")]),
    ("staleness", "Staleness consumed (versions behind), batches dropped and lost with a node", "short", [
        ('max by (role) (ray_coati_consumed_staleness)', "{{role}}"),
        ('increase(ray_coati_buffer_dropped_total[5m])', "dropped / 5 min"),
        ('increase(ray_coati_buffer_lost_total[5m])', "lost with a node / 5 min")]),
    ("reward", "Reward and KL to the initial policy (per maker batch)", "short", [
        ('avg(ray_coati_reward_mean{role="maker"})', "reward"),
        ('avg(ray_coati_kl_mean{role="maker"})', "KL per token")]),
    ("episodes", "Multi-turn episodes: turns and tool calls per episode, environment errors / 5 min", "short", [
        ('avg(ray_coati_episode_turns)', "turns"),
        ('avg(ray_coati_episode_tool_calls)', "tool calls"),
        ('avg(ray_coati_episode_tool_errors)', "tool errors"),
        ('sum(increase(ray_coati_episode_env_errors_total[5m]))', "environment errors / 5 min")]),
    ("episodes", "Multi-turn episodes: tokens per episode, trained (policy) and context (environment)", "short", [
        ('avg(ray_coati_episode_trained_tokens)', "trained"),
        ('avg(ray_coati_episode_context_tokens)', "context")]),
    ("loss", "Policy and value loss", "short", [
        ('avg(ray_coati_policy_loss{role="actor_trainer"})', "policy"),
        ('avg(ray_coati_value_loss{role="critic_trainer"})', "value"),
        ('avg by (role) (ray_coati_clip_fraction)', "clip fraction ({{role}})")]),
    ("sync", "Weight sync: seconds per maker load", "s", [
        ('ray_coati_weight_sync_seconds{role="maker"}', "maker-{{index}}"),
        ('ray_coati_stage_seconds{role="driver", stage="sync"}', "sync in the step (driver)")]),
    ("sync", "Weight sync: bytes per second into each maker", "Bps", [
        ('ray_coati_weight_sync_bytes{role="maker"} / ray_coati_weight_sync_seconds{role="maker"}',
         "maker-{{index}}")]),
    ("stages", "Seconds of each stage of a step", "s", [
        ('max by (stage) (ray_coati_stage_seconds)', "{{stage}}")]),
    ("tflops", "TFLOP/s per group (estimated: 2N per token inferred, 6N trained)", "short", [
        ('sum by (role) (ray_coati_tflops)', "{{role}}")]),
]


def dashboard() -> dict:
    panels = []
    for i, (group, title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title, "description": f"group: {group}",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, (expr, legend) in enumerate(queries)],
        })
    return {
        "title": "coati_ray: RLHF run", "uid": "coati-rlhf", "schemaVersion": 39, "version": 1,
        "tags": ["coati_ray", "rlhf", "ray"], "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> None:
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
