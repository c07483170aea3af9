"""Hostile and odd input, case by case: every one answers with a result or the project's error.

Usage::

    .venv/bin/python benchmarks/hostile.py [--data ../shared/data] [--every 1]
        [--timeout 5] [--max-mib 500] [--only CATEGORY] [--show-passes]

Each case is one input made wrong in one way, built from a valid one: an FCS file (a
simulated T tube, written as FCS 2.0, 3.0 and 3.1) with one keyword set to one bad value
or truncated; the Gating-ML compliance suite's ``gates5.xml`` and FlowKit's diamond FlowJo
workspace with one attribute set to one bad value; ``gates/t_cell.yaml`` with one field of
one population set to one bad value (or removed); sample sheets, configs and paths that are
not what they claim (FIFOs, directories, devices, symlink loops, over-long names). Each runs
through the entry point a user meets (``read_fcs`` and ``inspect``; ``apply_gates_to_file``
for gating files and templates, on the case's FCS file; ``load_sample_sheet``;
``check_config``) in a process of its own (forked, so imports are paid once), killed after
``--timeout`` seconds.

A case passes when it returns, or raises an :class:`~immuno.errors.ImmunoError` that names
the file (the config cases have none), within the time and under ``--max-mib`` of memory
(the forked process's peak RSS beyond its RSS when it started, plus the 150 MiB a process
holds once its libraries are imported: what the case would take as a process of its own),
and ``inspect`` prints exactly one line. Anything else fails: another exception
(``foreign``), a signal (``crash``), the timeout (``hang``), the memory (``memory``), an
error without its file (``no_file``), or output beside instead of inside the output folder
(``escaped``).

Prints a Markdown table per category (cases, passes, slowest, largest memory) and every
failure; exits 1 on any. ``--every N`` runs every N-th case of each category (the test
suite runs a sample this way: ``tests/test_hostile.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # forked children must not share BLAS threads

import argparse
import copy
import importlib.util
import io
import json
import re
import select
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
BAD_NUMBERS = ["", "0", "-1", "nan", "inf", "1e308", "9" * 40, "abc", "1,2", "\x00"]
BAD_FCS_VALUES = [*BAD_NUMBERS, "2.5", "\u00e9", "a\nb", "x" * 5000]
FCS_KEYS = [
    "$PAR", "$TOT", "$P1B", "$P1E", "$P1R", "$P1N", "$P1S", "$P3E", "$DATATYPE",
    "$BYTEORD", "$MODE", "$BEGINDATA", "$ENDDATA", "$NEXTDATA", "$SPILLOVER", "$TIMESTEP",
]  # fmt: skip
BAD_YAML = [None, [], {}, "text", -1, 0, 1e9, [1, 2, 3], [[[[["deep"]]]]], {"a": 1}]


@dataclass
class Case:
    category: str
    name: str
    run: Callable[[], None]
    needs_file: bool = True


@dataclass
class Outcome:
    case: Case
    status: str  # pass, foreign, crash, hang, memory, no_file, escaped
    detail: str = ""
    seconds: float = 0.0
    mib: float = 0.0
    extra: dict = field(default_factory=dict)


def _fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_reader", ROOT / "benchmarks/fuzz_reader.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- entry points


def _check_one_line(path: Path) -> None:
    from immuno.read import inspect_files

    out = io.StringIO()
    inspect_files([str(path)], out)
    lines = out.getvalue().splitlines()
    if len(lines) != 1:
        raise AssertionError(f"inspect printed {len(lines)} lines for one file")


def read_and_inspect(path: Path) -> None:
    from immuno.read import read_fcs

    _check_one_line(path)
    read_fcs(path)


def apply_gating(gates: Path, fcs: Path, out: Path, sample_id: str | None = None) -> None:
    from immuno.gating import apply_gates_to_file

    before = set(out.parent.iterdir())
    try:
        apply_gates_to_file(gates, fcs, out=out, sample_id=sample_id)
    finally:
        escaped = set(out.parent.iterdir()) - before - {out}
        if escaped:
            raise AssertionError(f"wrote beside the output folder: {sorted(map(str, escaped))}")


def load_sheet(path: Path) -> None:
    from immuno.cohort import load_sample_sheet

    load_sample_sheet(path, ["T", "B"])


def check_config_dict(config: dict) -> None:
    from immuno.config import check_config

    check_config(config, ROOT / "workflow/schemas/config.schema.yaml", source="config.yaml")


# --------------------------------------------------------------------------- cases


def fcs_cases(work: Path, base: Path) -> Iterator[Case]:
    fz = _fuzz()
    version, kw, delim, data = fz._parse(base.read_bytes())
    for ver in ("FCS2.0", "FCS3.0", "FCS3.1"):
        for key in FCS_KEYS:
            for k, value in enumerate(BAD_FCS_VALUES):
                blob = fz.build_fcs(
                    fz._set(kw, key.encode(), value.encode("utf-8")), data, version=ver
                )
                path = work / f"{ver}_{key[1:]}_{k}.fcs"
                path.write_bytes(blob)
                yield Case("fcs", f"{ver} {key}={value[:12]!r}", lambda p=path: read_and_inspect(p))
        blob = fz.build_fcs(kw, data, version=ver)
        for frac in (0.0, 0.005, 0.02, 0.1, 0.5, 0.9, 0.999):
            path = work / f"{ver}_cut{frac}.fcs"
            path.write_bytes(blob[: int(len(blob) * frac)])
            yield Case("fcs", f"{ver} truncated to {frac:.1%}", lambda p=path: read_and_inspect(p))
        for k, value in enumerate(["", "-1", "99999999", "abcdefgh", "      58"]):
            for field_no in range(6):
                b = bytearray(blob)
                b[10 + 8 * field_no : 18 + 8 * field_no] = value.rjust(8)[:8].encode()
                path = work / f"{ver}_header{field_no}_{k}.fcs"
                path.write_bytes(bytes(b))
                yield Case(
                    "fcs",
                    f"{ver} HEADER offset {field_no} = {value!r}",
                    lambda p=path: read_and_inspect(p),
                )


_ATTR = re.compile(r'([\w:.-]+)="([^"]*)"')


def _attribute_cases(
    category, text: str, work: Path, suffix: str, fcs: Path, keep
) -> Iterator[Case]:
    """One case per attribute of ``text`` (where ``keep(tag, name)``) and bad value."""
    for m in _ATTR.finditer(text):
        tag = text.rfind("<", 0, m.start())
        element = text[tag + 1 : m.start()].split()[0] if tag >= 0 else ""
        if not keep(element, m.group(1)):
            continue
        for k, value in enumerate(BAD_NUMBERS):
            mutated = text[: m.start(2)] + value.replace("\x00", "&#0;") + text[m.end(2) :]
            path = work / f"{category}_{m.start()}_{k}{suffix}"
            path.write_text(mutated)
            out = work / f"{category}_{m.start()}_{k}_out"
            yield Case(
                category,
                f"<{element} {m.group(1)}={value[:12]!r}> (was {m.group(2)[:20]!r})",
                lambda p=path, o=out: apply_gating(p, fcs, o),
            )


def _whole_file_cases(category, suffix, work, fcs, root_open, root_close) -> Iterator[Case]:
    lol = "".join(
        f'<!ENTITY l{i} "{"".join(f"&l{i - 1};" for _ in range(10))}">' for i in range(1, 10)
    )
    specials = {
        "empty": "",
        "binary": "\x00\x01\x02" * 100,
        "not xml": "this is not a gating file",
        "entity bomb": f'<?xml version="1.0"?><!DOCTYPE W [<!ENTITY l0 "lol">{lol}]><W>&l9;</W>',
        "external entity": '<?xml version="1.0"?><!DOCTYPE W [<!ENTITY x SYSTEM "file:///etc/passwd">]><W>&x;</W>',
        "unknown encoding": '<?xml version="1.0" encoding="klingon"?><W/>',
        "nested 1,500 deep": root_open + "<a>" * 1500 + "</a>" * 1500 + root_close,
        "wrong root": "<html><body/></html>",
    }
    for name, text in specials.items():
        path = work / f"{category}_{name.replace(' ', '_').replace(',', '')}{suffix}"
        path.write_text(text)
        out = work / f"{category}_{name.replace(' ', '_')}_out"
        yield Case(category, name, lambda p=path, o=out: apply_gating(p, fcs, o))


def gatingml_cases(work: Path, data: Path) -> Iterator[Case]:
    gml = data / "gatingml2_compliance/Gml2"
    fcs = gml / "FCSFiles/9399_1_3_NKR.fcs"
    text = (gml / "Gating-MLFiles/gates5.xml").read_text()
    yield from _attribute_cases(
        "gatingml", text, work, ".xml", fcs, lambda tag, name: "xmlns" not in name
    )
    root_open = (
        '<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating">'
    )
    yield from _whole_file_cases("gatingml", ".xml", work, fcs, root_open, "</gating:Gating-ML>")


def flowjo_cases(work: Path, data: Path) -> Iterator[Case]:
    folder = data / "flowkit_testdata/data/simple_diamond_example"
    fcs = folder / "test_data_diamond_01.fcs"
    text = (folder / "test_data_diamond_biex_rect.wsp").read_text()

    def keep(tag: str, name: str) -> bool:
        return tag.split(":")[0] in ("gating", "transforms", "data-type") and "xmlns" not in name

    yield from _attribute_cases("flowjo", text, work, ".wsp", fcs, keep)
    root = (
        '<Workspace version="20.0" flowJoVersion="10.7"><SampleList><Sample><SampleNode name="x">'
    )
    yield from _whole_file_cases(
        "flowjo", ".wsp", work, fcs, root, "</SampleNode></Sample></SampleList></Workspace>"
    )


def _set_path(doc, path: tuple, value):
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _REMOVE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_REMOVE = object()


def template_cases(work: Path, fcs: Path) -> Iterator[Case]:
    import yaml

    doc = yaml.safe_load((ROOT / "gates/t_cell.yaml").read_text())
    paths: list[tuple] = [("panel", "compensation"), ("panel", "transforms", "fluor", "T")]
    for i, pop in enumerate(doc["populations"]):
        for key, value in pop.items():
            if key in ("name", "description"):
                continue
            paths.append(("populations", i, key))
            if isinstance(value, dict):
                paths.extend(("populations", i, key, sub) for sub in value)
    for path in paths:
        for k, value in enumerate([*BAD_YAML, _REMOVE]):
            mutated = _set_path(doc, path, value)
            file = work / f"template_{'_'.join(map(str, path))}_{k}.yaml"
            file.write_text(yaml.safe_dump(mutated, sort_keys=False))
            label = "removed" if value is _REMOVE else repr(value)[:20]
            out = work / f"{file.stem}_out"
            yield Case(
                "template",
                f"{'.'.join(map(str, path))} = {label}",
                lambda p=file, o=out: apply_gating(p, fcs, o),
            )
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    specials = {
        "alias bomb": bomb,
        "python tag": "!!python/object/apply:os.system ['echo hi']",
        "deep nesting": "[" * 5000 + "]" * 5000,
        "100,000 populations": "name: T\npopulations:\n"
        + "".join(
            f"  - {{name: p{k}, parent: root, dims: [FSC-A], method: mindensity}}\n"
            for k in range(100_000)
        ),
        "empty": "",
        "not yaml": "\t: : :\n\x00",
        "a list": "- 1\n- 2\n",
    }
    for name, text in specials.items():
        file = work / f"template_{name.replace(' ', '_').replace(',', '')}.yaml"
        file.write_text(text)
        out = work / f"{file.stem}_out"
        yield Case("template", name, lambda p=file, o=out: apply_gating(p, fcs, o))


def sheet_cases(work: Path, fcs: Path) -> Iterator[Case]:
    header = "sample_id\tpatient_id\tdose_group\tvisit_month\tpanel\tfcs_path\n"
    good = f"S1\tP1\t30mg\t0\tT\t{fcs}\n"
    fifo = work / "pipe.fcs"
    os.mkfifo(fifo)
    loop = work / "loop.fcs"
    loop.symlink_to(work / "loop2.fcs")
    (work / "loop2.fcs").symlink_to(loop)
    sheets = {
        "numeric-looking ids": header
        + f"0001\tP1\t30mg\t0\tT\t{fcs}\n0002\tP1\t30mg\t4.5\tT\t{fcs}\n",
        "a quote opening an id": header
        + f'"S1\tP1\t30mg\t0\tT\t{fcs}\nS2\tP1\t30mg\t4.5\tT\t{fcs}\n',
        "duplicate ids": header + good + good,
        "no fcs_path column": "sample_id\tpatient_id\n S1\tP1\n",
        "empty": "",
        "header only": header,
        "a BOM and CRLF": "\ufeff" + (header + good).replace("\n", "\r\n"),
        "commas, not tabs": (header + good).replace("\t", ","),
        "a 240-character id": header + good.replace("S1", "S" * 240, 1),
        "braces in the path": header + f"S1\tP1\t30mg\t0\tT\t{work}/{{x}}.fcs\n",
        "a FIFO as the FCS file": header + f"S1\tP1\t30mg\t0\tT\t{fifo}\n",
        "a directory as the FCS file": header + f"S1\tP1\t30mg\t0\tT\t{work}\n",
        "a device as the FCS file": header + "S1\tP1\t30mg\t0\tT\t/dev/zero\n",
        "a symlink loop as the FCS file": header + f"S1\tP1\t30mg\t0\tT\t{loop}\n",
        "a name too long": header + f"S1\tP1\t30mg\t0\tT\t{work}/{'x' * 300}.fcs\n",
        "a missing FCS file": header + f"S1\tP1\t30mg\t0\tT\t{work}/missing.fcs\n",
        "visit 'baseline'": header + good.replace("\t0\t", "\tbaseline\t"),
        "visit inf": header + good.replace("\t0\t", "\tinf\t"),
        "visit -3": header + good.replace("\t0\t", "\t-3\t"),
        "an unknown panel": header + good.replace("\tT\t", "\tZ\t"),
        "a panel of '..'": header + good.replace("\tT\t", "\t..\t"),
        "non-UTF-8 bytes": None,
        "shell and HTML in fields": header + good.replace("S1", "S1;rm -rf ~<script>", 1),
        "an id with a slash": header + good.replace("S1", "../S1", 1),
        "50,000 rows": header + "".join(f"S{k}\tP1\t30mg\t0\tT\t{fcs}\n" for k in range(50_000)),
    }
    for name, text in sheets.items():
        path = work / f"sheet_{len(os.listdir(work))}.tsv"
        if text is None:
            path.write_bytes(
                header.encode() + b"S\xff1\tP1\t30mg\t0\tT\t" + str(fcs).encode() + b"\n"
            )
        else:
            path.write_text(text)
        yield Case("sheet", name, lambda p=path: load_sheet(p))
    for name, path in {
        "a FIFO": fifo,
        "a directory": work,
        "a symlink loop": loop,
        "a device": Path("/dev/zero"),
    }.items():
        yield Case("sheet", f"{name} as the sheet", lambda p=path: load_sheet(p))


def config_cases() -> Iterator[Case]:
    base = {"samples": "samples.tsv", "panels": {"T": "gates/t_cell.yaml"}}
    configs = {
        "a misspelt key": {**base, "statistcs": {}},
        "a misspelt nested key": {**base, "tests": {"follow_up_month": 6}},
        "panels a list": {**base, "panels": ["T"]},
        "a panel of '..'": {**base, "panels": {"..": "x.yaml"}},
        "a panel with a slash": {**base, "panels": {"a/b": "x.yaml"}},
        "samples a number": {**base, "samples": 3},
        "no panels": {"samples": "s.tsv"},
        "empty": {},
        "demo events 10^9": {**base, "demo": {"events": 10**9}},
        "a deep structure": {**base, "x": [[[[[[[[[[{}]]]]]]]]]]},
    }
    for name, cfg in configs.items():
        yield Case("config", name, lambda c=cfg: check_config_dict(c), needs_file=False)


def _odd_path(work: Path, kind: str, name: str) -> Path:
    """A path named ``name`` in ``work`` that is ``kind`` instead of a regular file."""
    path = work / name
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a directory":
        path.mkdir()
    elif kind == "a symlink loop":
        path.symlink_to(work / f"{name}.loop")
        (work / f"{name}.loop").symlink_to(path)
    elif kind == "a device":
        path.symlink_to("/dev/zero")
    elif kind == "a name too long":
        path = work / ("x" * 300 + name)
    return path  # "missing": nothing there


def path_cases(work: Path, data: Path) -> Iterator[Case]:
    fcs = data / "gatingml2_compliance/Gml2/FCSFiles/data1.fcs"
    gml = data / "gatingml2_compliance/Gml2/Gating-MLFiles/gates1.xml"
    kinds = ("a FIFO", "a directory", "a device", "a symlink loop", "a name too long", "missing")
    for k, kind in enumerate(kinds):
        path = _odd_path(work, kind, f"odd{k}.fcs")
        yield Case("path", f"{kind} as an FCS file", lambda p=path: read_and_inspect(p))
        for suffix in (".xml", ".wsp", ".yaml"):
            gates = _odd_path(work, kind, f"odd{k}{suffix}")
            out = work / f"odd{k}{suffix}_out"
            yield Case(
                "path",
                f"{kind} as a {suffix} gating file",
                lambda g=gates, o=out: apply_gating(g, fcs, o),
            )
    yield Case("path", "a valid pair (control)", lambda: apply_gating(gml, fcs, work / "ok_out"))


# --------------------------------------------------------------------------- running


#: Resident memory of a worker process with the libraries a case uses imported (numpy,
#: pandas, scikit-learn, immuno; measured 130-150 MiB standalone): what a case's process
#: holds before it reads its input.
IMPORTS_MIB = 150.0


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def run_isolated(case: Case, timeout: float, max_mib: float) -> Outcome:
    """Run ``case`` in a forked process: its outcome, wall seconds and memory.

    The memory is what the case's process would hold on its own: the forked process's
    peak RSS (``VmHWM``) less its RSS when it started (it starts with the parent's pages,
    several hundred MiB under pytest), plus :data:`IMPORTS_MIB`."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the case
        os.close(r)
        status, detail = "pass", ""
        start_mib = _status_mib("VmRSS")
        try:
            import faulthandler
            import logging

            faulthandler.disable()  # a crash is the outcome, not a traceback on stderr
            logging.disable(logging.CRITICAL)
            case.run()
        except BaseException as exc:  # noqa: BLE001 - the point is to classify everything
            from immuno.errors import ImmunoError

            detail = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ImmunoError):
                if case.needs_file and not exc.file:
                    status = "no_file"
            elif isinstance(exc, AssertionError) and "beside the output" in str(exc):
                status = "escaped"
            else:
                status = "foreign"
        grown = max(_status_mib("VmHWM") - start_mib, 0.0)
        os.write(w, json.dumps([status, detail[:2000], grown]).encode())
        os._exit(0)
    os.close(w)
    chunks, timed_out = [], False
    deadline = t0 + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, wstatus, usage = os.wait4(pid, 0)
    os.close(r)
    seconds = time.perf_counter() - t0
    mib = usage.ru_maxrss / 1024.0  # until the case reports its own growth
    if timed_out:
        return Outcome(case, "hang", f"killed after {timeout:g} s", seconds, mib)
    if os.WIFSIGNALED(wstatus):
        return Outcome(case, "crash", signal.Signals(os.WTERMSIG(wstatus)).name, seconds, mib)
    status, detail, grown = json.loads(b"".join(chunks) or b'["crash", "no report", 0]')
    mib = IMPORTS_MIB + grown
    if status == "pass" and mib > max_mib:
        status = "memory"
    return Outcome(case, status, detail, seconds, mib)


