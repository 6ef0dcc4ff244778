"""``make demo``: publish a generated sample through a real Airflow into a local S3 server, then show the bucket.

Everything runs on 127.0.0.1 and stops at the end: SeaweedFS as the bucket, the LSF emulator as the cluster
(its jobs really run the transfers, with this project's sync CLI standing in for ``aws s3 sync``), the local
NeuronBrowser sample-api (``devstack/neuronbrowser.py`` serving ``devstack/demo_neuronbrowser.json``: sample date
2023-05-10 in America/New_York, neurons AA9001-AA9003 tagged G-001..G-003 like the generated tracings), and
Airflow's api-server, scheduler, dag-processor and triggerer (the LSF tasks defer, so the triggerer follows the
jobs). The upload DAG is triggered over the REST API for all five products, exactly as a user would from the UI;
the demo prints the task states. Its tracings transfers emit the ``hortacloud_tracings`` asset, so the neuron
metadata DAG (unpaused beforehand) runs by itself: the demo waits for those asset-triggered runs and prints their
state and report (files written, unchanged), checks that the nightly cron started no run, then shows what landed,
including the head of ``images/2023-05-10/neurons.json``. Exit status 0 only when the upload run and every
asset-triggered metadata run succeeded.

Leaves its work folder (``.demo/``: sample tree, logs, task logs) for a look afterwards; ``--keep-running`` keeps
the stack up so the UI can be opened at the printed address.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from devstack.airflow_stack import AirflowApiError, AirflowClient, AirflowStack
from devstack.localsite import cluster_roots, emulated_lsf, image_bases, site_toml
from devstack.lsf import Emulator
from devstack.neuronbrowser import NeuronBrowserServer
from devstack.s3server import SeaweedS3
from devstack.sampletree import make_sample, write_random

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "2023-05-10"
BUCKET = "janelia-mouselight-imagery"
PRODUCTS = ["images", "registration", "segmentation", "tracings", "carveouts"]
UPLOAD_DAG = "hortacloud_upload_sample"
METADATA_DAG = "hortacloud_neuron_metadata"
# NeuronBrowser's answer for the generated sample: its date (epoch ms of 21:30 New York time, already 2023-05-11 in
# UTC) and the neuron ids of the G-001..G-003 folders make_site writes under tracing_complete.
NB_FIXTURE = ROOT / "devstack" / "demo_neuronbrowser.json"


def make_site(site: Path) -> dict[str, Any]:
    """A miniature Janelia: the image bases and the cluster roots, with one sample in each; returns the roots."""
    import random

    rng = random.Random(7)
    roots = {"images": image_bases(site), **cluster_roots(site)}
    make_sample(roots["images"][0] / SAMPLE, depth=3, block_size=lambda r: r.randint(8 * 1024, 64 * 1024))
    registration = roots["registration"] / SAMPLE
    for name in (f"{SAMPLE}.horta.yml", f"{SAMPLE}.nrrd", "HortaObj/Striatum_672.obj"):
        write_random(registration / name, rng.randint(2000, 20000), rng)
    for number in range(1, 6):
        write_random(roots["segmentation"] / SAMPLE / "stitching-output" / f"fragment-{number:03}.swc", 4000, rng)
    for number in (1, 2, 3):
        tag = f"G-{number:03}"
        for name in ("consensus.swc", "dendrite.swc", "base.swc"):
            write_random(roots["tracing_complete"] / SAMPLE / tag / name, rng.randint(3000, 9000), rng)
        (roots["tracing_complete"] / SAMPLE / tag / "soma.txt").write_text("Primary motor area, Layer 5\r\n")
        # Finished_Neurons, the internal version: tracings at the date level, a folder per neuron beside them.
        write_random(roots["finished_neurons"] / SAMPLE / f"{SAMPLE}_{tag}_ab.swc", 5000, rng)
        write_random(roots["finished_neurons"] / SAMPLE / tag / "somaLoc.png", 2000, rng)
    carveouts_v2 = roots["carveouts"][1]
    write_random(carveouts_v2 / SAMPLE / "fluorescence-near-consensus.n5" / "attributes.json", 300, rng)
    return roots


def write_config(path: Path, site: Path, lsf_output: Path) -> None:
    """Write the demo's hortacloud config: the generated site's roots, and LSF jobs that run this project's sync."""
    path.write_text(
        site_toml(
            {
                "images": {"bases": image_bases(site)},
                "sync": {"workers": 32, "progress_interval_seconds": 2},
                "cluster": cluster_roots(site),
                "lsf": emulated_lsf(lsf_output, 2, "--progress-interval", "5"),
            },
            comment=f"hortacloud demo site: every path points into {site}",
        )
    )


