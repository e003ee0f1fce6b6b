"""Airflow glue for the `ml` package: hooks that wrap clients and read connections, operators that hold hooks and
call `ml`, callbacks that publish pipeline events, and the tuning-report view. A unique package name, as Airflow's
best practices ask for plugins."""
