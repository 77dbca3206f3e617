"""Dagster Definitions, jobs, schedules and the command-line entry point of the pipeline."""
