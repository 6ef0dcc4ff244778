"""Neuron metadata from NeuronBrowser and the tracings in S3.

The pipeline: injections -> ``mapping.build_mapping`` (sample date -> tag -> neuron id) -> ``bucket.scan_bucket``
(what S3 holds) -> ``documents.build_document`` per tracing location and date -> ``documents.render``
(deterministic bytes) -> ``documents.check_guard`` before anything is written -> ``bucket.apply`` writes what
changed. ``report.MetadataReport`` collects what happened. Only ``bucket`` talks to S3; the rest is plain Python.

Output contract (HortaCloud's ``HortaDiscoveryAgent``): ``{"title": "<date> MouseLight published neurons",
"neurons": {<idString>: {"originalName": <folder>, ...}}}``. For tracing_complete every entry carries
``somaLocation`` (a missing key rolls back the whole sample's import) and ``injectionLocation``, plus ``consensus`` /
``dendrite`` paths relative to ``images/<date>/`` when those SWC files exist.
"""
