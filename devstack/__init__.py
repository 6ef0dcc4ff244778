"""The embedded local stack for tests, the demo and the benchmark: servers on 127.0.0.1 only.

Nothing here is shipped in the Airflow image; it stands in for Janelia's file systems, S3, LSF and NeuronBrowser.
"""
