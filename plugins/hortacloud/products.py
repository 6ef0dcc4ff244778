"""The product table and the plan: which source folders of a sample go where in the bucket.

Every product is one row of ``PRODUCTS``; the upload DAG builds one TaskGroup per row and the plan step resolves
each chosen row to concrete transfers. Pure Python: nothing here talks to S3, LSF or Airflow.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from hortacloud.config import SiteConfig
from hortacloud.preflight import PreflightError, preflight
from hortacloud.sample import (
    check_flag,
    check_folder_names,
    check_known_keys,
    check_optional_absolute_dir,
    check_products,
    check_sample,
)

log = logging.getLogger(__name__)

Mechanism = Literal["s3sync", "lsf"]


class PlanError(ValueError):
    """A chosen product cannot be uploaded as asked; the message says which and why."""


@dataclass(frozen=True)
class Transfer:
    """One folder (or file) to put under one S3 prefix; ``job_name`` is the old script's ``bsub -J``."""

    product: str
    source: str
    prefix: str
    job_name: str = ""
    is_file: bool = False

    def to_dict(self) -> dict[str, object]:
        """The transfer as a JSON-able dict (XCom)."""
        return asdict(self)


@dataclass
class PlanRequest:
    """The validated trigger values."""

    sample: str
    products: list[str]
    image_base: str | None = None
    segmentation_dirs: list[str] = field(default_factory=lambda: ["stitching-output"])
    dry_run: bool = False
    skip_preflight: bool = False


