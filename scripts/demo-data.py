"""Create the built-in demo cohort once, before the workflow runs (`make demo`).

Reads the config's `demo:` block (out, seed, events); does nothing when the config's
sample sheet is not the demo's or already exists. The workflow itself never writes data
while it is parsed (`snakemake -n` and `--lint` write nothing)."""

import sys
from pathlib import Path

import yaml

from immuno.simulate import simulate_cohort

config = yaml.safe_load(Path(sys.argv[1] if len(sys.argv) > 1 else "config.yaml").read_text())
demo = config.get("demo") or {}
out = Path(demo.get("out", "data/demo"))
sheet = Path(config["samples"])
if sheet.resolve() == (out / "samples.tsv").resolve() and not sheet.exists():
    print(f"Creating the demo cohort in {out} (once).", flush=True)
    simulate_cohort(out, seed=demo.get("seed", 1), events=demo.get("events", 20000))
