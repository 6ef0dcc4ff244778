"""The run summary: one row per product from task states and XComs, a note that fits, a log table."""

from __future__ import annotations

from typing import Any

from hortacloud.summary import ProductRow, markdown, product_result, text_table
from hortacloud.tasks.upload import summary_rows

PARAMS = {"sample": "2023-05-10", "products": ["images", "segmentation"], "dry_run": False}
PLANNED = {
    "images": [{"role": "shard", "prefix": "images/2023-05-10/ktx/"}],
    "segmentation": [{"prefix": "segmentation/2023-05-10/stitching-output"}],
}
XCOMS: dict[tuple[str, str], Any] = {
    ("images.publish", "return_value"): {
        "verified": True,
        "manifest": {"key": "manifests/2023-05-10/images.json", "objects": 640, "bytes": 3 * 2**30},
    },
    ("images.upload", "return_value"): [
        {"files_uploaded": 300, "bytes_uploaded": 2**30, "files_skipped": 10},
        {"files_uploaded": 330, "bytes_uploaded": 2**31, "files_skipped": 0},
    ],
    ("segmentation.transfer", "lsf_job"): [{"job_id": "9148559"}, {"job_id": "9148560"}],
}


def pull(task_id: str, key: str) -> Any:
    return XCOMS.get((task_id, key))


def test_rows_say_what_each_product_did() -> None:
    states = {
        "plan": "success",
        "images.upload_0": "success",
        "images.upload_1": "success",
        "images.publish": "success",
        "segmentation.jobs": "success",
        "segmentation.transfer_0": "success",
        "segmentation.transfer_1": "failed",
        "segmentation.verify": "upstream_failed",
        "tracings.jobs": "skipped",
    }
    rows = {row.product: row for row in summary_rows(PARAMS, PLANNED, states, pull)}
    images, segmentation = rows["images"], rows["segmentation"]
    assert (images.result, images.uploaded, images.uploaded_bytes, images.already_there) == (
        "published",
        630,
        3 * 2**30,
        10,
    )
    assert (images.verified, images.objects, images.prefixes) == (True, 640, ["images/2023-05-10/"])
    assert segmentation.result == "failed" and segmentation.verified is False
    assert segmentation.jobs == ["9148559", "9148560"]
    assert segmentation.prefixes == ["segmentation/2023-05-10/stitching-output"]
    assert rows["tracings"].result == "not chosen" and rows["tracings"].prefixes == []


def test_product_results() -> None:
    assert product_result(["success", "skipped"], chosen=True, dry_run=True) == "dry run"
    assert product_result(["success", "running"], chosen=True, dry_run=False) == "running"
    assert product_result(["success", "up_for_retry"], chosen=True, dry_run=False) == "failed"
    assert product_result([], chosen=False, dry_run=False) == "not chosen"


def test_the_note_links_each_prefix_and_fits_airflows_limit() -> None:
    row = ProductRow("images", "published", 630, 3 * 2**30, 10, True, 640, 3 * 2**30, ["images/2023-05-10/"])
    url = "https://{bucket}.s3.amazonaws.com/?list-type=2&delimiter=/&prefix={prefix}"
    note = markdown("2023-05-10: images (done)", [row], "janelia-mouselight-imagery", url, 1000)
    assert note.splitlines()[0] == "2023-05-10: images (done)"
    assert (
        "[images/2023-05-10/](https://janelia-mouselight-imagery.s3.amazonaws.com/?list-type=2&delimiter=/"
        "&prefix=images/2023-05-10/)" in note
    )
    assert "| images | published | 630 (3.00 GiB) | 10 | yes | 640 (3.00 GiB) |" in note
    many = [ProductRow(f"p{i}", "failed", prefixes=[f"p{i}/2023-05-10/" * 4]) for i in range(30)]
    clipped = markdown("t", many, "b", url, 1000)
    assert len(clipped) <= 1000 and "more: see the summary task's log" in clipped


def test_the_log_table_names_full_s3_prefixes() -> None:
    lines = text_table([ProductRow("carveouts", "published", jobs=["1"], prefixes=["carveouts/2023-05-10/"])], "b")
    assert lines[0].split()[:2] == ["product", "result"]
    assert lines[1].startswith("carveouts  published") and lines[1].endswith("s3://b/carveouts/2023-05-10/")
