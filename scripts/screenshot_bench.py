"""Regenerate docs/benchmark.png and docs/benchmark-phone.png: benchmark mode's statistics and charts
in the real UI, after Repeat 5 on the two bundled targets (Chromium at 1280x800, and at 390 px).

    .venv/bin/python scripts/screenshot_bench.py [--repeat 5]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with flow.running_app() as url, flow.chromium() as browser, tempfile.TemporaryDirectory() as tmp:
        print("loading both models…", flush=True)
        flow.warm_up(url)
        for name, viewport, top in (("benchmark.png", {"width": 1280, "height": 900}, "#bench-summary"),
                                    ("benchmark-phone.png", {"width": flow.PHONE["width"], "height": 700},
                                     "#bench-charts")):
            page = flow.new_page(browser, viewport)
            flow.benchmark(page, url, Path(tmp), repeat=args.repeat, max_tokens=32,
                           prompt="Explain in three sentences why the sky is blue.")
            page.evaluate(f"document.querySelector('{top}').scrollIntoView({{block: 'start'}})")
            page.evaluate("window.scrollBy(0, -8)")
            page.screenshot(path=str(args.out / name))
            print(f"wrote {args.out / name}", flush=True)
            page.context.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
