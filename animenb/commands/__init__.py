"""Subcommands of the `animenb` CLI, discovered by animenb.cli (one module each)."""
