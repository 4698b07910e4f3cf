"""Regenerate docs/arena.png and docs/leaderboard.png: the blind arena before and after a vote, and
the room's leaderboard, in the real UI (Chromium, 1280 px) on the bundled model's backends.

Some votes come first through the app's API (``/arena_battle``, ``/arena_vote_*``) so that the
leaderboard has something to rank; the pictured battle is made in the page.

    .venv/bin/python scripts/screenshot_arena.py [--votes 12]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import browser_flow as flow  # noqa: E402

POOL = "smollm2-onnx,smollm2-openvino,smollm2-transformers"
PROMPTS = ["Name a colour.", "Why is the sky blue? One sentence.", "Give me a word that rhymes with cat.",
           "What is 2 + 2?", "Say hello in French."]


def main() -> int:
    from gradio_client import Client

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp, \
            flow.running_app(PLAYGROUND_ARENA_TARGETS=POOL, PLAYGROUND_DB=str(Path(tmp) / "runs.sqlite")) as url, \
            flow.chromium() as browser:
        client = Client(url, verbose=False)
        for n in range(args.votes):
            client.predict(rng.choice(PROMPTS), "demo", api_name="/arena_battle")
            client.predict(api_name=f"/arena_vote_{rng.choice(['a', 'a', 'b', 'tie', 'bad'])}")
            print(f"vote {n + 1}", flush=True)
        page = flow.new_page(browser, {"width": 1280, "height": 820})
        page.goto(url + "?room=demo", wait_until="domcontentloaded")
        page.get_by_role("tab", name="Arena").click()
        page.locator("#arena-prompt textarea").fill("Explain in two sentences why leaves change colour.")
        page.locator("#arena-battle").click()
        page.locator("#arena-vote-a").wait_for(state="visible", timeout=300_000)
        page.locator("#arena-vote-a").click()
        page.wait_for_function("() => document.querySelector('#arena-reveal').innerText.includes('was')",
                               timeout=30_000)
        page.screenshot(path=str(args.out / "arena.png"))
        page.get_by_role("tab", name="Leaderboard").click()
        page.wait_for_function("() => document.querySelector('#board-summary').innerText.includes('votes')",
                               timeout=60_000)
        page.wait_for_function("() => document.querySelectorAll('#board-ratings [role=\"row\"].virtual-row').length >= 2",
                               timeout=30_000)
        page.screenshot(path=str(args.out / "leaderboard.png"))
        print(f"wrote {args.out / 'arena.png'} and {args.out / 'leaderboard.png'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
