"""Runtimes in worker processes: a runtime's crash or hang becomes a verify error, never a dead build."""

from compressor.runtime_process.client import IsolatedRuntime, describe_exit, open_isolated

__all__ = ["IsolatedRuntime", "describe_exit", "open_isolated"]
