"""The DAGs' tasks: each module holds the @task functions of one DAG, thin glue over the package."""
