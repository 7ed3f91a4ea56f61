"""Typed errors that the CLI turns into one-line messages and documented exit codes."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of ``compress``; the README documents each one."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    INPUT = 3
    PLUGIN = 4
    VERIFY_FAILED = 5
    RESOURCE = 6
    VERIFY_ERROR = 7
    REPLAY_MISMATCH = 8
    INTERRUPTED = 130
    TERMINATED = 143


# The one table of exit codes: the README's "Exit codes" section must say the same (a test compares them).
EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success; every verify budget passed (or verify was off)",
    ExitCode.INTERNAL: "internal error (a bug; `COMPRESSOR_DEBUG=1` shows the traceback)",
    ExitCode.USAGE: "usage: bad flag, invalid recipe (unknown key, out-of-range value), unknown option, unusable "
                    "device, non-empty or unwritable `--out`, an `--out` that overlaps an input, another build "
                    "holding the same `--out`, `--strict` refusal",
    ExitCode.INPUT: "input: model or data missing, corrupt, unsupported or refused (pickle weights, unsupported "
                    "architecture, empty data, an artifact whose vocabulary does not match the original)",
    ExitCode.PLUGIN: "plugin: unknown method, format or evaluator, a plugin that failed to load or raised (named with its "
                     "distribution), an exporter that could not write or validate its artifact, a runtime that "
                     "is not installed",
    ExitCode.VERIFY_FAILED: "verification failed: a budget failed, or a speed budget was inconclusive and "
                            "`verify.latency.on_inconclusive` is `fail` (the default); the output and its report "
                            "are written",
    ExitCode.RESOURCE: "resources: out of disk space or memory (CPU or CUDA), found by preflight or wherever it "
                       "happens, plugins included (nothing is left behind), or a memory estimate that cannot fit",
    ExitCode.VERIFY_ERROR: "verify error: a measurement could not be taken (a runtime crashed, hung past its time "
                           "limit or could not load an artifact). The exports are kept, `report.json`/`report.md` "
                           "name the model, the step and the error; takes precedence over 5",
    ExitCode.REPLAY_MISMATCH: "replay mismatch: `--replay` found package versions that differ from the manifest's "
                              "(before any work), or a rebuilt file, input hash or (for a build the manifest marks "
                              "non-deterministic) a quality metric that differs; the rebuilt output is kept",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C, SIGINT); partial outputs are removed",
    ExitCode.TERMINATED: "terminated (SIGTERM, as CI systems send when they cancel a job); partial outputs are "
                         "removed",
}


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its sibling
    """Raised in the main thread when the process receives SIGTERM, so that clean-up runs as for Ctrl-C."""


class CompressorError(Exception):
    """Base class: ``str(error)`` says what was wrong, ``hint`` says what to do."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def render(self) -> str:
        """Return the message and the hint as the CLI prints them."""
        text = str(self)
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class ReplayMismatchError(CompressorError):
    """``--replay`` found other versions, inputs or outputs than the manifest records."""

    exit_code = ExitCode.REPLAY_MISMATCH


class UsageError(CompressorError):
    """A bad command line, recipe, option value or output directory."""

    exit_code = ExitCode.USAGE


class RecipeError(UsageError):
    """The recipe does not validate (unknown key, wrong type, out-of-range value)."""


class InputError(CompressorError):
    """The input model or data is missing, corrupt, unsupported or refused."""

    exit_code = ExitCode.INPUT


class ModelLoadError(InputError):
    """The model could not be found or loaded."""


class UnsupportedModelError(InputError):
    """The model's architecture is not one compressor can compress."""


class DataError(InputError):
    """Calibration or evaluation data could not be read or is too short."""


class PluginError(CompressorError):
    """A plugin failed to load, registered a clashing name, raised, or is unknown."""

    exit_code = ExitCode.PLUGIN


class UnknownPluginError(PluginError):
    """A recipe names a method, exporter or evaluator no installed plugin provides."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same method or exporter name."""


class ExportError(CompressorError):
    """An exporter could not write or validate its artifact."""

    exit_code = ExitCode.PLUGIN


class ValidationMismatchError(ExportError):
    """An exported artifact's outputs differ from PyTorch's beyond tolerance."""


class RuntimeUnavailableError(CompressorError):
    """The runtime an exporter needs for verification is not installed or failed."""

    exit_code = ExitCode.PLUGIN


class VerifyError(CompressorError):
    """A verify measurement could not be taken (runtime crashed, timed out or could not load an artifact).

    The exports are kept; the report says which measurement failed and why.
    """

    exit_code = ExitCode.VERIFY_ERROR


class RuntimeCrashedError(VerifyError):
    """A runtime's worker process died (a native crash, a kill, out of memory) during a measurement."""


class RuntimeTimeoutError(VerifyError):
    """A runtime's worker process did not answer within its time limit and was stopped."""


class ResourceError(CompressorError):
    """Not enough memory or disk space for the requested work."""

    exit_code = ExitCode.RESOURCE


class NoBenefitError(UsageError):
    """``--strict``: a requested compression gives no speed or size gain on a target."""


class VerificationFailed(CompressorError):
    """One or more verify budgets failed; the report says which and by how much."""

    exit_code = ExitCode.VERIFY_FAILED
