"""The upload DAG's trigger rules as JSON-schema formats, so that a refusal reads as one sentence.

Airflow validates a run's conf against each Param's schema with ``jsonschema`` and answers a failure with HTTP 400
and jsonschema's words: the regex and a dump of the schema. Each Param of the upload DAG therefore also names a
format of ours, whose checker runs the very check the plan step runs again at run time (``hortacloud.sample``)
and raises :class:`ParamRefusal` with that check's message: the form and the REST API then answer, e.g.,
``Invalid input for param segmentation_dirs: segmentation_dirs entry '{{ 7*7 }}' is not a folder name: expected
...``. A ``ParamRefusal`` is a ``ValidationError`` with a message only, so Airflow prints just the message, and it
is raised (not returned as False), so jsonschema cannot replace it with its own "is not a 'format'" line.

The formats are registered when this module is imported: by the DAG file (dag-processor, workers, ``dag.test``)
and by the ``hortacloud`` Airflow plugin (the api-server, which validates triggers). A process without them
ignores the format, and the schema's ``pattern``, ``type`` and ``enum`` keywords still refuse the value, in
jsonschema's words; the plan step refuses it once more.
"""

from __future__ import annotations

from collections.abc import Callable

from jsonschema import FormatChecker, ValidationError

from hortacloud.products import MAX_SEGMENTATION_DIRS, PRODUCT_NAMES
from hortacloud.sample import (
    InvalidRequest,
    check_flag,
    check_folder_names,
    check_optional_absolute_dir,
    check_products,
    check_sample,
)

SAMPLE_FORMAT = "hortacloud-sample"
PRODUCTS_FORMAT = "hortacloud-products"
IMAGE_BASE_FORMAT = "hortacloud-image-base"
FOLDER_NAMES_FORMAT = "hortacloud-folder-names"
FLAG_FORMAT = "hortacloud-flag"


class ParamRefusal(ValidationError):
    """A trigger value refused by one of our formats; ``str()`` is the check's message and nothing else."""


def _format(check: Callable[[object], object]) -> Callable[[object], bool]:
    def checker(value: object) -> bool:
        try:
            check(value)
        except InvalidRequest as err:
            raise ParamRefusal(str(err)) from None
        return True

    return checker


FORMATS: dict[str, Callable[[object], bool]] = {
    SAMPLE_FORMAT: _format(check_sample),
    PRODUCTS_FORMAT: _format(lambda value: check_products(value, PRODUCT_NAMES)),
    IMAGE_BASE_FORMAT: _format(lambda value: check_optional_absolute_dir(value, "image_base")),
    FOLDER_NAMES_FORMAT: _format(lambda value: check_folder_names(value, "segmentation_dirs", MAX_SEGMENTATION_DIRS)),
    FLAG_FORMAT: _format(lambda value: check_flag(value, "Value")),
}


def register_formats() -> None:
    """Add the formats to jsonschema's ``FormatChecker`` registry, which every ``FormatChecker()`` copies."""
    for name, checker in FORMATS.items():
        # raises=(): the checker's ParamRefusal must escape the format check, not become "is not a 'format'".
        FormatChecker.checkers[name] = (checker, ())


register_formats()