def show_bucket(client: Any) -> None:
    """What landed: a line per product prefix with object count and size, then a few keys of each."""
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            parts = item["Key"].split("/")
            group = "/".join(parts[:3] if parts[0] in ("tracings", "neurons") else parts[:2])
            groups[group].append((item["Key"], item["Size"]))
    print(f"\nWhat landed in s3://{BUCKET}:")
    for group in sorted(groups):
        objects = groups[group]
        total = sum(size for _, size in objects)
        print(f"  {group + '/':<45} {len(objects):>5} objects {total / 2**20:>8.2f} MiB")
        for key, size in sorted(objects)[:3]:
            print(f"      {key} ({size:,} bytes)")
        if len(objects) > 3:
            print(f"      ... and {len(objects) - 3} more")


def show_object_head(client: Any, key: str, lines: int = 14) -> None:
    """The first ``lines`` lines of one object, or that it is missing."""
    try:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    except client.exceptions.NoSuchKey:
        print(f"\ns3://{BUCKET}/{key} was not written")
        return
    text = body.splitlines()
    print(f"\ns3://{BUCKET}/{key} ({len(body):,} bytes), first {min(lines, len(text))} of {len(text)} lines:")
    for line in text[:lines]:
        print(f"  {line}")


def show_metadata_runs(client: AirflowClient, runs: list[dict[str, Any]]) -> bool:
    """Each asset-triggered metadata run: what started it, its state and report. True when all succeeded."""
    triggered = [run for run in runs if run["run_type"] == "asset_triggered"]
    print(f"6. {METADATA_DAG}: {len(triggered)} run(s) started by the hortacloud_tracings asset")
    for run in triggered:
        run_id = run["dag_run_id"]
        events = client.upstream_asset_events(METADATA_DAG, run_id)
        sources = ", ".join(f"{e['source_task_id']}[{e['source_map_index']}]" for e in events) or "none"
        print(f"   {run_id}: {run['state']} (events from {UPLOAD_DAG} {sources})")
        try:
            report = client.xcom(METADATA_DAG, run_id, "report")
        except AirflowApiError:
            print("     no report (see the task logs)")
            continue
        for key in report["written"]:
            print(f"     written: {key}")
        dates = ", ".join(f"{location} {count}" for location, count in report["dates_in_s3"].items())
        print(
            f"     files written {len(report['written'])}, unchanged {report['unchanged']}, refused "
            f"{len(report['refused'])}; soma location from a fallback: {report['soma_fallbacks'] or 'none'}"
        )
        print(f"     tracing dates in S3: {dates}; images not loadable yet: {report['not_loadable'] or 'none'}")
    others = [f"{run['dag_run_id']} ({run['run_type']})" for run in runs if run["run_type"] != "asset_triggered"]
    dag = client.dag(METADATA_DAG) or {}
    print(
        f"   Other runs: {', '.join(others) or 'none (the nightly cron did not fire)'}; "
        f"schedule {dag.get('timetable_description')!r}, next nightly run at {dag.get('next_dagrun_run_after')}"
    )
    return bool(triggered) and all(run["state"] == "success" for run in triggered)


