"""Tooling for the Airflow memory patch series."""