def all_cases(work: Path, data: Path, only: str | None) -> Iterator[Case]:
    from immuno.simulate import simulate_cohort

    def t_file() -> Path:
        """A simulated T tube (5,000 events), made for the categories that use it."""
        demo = work / "cohort"
        if not demo.exists():
            simulate_cohort(demo, seed=3, events=5000, patients=1)
        return next((demo / "fcs").glob("*_T.fcs"))

    makers = {
        "fcs": lambda d: fcs_cases(d, t_file()),
        "gatingml": lambda d: gatingml_cases(d, data),
        "flowjo": lambda d: flowjo_cases(d, data),
        "template": lambda d: template_cases(d, t_file()),
        "sheet": lambda d: sheet_cases(d, t_file()),
        "config": lambda d: config_cases(),
        "path": lambda d: path_cases(d, data),
    }
    for name, make in makers.items():
        if only in (None, name):
            folder = work / name
            folder.mkdir()
            yield from make(folder)


def _warm_imports() -> None:
    """Import what the cases use once, before forking (each child then starts warm)."""
    import sklearn.mixture  # noqa: F401
    import yaml  # noqa: F401

    import immuno.autogate  # noqa: F401
    import immuno.cohort  # noqa: F401
    import immuno.config  # noqa: F401
    import immuno.gating  # noqa: F401


