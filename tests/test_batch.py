"""The workflow's gating jobs in process (immuno.batch): each FCS file is read once for
its gating in pass 1 (the input check reads HEADER and TEXT only), and again only if
pass 2 gates it; the batch folders give the same tables as the in-process cohort path."""

from __future__ import annotations

import pandas as pd
import pytest

from immuno import batch
from immuno.cohort import check_inputs, gate_cohort, load_sample_sheet, load_templates
from immuno.util import read_tsv


@pytest.fixture(scope="module")
def small(tmp_path_factory, templates_dir):
    from immuno.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("batch")
    simulate_cohort(root / "data", seed=2, events=2000, patients=2)
    panels = {"T": str(templates_dir / "t_cell.yaml"), "B": str(templates_dir / "b_cell.yaml")}
    sheet = load_sample_sheet(root / "data" / "samples.tsv", list(panels))
    return root, sheet, panels


def _counting(monkeypatch) -> list[str]:
    import immuno.read

    reads: list[str] = []
    real = immuno.read.read_fcs

    def read_fcs(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(immuno.read, "read_fcs", read_fcs)
    return reads


def test_each_file_is_read_once_per_pass_and_the_tables_match_the_cohort_path(
    small, tmp_path, monkeypatch
):
    root, sheet, panels = small
    reads = _counting(monkeypatch)
    dirs, again = [], 0
    for panel in panels:
        fits = []
        for pid, rows in sheet[sheet["panel"] == panel].groupby("patient_id", sort=False):
            folder = tmp_path / "fit" / panel / batch.batch_key(pid)
            batch.fit_batch(rows.to_dict("records"), panel, panels[panel], folder)
            fits.append(folder)
        assert sorted(reads) == sorted(sheet.loc[sheet["panel"] == panel, "fcs_path"])
        reads.clear()
        pool = batch.pool_panel(fits, panel, panels[panel], None, tmp_path / f"{panel}.json")
        for folder in fits:
            if pool["batches"][folder.name]["redo"]:
                final = tmp_path / "final" / panel / folder.name
                batch.finish_batch(
                    folder, panel, panels[panel], tmp_path / f"{panel}.json", None, final
                )
                dirs.append(final)
            else:
                dirs.append(folder)
        redo = [s for b in pool["batches"].values() for s in b["redo"]]
        again += len(redo)
        assert sorted(reads) == sorted(sheet.set_index("sample_id").loc[redo, "fcs_path"])
        reads.clear()
    assert again > 0  # pass 2 ran for some samples: its reads were counted
    out = tmp_path / "tables"
    out.mkdir()
    batch.gather_gating(
        dirs,
        sheet,
        counts_path=out / "counts.tsv",
        params_path=out / "params.tsv",
        failed_path=out / "failed.tsv",
        corrections_path=out / "corrections.tsv",
        checks_path=out / "checks.tsv",
        gates_dir=out / "gates",
        memberships_dir=out / "memberships",
    )
    templates = load_templates(panels)
    ref = tmp_path / "ref"
    gate_cohort(
        sheet,
        templates,
        check_inputs(sheet, templates),
        counts_path=ref / "counts.tsv",
        params_path=ref / "params.tsv",
        failed_path=ref / "failed.tsv",
        gates_dir=ref / "gates",
    )
    for name in ("counts.tsv", "params.tsv"):
        pd.testing.assert_frame_equal(read_tsv(out / name), read_tsv(ref / name), obj=name)
    assert sorted(p.name for p in (out / "gates").iterdir()) == sorted(
        f"{s}.xml" for s in sheet["sample_id"]
    )
    assert len(list((out / "memberships").iterdir())) == len(sheet)
