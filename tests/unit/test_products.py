"""Trigger-value checks and the plan: which folders go where, and the clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.localsite import cluster_roots, image_bases, site_toml
from devstack.sampletree import make_sample
from hortacloud.config import load_config
from hortacloud.products import PlanError, parse_request, plan_sample
from hortacloud.sample import InvalidRequest


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ("2023-02-30", "not a calendar date"),
        ("../x", "expected a sample date as YYYY-MM-DD"),
        ("2023-05-10; rm -rf ~", "expected a sample date as YYYY-MM-DD"),
        ("2023-5-10", "expected a sample date as YYYY-MM-DD"),
        (20230510, "expected a sample date as YYYY-MM-DD"),
        (None, "expected a sample date as YYYY-MM-DD"),
    ],
)
def test_bad_samples_are_refused_with_the_value_named(sample: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        parse_request({"sample": sample})
    assert repr(sample) in str(err.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"products": ["images", "movies"]}, r"Unknown product\(s\) \['movies'\]"),
        ({"products": []}, "No product chosen"),
        ({"products": "images"}, "is not a list"),
        ({"products": ["images", "images"]}, "names a product twice"),
        ({"segmentation_dirs": ["../etc"]}, "'../etc' is not a folder name"),
        ({"segmentation_dirs": ["/abs"]}, "'/abs' is not a folder name"),
        ({"segmentation_dirs": ["."]}, "'.' is not a folder name"),
        ({"segmentation_dirs": []}, "is not a list of 1 to 64 folder names"),
        ({"segmentation_dirs": ["a", "a"]}, "names a folder twice"),
        ({"image_base": "relative/path"}, "not an absolute folder path"),
        ({"image_base": "/nrs/../etc"}, "the part '..' is not a folder name"),
        ({"dry_run": "yes"}, "not true or false"),
        ({"segmentaton_dirs": ["x"]}, r"Unknown trigger value\(s\) \['segmentaton_dirs'\]"),
    ],
)
def test_bad_values_are_refused(params: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_request({"sample": "2023-05-10", **params})


def test_image_base_is_normalised_and_an_empty_one_means_none() -> None:
    assert parse_request({"sample": "2023-05-10", "image_base": "//nrs//mouselight/SAMPLES/"}).image_base == (
        "/nrs/mouselight/SAMPLES"
    )
    assert parse_request({"sample": "2023-05-10", "image_base": ""}).image_base is None
    assert parse_request({"sample": "2023-05-10", "image_base": None}).image_base is None


def test_products_come_back_in_table_order() -> None:
    request = parse_request({"sample": "2023-05-10", "products": ["tracings", "images"]})
    assert request.products == ["images", "tracings"]
    assert request.segmentation_dirs == ["stitching-output"] and request.dry_run is False


@pytest.fixture
def site(tmp_path: Path, site_config):  # type: ignore[no-untyped-def]
    bases, cluster = image_bases(tmp_path), cluster_roots(tmp_path)
    site_config(site_toml({"images": {"bases": bases}, "cluster": cluster}))
    short = {"reg": "registration", "seg": "segmentation", "fin": "finished_neurons", "tc": "tracing_complete"}
    roots = {"nrs": bases[0], "nearline": bases[1], **{name: cluster[key] for name, key in short.items()}}
    roots["funke"], roots["funke2"] = cluster["carveouts"]
    return roots


def _plan(**params):  # type: ignore[no-untyped-def]
    return plan_sample(load_config(), parse_request({"sample": "2023-05-10", **params}))


def test_images_come_from_the_first_base_holding_the_date(site) -> None:
    make_sample(site["nearline"] / "2023-05-10", depth=0)
    make_sample(site["nrs"] / "2023-05-10", depth=0)
    transfers = _plan().transfers["images"]
    assert transfers[0].source == str(site["nrs"] / "2023-05-10" / "ktx")
    assert transfers[0].prefix == "images/2023-05-10/ktx/"
    assert [t.prefix for t in transfers[1:]] == [
        "images/2023-05-10/default.0.tif",
        "images/2023-05-10/default.1.tif",
        "images/2023-05-10/tilebase.cache.yml",
        "images/2023-05-10/transform.txt",
    ]


def test_second_base_and_missing_extra_only_warns(site) -> None:
    make_sample(site["nearline"] / "2023-05-10", depth=0, extras=("transform.txt", "default.1.tif"))
    plan = _plan()
    assert plan.transfers["images"][0].source == str(site["nearline"] / "2023-05-10" / "ktx")
    assert len(plan.transfers["images"]) == 3
    assert len(plan.warnings) == 2 and all("does not exist" in warning for warning in plan.warnings)


def test_a_sample_hortacloud_could_not_load_is_refused_unless_preflight_is_skipped(site) -> None:
    make_sample(site["nrs"] / "2023-05-10", depth=0, extras=("transform.txt",))
    with pytest.raises(PlanError, match=r"images: HortaCloud could not load this sample: .*no default\.N\.tif"):
        _plan()
    plan = _plan(skip_preflight=True)
    assert any("published although HortaCloud could not load it (skip_preflight)" in w for w in plan.warnings)
    (site["nrs"] / "2023-05-10" / "transform.txt").write_text("ox: 1.5\n")
    with pytest.raises(PlanError, match=r"transform.txt: no oy|ox '1.5' is not an integer"):
        _plan()


def test_image_base_overrides_the_search(site, tmp_path: Path) -> None:
    make_sample(site["nrs"] / "2023-05-10", depth=0)
    other = make_sample(tmp_path / "elsewhere" / "2023-05-10-rerender", depth=0)
    assert _plan(image_base=str(other)).transfers["images"][0].source == str(other / "ktx")


def test_obsolete_naming_is_refused(site) -> None:
    folder = make_sample(site["nrs"] / "2023-05-10", depth=1)
    (folder / "ktx" / "block_8_xy_.ktx").rename(folder / "ktx" / "block_2023-05-10_8_xy_.ktx")
    with pytest.raises(PlanError, match="obsolete naming scheme"):
        _plan()


def test_missing_sample_names_the_bases(site) -> None:
    with pytest.raises(PlanError, match=f"no folder for sample 2023-05-10 in {site['nrs']} or {site['nearline']}"):
        _plan()


def test_cluster_products_keep_the_old_job_names(site) -> None:
    (site["reg"] / "2023-05-10").mkdir(parents=True)
    for sub in ("stitching-output", "other"):
        (site["seg"] / "2023-05-10" / sub).mkdir(parents=True)
    (site["fin"] / "2023-05-10").mkdir(parents=True)
    (site["tc"] / "2023-05-10").mkdir(parents=True)
    (site["funke2"] / "2023-05-10").mkdir(parents=True)
    plan = _plan(
        products=["registration", "segmentation", "tracings", "carveouts"],
        segmentation_dirs=["stitching-output", "missing", "other"],
    )
    assert [(t.job_name, t.prefix) for t in plan.transfers["registration"]] == [("reg0510", "registration/2023-05-10/")]
    assert [(t.job_name, t.source) for t in plan.transfers["segmentation"]] == [
        ("seg0510-1", str(site["seg"] / "2023-05-10" / "stitching-output")),
        ("seg0510-2", str(site["seg"] / "2023-05-10" / "other")),
    ]
    assert [(t.job_name, t.prefix) for t in plan.transfers["tracings"]] == [
        ("tra0510-1", "tracings/Finished_Neurons/2023-05-10/"),
        ("tra0510-2", "tracings/tracing_complete/2023-05-10/"),
    ]
    assert [(t.job_name, t.prefix) for t in plan.transfers["carveouts"]] == [("crv0510-1", "carveouts/2023-05-10/")]
    assert plan.transfers["images"] == []
    assert any("missing does not exist" in w for w in plan.warnings)
    assert any(str(site["funke"] / "2023-05-10") in w for w in plan.warnings)
    lines = plan.script_lines(load_config())
    assert lines[0] == (
        f"bsub -J reg0510 -n 4 -P mouselight 'aws s3 sync {site['reg']}/2023-05-10/ "
        "s3://janelia-mouselight-imagery/registration/2023-05-10/'"
    )


def test_every_chosen_product_with_nothing_is_reported_at_once(site) -> None:
    with pytest.raises(PlanError) as err:
        _plan(products=["images", "registration", "carveouts"])
    text = str(err.value)
    assert "images: no folder" in text and "registration: nothing to upload" in text and "carveouts:" in text
