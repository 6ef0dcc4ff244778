"""IBM Spectrum LSF for Airflow, laid out like a provider: the pure parts, then the hook, operator and trigger.

``parsers`` (what LSF says) and ``commands`` (what we send) are plain Python; ``watch`` follows one job's states to
its end; ``settings`` carries the tuning from the site configuration; ``hook`` runs the commands locally or over
SSH; ``operator`` and ``trigger`` are ``LsfJobOperator`` / ``LsfTransferOperator`` and ``LsfJobTrigger``;
``batch`` shares one bjobs call among the triggers of a triggerer. Nothing is imported here, so that the site
configuration can import ``settings`` without Airflow.
"""