def run_suite(
    data: Path, *, every: int = 1, timeout: float = 5.0, max_mib: float = 500.0, only=None
):
    """Every ``every``-th case of each category: the list of :class:`Outcome`."""
    _warm_imports()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="immuno-hostile-") as tmp:
        seen: dict[str, int] = {}
        for case in all_cases(Path(tmp), data, only):
            k = seen.get(case.category, 0)
            seen[case.category] = k + 1
            if k % every == 0:
                outcomes.append(run_isolated(case, timeout, max_mib))
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    lines = [
        "| category | cases | pass | fail | slowest s | largest MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cats = list(dict.fromkeys(o.case.category for o in outcomes))
    for cat in [*cats, None]:
        group = [o for o in outcomes if cat is None or o.case.category == cat]
        if not group:
            continue
        npass = sum(o.status == "pass" for o in group)
        lines.append(
            f"| {cat or '**all**'} | {len(group)} | {npass} | {len(group) - npass} | "
            f"{max(o.seconds for o in group):.2f} | {max(o.mib for o in group):.0f} |"
        )
    fails = [o for o in outcomes if o.status != "pass"]
    if fails:
        lines += ["", "Failures:", ""]
        lines += [
            f"- {o.case.category}: {o.case.name}: **{o.status}** {o.detail[:300]}" for o in fails
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA_DIR)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--max-mib", type=float, default=500.0)
    ap.add_argument("--only", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    outcomes = run_suite(
        args.data, every=args.every, timeout=args.timeout, max_mib=args.max_mib, only=args.only
    )
    print(summary(outcomes))
    print(f"\n{len(outcomes)} cases in {time.perf_counter() - t0:.0f} s")
    return 1 if any(o.status != "pass" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
