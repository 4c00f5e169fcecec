#!/usr/bin/env bash
# `make dashboard-screenshot`: the README's picture of a coati run in the Ray dashboard, taken the way a
# user gets there. Starts a `ray start` head (token auth on, dashboard on 127.0.0.1), submits the tiny
# PPO job with `ray job submit`, logs into the dashboard in headless Chromium with the cluster's token
# and saves the Actors page to docs/dashboard_actors.png, then stops the job and the head.
# Needs Debian's chromium (installed here with apt-get when missing) and playwright (pip, in its own venv
# under runs/; it drives the system Chromium and downloads no browser). Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token
export PATH="$PWD/.venv/bin:$PATH"  # the job's `python` is the one on the head's PATH: ours, as an activated venv
py=.venv/bin/python
ray_cli=.venv/bin/ray
work=runs/screenshot
port=${RAY_PORT:-26379}
dash=${DASHBOARD_PORT:-28265}
mkdir -p "$work" docs
command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
if [ ! -x runs/venv-playwright/bin/python ]; then
  python3 -m venv runs/venv-playwright
  runs/venv-playwright/bin/pip install -q playwright==1.49.1
fi
"$py" - "$work/rm" <<'PY'
import os, sys, torch
from coati_ray.models import RewardModel
out = sys.argv[1]
if not os.path.isfile(os.path.join(out, "value_head.safetensors")):
    torch.manual_seed(0)
    RewardModel.from_pretrained("assets/models/tiny-llama").save_pretrained(out)
PY
"$ray_cli" get-auth-token --generate >/dev/null 2>&1 || true
cleanup() { "$ray_cli" stop --force >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$ray_cli" start --head --port "$port" --dashboard-host 127.0.0.1 --dashboard-port "$dash" --num-cpus 2 \
  --disable-usage-stats >/dev/null
export RAY_ADDRESS="http://127.0.0.1:$dash"
job=$("$ray_cli" job submit --no-wait --working-dir . -- python -m launch.ppo --config configs/ppo_tiny.yaml \
  actor.path="$PWD/assets/models/tiny-llama" critic.path="$PWD/assets/models/tiny-llama" \
  reward_model.path="$PWD/$work/rm" data.prompt_path="$PWD/data/prompts/train.jsonl" algorithm.max_steps=3000 \
  --output-dir "$PWD/$work/ppo" --overwrite 2>&1 | grep -o "raysubmit_[A-Za-z0-9]*" | head -1)
echo "submitted $job; waiting for its actors"
for _ in $(seq 1 90); do
  if "$ray_cli" list actors --filter "state=ALIVE" 2>/dev/null | grep -q "replay-buffer"; then break; fi
  sleep 2
done
sleep 10  # a few steps, so the Actors page shows work under way
token=$("$ray_cli" get-auth-token 2>/dev/null | tail -1)
set +e
runs/venv-playwright/bin/python - "http://127.0.0.1:$dash" "$token" docs/dashboard_actors.png <<'PY'
import sys
from playwright.sync_api import sync_playwright
url, token, out = sys.argv[1:4]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    def log_in():  # Ray's "Authentication Token Required" dialog: paste the token, as a user would
        dialog = page.get_by_role("dialog")
        try:
            dialog.wait_for(timeout=15000)
        except Exception:
            return
        dialog.locator("input").first.fill(token)
        dialog.get_by_role("button", name="Submit").click()
        dialog.wait_for(state="hidden", timeout=15000)

    page.goto(f"{url}/#/actors")
    log_in()
    page.goto(f"{url}/#/actors")
    page.reload()
    log_in()
    try:
        page.get_by_text("replay-buffer").first.wait_for(timeout=60000)
    except Exception:
        page.screenshot(path=out.replace(".png", "_failed.png"), full_page=True)
        print("the Actors page never showed replay-buffer; it showed:", page.inner_text("body")[:1500])
        raise
    page.wait_for_timeout(3000)
    page.screenshot(path=out, full_page=True)
    text = page.inner_text("body")
    browser.close()
missing = [n for n in ("maker-0", "actor-trainer-0", "critic-trainer-0", "replay-buffer") if n not in text]
print(f"saved {out}" + (f"; not on the page: {missing}" if missing else ""))
sys.exit(1 if missing else 0)
PY
status=$?
set -e
if [ "$status" -ne 0 ]; then
  echo "the job's log:"; "$ray_cli" job logs "$job" 2>&1 | tail -20; exit 1
fi
"$ray_cli" job stop "$job" >/dev/null 2>&1 || true