@dataclass
class ProductPlan:
    """What resolving one product found: its transfers, and warnings for optional sources that are missing."""

    transfers: list[Transfer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


Resolver = Callable[[SiteConfig, PlanRequest], ProductPlan]


@dataclass(frozen=True)
class Product:
    """A row of the product table."""

    name: str
    title: str
    mechanism: Mechanism
    resolve: Resolver
    description: str
    #: Its sources all go to one prefix, in order, the later winning where two hold the same path: one LSF job
    #: runs them one after the other, and the verification expects the last source's file for every key.
    overlay: bool = False


def _mmdd(sample: str) -> str:
    return sample[5:7] + sample[8:10]


def _resolve_images(config: SiteConfig, request: PlanRequest) -> ProductPlan:
    plan = ProductPlan()
    if request.image_base:
        base = request.image_base
        if not os.path.isdir(base):
            raise PlanError(f"images: image_base {base!r} is not a folder")
    else:
        candidates = [os.path.join(root, request.sample) for root in config.images.bases]
        found = [path for path in candidates if os.path.isdir(path)]
        if not found:
            raise PlanError(
                f"images: no folder for sample {request.sample} in {' or '.join(config.images.bases)} "
                "(give image_base to name another folder)"
            )
        base = found[0]
    ktx = os.path.join(base, "ktx")
    if not os.path.isdir(ktx):
        raise PlanError(f"images: {base} has no ktx/ folder; nothing to upload")
    if not os.path.isfile(os.path.join(base, config.images.root_block)):
        raise PlanError(
            f"images: {base} uses an obsolete naming scheme ({config.images.root_block} is missing); "
            "re-render it with the current KTX names"
        )
    try:
        preflight(Path(base), config.images.root_block, config.images.files)
    except PreflightError as err:
        if not request.skip_preflight:
            raise PlanError(
                f"images: HortaCloud could not load this sample: {err} (skip_preflight publishes anyway)"
            ) from None
        plan.warnings.append(f"images: published although HortaCloud could not load it (skip_preflight): {err}")
    prefix = f"images/{request.sample}/"
    plan.transfers.append(Transfer("images", ktx, prefix + "ktx/"))
    for name in config.images.files:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            plan.transfers.append(Transfer("images", path, prefix + name, is_file=True))
        else:
            plan.warnings.append(f"images: {path} does not exist; it will not be uploaded")
    return plan


def _folders(
    product: str, sources: Sequence[str], prefixes: Sequence[str], job_prefix: str, *, numbered: bool = True
) -> ProductPlan:
    """One transfer per existing source folder, numbered like the old script (seg0510-1, seg0510-2, ...).

    Registration keeps the old un-numbered name (reg0510).
    """
    plan = ProductPlan()
    for source, prefix in zip(sources, prefixes, strict=True):
        if os.path.isdir(source):
            number = len(plan.transfers) + 1
            job_name = f"{job_prefix}-{number}" if numbered else job_prefix
            plan.transfers.append(Transfer(product, source, prefix, job_name=job_name))
        else:
            plan.warnings.append(f"{product}: {source} does not exist; skipped")
    if not plan.transfers:
        raise PlanError(f"{product}: nothing to upload; none of {', '.join(sources)} exists")
    return plan


def _resolve_registration(config: SiteConfig, request: PlanRequest) -> ProductPlan:
    source = os.path.join(config.cluster.registration, request.sample)
    return _folders(
        "registration", [source], [f"registration/{request.sample}/"], f"reg{_mmdd(request.sample)}", numbered=False
    )


def _resolve_segmentation(config: SiteConfig, request: PlanRequest) -> ProductPlan:
    root = os.path.join(config.cluster.segmentation, request.sample)
    sources = [os.path.join(root, sub) for sub in request.segmentation_dirs]
    prefixes = [f"segmentation/{request.sample}/"] * len(sources)
    return _folders("segmentation", sources, prefixes, f"seg{_mmdd(request.sample)}")


def _resolve_tracings(config: SiteConfig, request: PlanRequest) -> ProductPlan:
    locations = {
        "Finished_Neurons": config.cluster.finished_neurons,
        "tracing_complete": config.cluster.tracing_complete,
    }
    sources = [os.path.join(root, request.sample) for root in locations.values()]
    prefixes = [f"tracings/{location}/{request.sample}/" for location in locations]
    return _folders("tracings", sources, prefixes, f"tra{_mmdd(request.sample)}")


def _resolve_carveouts(config: SiteConfig, request: PlanRequest) -> ProductPlan:
    sources = [os.path.join(root, request.sample) for root in config.cluster.carveouts]
    prefixes = [f"carveouts/{request.sample}/"] * len(sources)
    return _folders("carveouts", sources, prefixes, f"crv{_mmdd(request.sample)}")


PRODUCTS: tuple[Product, ...] = (
    Product(
        "images",
        "Images",
        "s3sync",
        _resolve_images,
        "ktx/ octree and the four top-level files, synced by the worker through S3Hook",
    ),
    Product("registration", "Registration", "lsf", _resolve_registration, "registration/Database/<date>/, one LSF job"),
    Product(
        "segmentation",
        "Segmentation",
        "lsf",
        _resolve_segmentation,
        "cluster/Reconstructions/<date>/<dir>/, one LSF job per folder",
    ),
    Product(
        "tracings", "Tracings", "lsf", _resolve_tracings, "Finished_Neurons and tracing_complete, one LSF job each"
    ),
    Product(
        "carveouts",
        "Carveouts",
        "lsf",
        _resolve_carveouts,
        "both funke roots into carveouts/<date>/, in order in one LSF job (mouselight-v2 wins)",
        overlay=True,
    ),
)
PRODUCT_NAMES: tuple[str, ...] = tuple(product.name for product in PRODUCTS)
PRODUCTS_BY_NAME: dict[str, Product] = {product.name: product for product in PRODUCTS}


#: The upload DAG's trigger values; any other key in a run's conf is refused.
PARAM_NAMES: tuple[str, ...] = ("sample", "products", "image_base", "segmentation_dirs", "dry_run", "skip_preflight")
#: Most segmentation folders one run may name (each becomes an LSF job).
MAX_SEGMENTATION_DIRS = 64


def parse_request(params: dict[str, object]) -> PlanRequest:
    """Check the trigger values again at run time: a conf from the API or CLI gets the same clear errors."""
    check_known_keys(params, PARAM_NAMES)
    sample = check_sample(params.get("sample"))
    products = check_products(params.get("products", ["images"]), PRODUCT_NAMES)
    image_base = check_optional_absolute_dir(params.get("image_base"), "image_base")
    dirs = check_folder_names(
        params.get("segmentation_dirs", ["stitching-output"]), "segmentation_dirs", MAX_SEGMENTATION_DIRS
    )
    dry_run = check_flag(params.get("dry_run", False), "dry_run")
    skip_preflight = check_flag(params.get("skip_preflight", False), "skip_preflight")
    return PlanRequest(sample, products, image_base, dirs, dry_run, skip_preflight)


@dataclass
class SamplePlan:
    """Per chosen product its transfers; products not chosen map to an empty list."""

    request: PlanRequest
    transfers: dict[str, list[Transfer]]
    warnings: list[str]

    def script_lines(self, config: SiteConfig) -> list[str]:
        """The plan as the old generated shell scripts would have read."""
        bucket = f"s3://{config.s3.bucket}"
        lines = []
        for product in PRODUCTS:
            for item in self.transfers[product.name]:
                target = f"{bucket}/{item.prefix}"
                if item.is_file:
                    lines.append(f"aws s3 cp {shlex.quote(item.source)} {shlex.quote(target)}")
                elif product.mechanism == "s3sync":
                    lines.append(f"aws s3 sync {shlex.quote(item.source + '/')} {shlex.quote(target)}")
                else:
                    command = f"aws s3 sync {item.source.rstrip('/')}/ {target.rstrip('/')}/"
                    lines.append(
                        f"bsub -J {item.job_name} -n {config.lsf.slots} -P {config.lsf.project} {shlex.quote(command)}"
                    )
        return lines


def plan_sample(config: SiteConfig, request: PlanRequest) -> SamplePlan:
    """Resolve every chosen product; raise PlanError naming each product that cannot be uploaded."""
    transfers: dict[str, list[Transfer]] = {name: [] for name in PRODUCT_NAMES}
    warnings: list[str] = []
    errors: list[str] = []
    for name in request.products:
        try:
            product_plan = PRODUCTS_BY_NAME[name].resolve(config, request)
        except PlanError as err:
            errors.append(str(err))
            continue
        transfers[name] = product_plan.transfers
        warnings.extend(product_plan.warnings)
    if errors:
        raise PlanError(f"Sample {request.sample}: " + "; ".join(errors))
    return SamplePlan(request, transfers, warnings)
