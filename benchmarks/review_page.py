"""How fast the gate review page opens with thousands of samples, in headless chromium.

Usage:
    python benchmarks/review_page.py [--review results/review] [--samples 5000] [--repeats 5]

Builds a page of ``--samples`` samples from a workflow run's review folder (after ``make
demo``): its records repeated under new ids, their thumbnails and figures linked, in a
scratch folder; then opens it in Debian's chromium (playwright, ``/usr/bin/chromium``)
``--repeats`` times and prints the median time from navigation until the grid holds the
first gate's cell of every sample of its panel and the first row's thumbnails have
loaded, and until the flagged-only filter has re-rendered the grid.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    from immuno.review import write_review_page

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--review", type=Path, default=Path("results/review"))
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    page_text = (args.review / "index.html").read_text()
    blob = re.search(r'type="application/json">(.*?)</script>', page_text, re.S).group(1)
    base = json.loads(blob)["samples"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "thumbs").mkdir()
        (out / "figures").mkdir()
        records = []
        for i in range(args.samples):
            src = base[i % len(base)]
            sid = f"{src['id']}_{i:05d}"
            records.append({**src, "id": sid})
            for sub in ("thumbs", "figures"):
                (out / sub / f"{sid}.png").symlink_to(
                    (args.review / sub / f"{src['id']}.png").resolve()
                )
        write_review_page(records, out / "index.html")
        size = (out / "index.html").stat().st_size
        opened, filtered = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for _ in range(args.repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                t0 = time.perf_counter()
                page.goto((out / "index.html").as_uri())
                page.wait_for_function(
                    "document.querySelectorAll('.cell').length > 0"
                    " && document.querySelectorAll('.cell').length"
                    " == parseInt(document.getElementById('shown').textContent)"
                    " && [...document.querySelectorAll('.thumb img')].slice(0, 5)"
                    ".every(i => i.complete && i.naturalWidth > 0)"
                )
                cells = page.locator(".cell").count()
                opened.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                page.check("#flagged")
                page.wait_for_function(
                    f"!document.getElementById('shown').textContent.startsWith('{cells} ')"
                )
                filtered.append(time.perf_counter() - t0)
                page.close()
            browser.close()
    print(
        f"{args.samples} samples ({cells} cells for the first gate), index.html {size / 1e6:.1f} MB"
    )
    print(
        f"open to the full grid with thumbnails: median {statistics.median(opened):.2f} s "
        f"(runs: {', '.join(f'{t:.2f}' for t in opened)})"
    )
    print(f"flagged-only filter: median {statistics.median(filtered):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
