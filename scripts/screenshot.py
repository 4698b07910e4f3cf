"""Regenerate docs/screenshot.png: the real UI mid-comparison, both columns streaming, at 1280x800.

It replays the browser tests' flow (tests/browser_flow.py) against ``python app.py`` on loopback:
load both models, pick the two bundled targets, run a prompt, then start a long answer
and photograph the page once both columns are streaming, before pressing Stop.

    .venv/bin/python scripts/screenshot.py [--out docs/screenshot.png]

Needs the dev requirements (playwright) and Debian's Chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import browser_flow as flow  # noqa: E402

#: a prompt whose answer reads well mid-stream; sampled (temperature 0.7) so the small model does not loop
PROMPT = "Explain how a rainbow forms, step by step, in detail."
ATTEMPTS = 3  # a sampled answer can end before both columns have written enough: then try again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--min-chars", type=int, default=12,
                        help="how much each column must have written before the picture (default 12)")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def shoot(page: object) -> None:
        # frame the comparison: the target pickers at the top, the prompt and buttons at the bottom
        page.evaluate("document.querySelector('#col-0-target').scrollIntoView({block: 'start'})")
        page.evaluate("window.scrollBy(0, -16)")
        page.screenshot(path=str(args.out))
        print(f"wrote {args.out}", flush=True)

    with flow.running_app() as url, flow.chromium() as browser, tempfile.TemporaryDirectory() as tmp:
        print("loading both models…", flush=True)
        flow.warm_up(url)
        page = flow.new_page(browser, flow.DESKTOP)
        print("a first comparison…", flush=True)
        flow.compare(page, url, Path(tmp))
        for attempt in range(1, ATTEMPTS + 1):
            try:
                flow.long_answer_then_stop(page, prompt=PROMPT, temperature=0.7, max_tokens=4000,
                                           min_chars=args.min_chars, while_streaming=shoot)
                return 0
            except flow.ColumnEndedEarly as exc:
                print(f"attempt {attempt}: {exc}; again", flush=True)
    print("no screenshot: the columns never streamed together", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
