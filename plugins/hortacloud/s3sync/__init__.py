"""Incremental, concurrent, resumable and verified uploads of folders, file lists and files to S3.

``local`` (the tree walked in key order, file lists), ``remote`` (uploads by the AWS CRT S3 client, listings in
key order), ``control`` (the requests that move no file bytes, signed in Python), ``engine`` (plan, upload,
verify), ``progress``, ``shards`` (a ``ktx/`` octree cut by bytes), ``manifest`` (what a publish left in the
bucket, provable later) and ``cli`` (``python -m hortacloud.s3sync``).
"""
