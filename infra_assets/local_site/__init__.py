"""The `local` site: this machine, with every service as a process of the project's own.

`processes.Supervisor` starts, finds and stops them by pid; each service module (salt, registry,
...) says how to configure and start its own.
"""
