# hortacloud on the official Airflow image. The image's Airflow must equal the pin in pyproject.toml
# (tests/unit/test_packaging.py keeps the two in step). No Docker engine runs where this was written:
# the file is checked by tests, not built there (README, Docker).
FROM apache/airflow:3.3.2-python3.11

# The package and its pins: apache-airflow==3.3.2 is already installed, so pip keeps it and adds the rest.
COPY --chown=airflow:root pyproject.toml README.md /opt/hortacloud/
COPY --chown=airflow:root plugins/hortacloud /opt/hortacloud/plugins/hortacloud
RUN pip install --no-cache-dir "apache-airflow==3.3.2" /opt/hortacloud

# DAGs, site configuration and query files where Airflow and hortacloud look for them ($AIRFLOW_HOME=/opt/airflow).
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root include/ /opt/airflow/include/
# The package is imported from site-packages; the plugins folder keeps only the ignore file for safety.
COPY --chown=airflow:root plugins/.airflowignore /opt/airflow/plugins/.airflowignore