def check_manifests(client: Any, env: dict[str, str]) -> bool:
    """Prove each published product of the sample against its manifest, as a user would later (no downloads)."""
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"manifests/{SAMPLE}/")
        for item in page.get("Contents", [])
    ]
    print(f"\n7. Manifest check (python -m hortacloud.s3sync verify --manifest ...): {len(keys)} manifest(s)")
    ok = bool(keys)
    for key in keys:
        argv = [sys.executable, "-m", "hortacloud.s3sync", "verify", "--manifest", f"s3://{BUCKET}/{key}"]
        done = subprocess.run(argv, env=os.environ | env, capture_output=True, text=True, timeout=300, check=False)
        answer = (done.stdout.strip() or done.stderr.strip()).splitlines()
        last = answer[-1].split(" INFO ", 1)[-1] if answer else ""  # without the log line's time and level
        print(f"   {key}: {'ok' if done.returncode == 0 else 'FAILED'}: {last}")
        ok = ok and done.returncode == 0
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the whole demo; 0 when the upload run and every asset-triggered metadata run succeeded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    parser.add_argument("--keep-running", action="store_true", help="leave the stack up until Ctrl-C")
    args = parser.parse_args(argv)
    began = time.monotonic()
    work: Path = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    print(f"1. Generating a sample tree for {SAMPLE} under {work / 'site'}", flush=True)
    make_site(work / "site")
    config = work / "hortacloud-demo.toml"
    write_config(config, work / "site", work / "lsf-output")
    (work / "lsf-output").mkdir()

    s3 = SeaweedS3(work / "seaweedfs", buckets=(BUCKET,))
    nb = NeuronBrowserServer(work / "neuronbrowser", NB_FIXTURE)
    stack: AirflowStack | None = None
    lsf = Emulator(work / "lsf-state")
    try:
        endpoint = s3.start()
        print(f"2. SeaweedFS S3 server (pid {s3.pid}) at {endpoint.url}, bucket {BUCKET}", flush=True)
        nb.start()
        print(f"   NeuronBrowser sample-api (pid {nb.pid}) at {nb.url}, answering from {NB_FIXTURE.name}", flush=True)
        env = lsf.env(base={})
        env |= {
            "AIRFLOW_CONN_HORTACLOUD_S3": endpoint.connection_json(),
            "AIRFLOW_CONN_HORTACLOUD_NEURONBROWSER": nb.connection_json(),
            "HORTACLOUD_CONFIG": str(config),
            # The LSF jobs inherit the submitter's environment (bsub -env all), so their sync reaches the same
            # server with the same keys; nothing secret appears on a command line.
            **endpoint.client_env(),
            # Follow the LSF jobs in the triggerer, as production does, so no worker slot waits on the cluster.
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
        }
        stack = AirflowStack(
            work / "airflow", ROOT / "dags", env, plugins_folder=ROOT / "plugins", api_conn_id="hortacloud_airflow_api"
        )
        started = time.monotonic()
        client = stack.start()
        print(
            f"3. Airflow up in {time.monotonic() - started:.0f} s at {stack.url} (user admin, password in "
            f"{stack.passwords_file})",
            flush=True,
        )
        client.wait_for_dag(UPLOAD_DAG, timeout=120)
        client.wait_for_dag(METADATA_DAG, timeout=120)
        client.ensure_pool("hortacloud_lsf", 4, "LSF submissions of hortacloud")
        # Unpaused first, so the tracings asset events of the upload start metadata runs.
        client.unpause(METADATA_DAG)
        client.unpause(UPLOAD_DAG)
        conf = {"sample": SAMPLE, "products": PRODUCTS}
        run_id = client.trigger(UPLOAD_DAG, conf)
        print(f"4. Triggered {UPLOAD_DAG} with {json.dumps(conf)}: run {run_id}", flush=True)
        state = client.wait_for_run(UPLOAD_DAG, run_id, timeout=600)
        print(f"5. Run finished: {state}")
        for ti in client.task_instances(UPLOAD_DAG, run_id):
            index = f"[{ti.get('rendered_map_index') or ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
            tries = f" (try {ti['try_number']})" if ti.get("try_number", 1) > 1 else ""
            print(f"     {ti['task_id'] + index:<45} {ti['state']}{tries}")
        jobs = lsf.jobs()
        print(f"   LSF jobs: {', '.join(f'{job.id} {job.name}' for job in jobs) or 'none'}", flush=True)
        metadata_ok = show_metadata_runs(client, client.wait_until_idle(METADATA_DAG, timeout=300))
        s3_client = endpoint.boto3_client()
        show_bucket(s3_client)
        show_object_head(s3_client, f"images/{SAMPLE}/neurons.json")
        manifests_ok = check_manifests(s3_client, endpoint.client_env())
        print(f"\nLogs: {stack.logs_folder}; sample tree: {work / 'site'}")
        print(f"Demo done in {time.monotonic() - began:.0f} s", flush=True)
        if args.keep_running:
            print(f"Airflow UI: {stack.url} — Ctrl-C to stop", flush=True)
            while True:
                time.sleep(3600)
        return 0 if state == "success" and metadata_ok and manifests_ok else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if stack is not None:
            stack.stop()
        nb.stop()
        s3.stop()
        lsf.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
