"""Pre-flight loadability: transform.txt as JACS parses it, the root block's KTX header, a tiff for the SWC import."""

from __future__ import annotations

from pathlib import Path

import pytest

from hortacloud.preflight import PreflightError, check_root_block, check_tiffs, check_transform, ktx_header

GOOD = "# written by tiff2octree\nOX: 75000000\noy: 12000000\noz: -30000000\nsx: 250.5\nsy: 250\nsz: 1000\nnl: 7\n"


def test_a_good_transform_parses_as_jacs_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "transform.txt"
    path.write_text(GOOD)
    values = check_transform(path)
    assert values["ox"] == "75000000" and values["sx"] == "250.5" and values["nl"] == "7"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (GOOD.replace("oy: 12000000", "oy: 12000000.5"), "oy '12000000.5' is not an integer"),
        (GOOD.replace("nl: 7\n", ""), "no nl"),
        (GOOD.replace("sz: 1000", "sz: thick"), "sz 'thick' is not a number"),
        (GOOD + "garbage line\n", "is not 'key: value'"),
    ],
)
def test_a_bad_transform_is_refused_naming_the_file_and_the_rule(tmp_path: Path, text: str, rule: str) -> None:
    path = tmp_path / "transform.txt"
    path.write_text(text)
    with pytest.raises(PreflightError, match=rule) as err:
        check_transform(path)
    assert str(path) in str(err.value)


def test_the_root_block_needs_the_ktx_identifier_and_the_keys_horta_reads(tmp_path: Path) -> None:
    good = tmp_path / "good.ktx"
    good.write_bytes(ktx_header({"multiscale_total_levels": "7", "corner_xyzs": "[...]"}) + b"\0" * 100)
    assert check_root_block(good)["multiscale_total_levels"] == "7"
    lacking = tmp_path / "lacking.ktx"
    lacking.write_bytes(ktx_header({"multiscale_total_levels": "7"}))
    with pytest.raises(PreflightError, match="has no corner_xyzs"):
        check_root_block(lacking)
    garbage = tmp_path / "garbage.ktx"
    garbage.write_bytes(b"\x89PNG not a ktx file" * 10)
    with pytest.raises(PreflightError, match="KTX file identifier"):
        check_root_block(garbage)


def test_at_least_one_default_tif(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match=r"no default\.N\.tif"):
        check_tiffs(tmp_path, ["default.0.tif", "transform.txt"])
    (tmp_path / "default.1.tif").write_bytes(b"x")
    assert check_tiffs(tmp_path, ["default.0.tif", "default.1.tif"]) == ["default.1.tif"]
